package rollout_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

var platforms = []string{"wx00000000000000a1", "wx00000000000000a2", "wx00000000000000a3"}

func setup(t *testing.T) (redistest.Bundle, *rollout.Service) {
	t.Helper()
	rb := redistest.Mini(t)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	svc := rollout.New(rb.Client, client, rollout.Config{
		Prefix: rb.Prefix, Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk", Platforms: platforms, TTL: time.Hour,
	})
	t.Cleanup(func() { _ = svc.Close() })
	return rb, svc
}

// TestCanceledBeforeFanoutExpiresWhole: a rollout canceled before its
// fan-out ran expires with every key, its fan-out cursor included.
func TestCanceledBeforeFanoutExpiresWhole(t *testing.T) {
	t.Parallel()
	rb, svc := setup(t)
	ctx := context.Background()
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	r, err = svc.Cancel(ctx, r.ID)
	require.NoError(t, err)
	require.NotNil(t, r.FinishedAt)
	assert.Equal(t, rollout.Counts{Canceled: 3}, r.Counts)
	rb.Mini.FastForward(time.Hour + time.Second)
	keys, err := rb.Client.Keys(ctx, rb.Prefix+"rollout:*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "every key of the rollout expired")
}

// TestRetryResumesOneCutShort: a retry whose fan-out task was never queued
// (Redis failed between the two steps) is resumed by retrying again.
func TestRetryResumesOneCutShort(t *testing.T) {
	t.Parallel()
	rb, svc := setup(t)
	ctx := context.Background()
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	_, err = svc.Cancel(ctx, r.ID)
	require.NoError(t, err)

	// The first step of a retry, then nothing: its fan-out is not queued.
	n, attempt, err := tasks.RetryRollout(ctx, rb.Client, rb.Prefix, r.ID)
	require.NoError(t, err)
	require.Equal(t, tasks.RetryOutcome(3), n)
	require.Equal(t, 1, attempt)
	inspector := asynq.NewInspectorFromRedisClient(rb.Client)
	t.Cleanup(func() { _ = inspector.Close() })
	_, err = inspector.GetTaskInfo(rb.Queue, "fanout_"+r.ID+"_1")
	require.Error(t, err)

	got, err := svc.Retry(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Attempt, "resumed, not a third attempt")
	assert.Equal(t, rollout.StatusFanningOut, got.Status)
	assert.Equal(t, rollout.Counts{Queued: 3}, got.Counts)
	_, err = inspector.GetTaskInfo(rb.Queue, "fanout_"+r.ID+"_1")
	assert.NoError(t, err, "the fan-out of attempt 1 is queued now")
	list, err := rb.Client.LRange(ctx, tasks.RolloutListKey(rb.Prefix, r.ID, 1), 0, -1).Result()
	require.NoError(t, err)
	assert.Equal(t, platforms, list, "each platform once")
}

// TestAnEarlierAttemptNoLongerMovesItsPlatform: once a retry re-queued a
// platform, only the new attempt's change speaks for it; a platform the
// retry left alone still belongs to the earlier attempt's change.
func TestAnEarlierAttemptNoLongerMovesItsPlatform(t *testing.T) {
	t.Parallel()
	rb, svc := setup(t)
	ctx := context.Background()
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	payload := []byte(`{"rollout_id":"` + r.ID + `","attempt":0}`)
	require.NoError(t, svc.ProcessTask(ctx, asynq.NewTask(rollout.TypeFanout, payload)))
	store := tasks.NewStore(rb.Client, rb.Prefix, time.Hour)
	_, err = store.Update(ctx, rollout.TaskID(r.ID, 0, platforms[0]), func(rec *tasks.Record) error {
		rec.Status = tasks.StatusFailed
		return nil
	})
	require.NoError(t, err)
	n, attempt, err := tasks.RetryRollout(ctx, rb.Client, rb.Prefix, r.ID)
	require.NoError(t, err)
	require.Equal(t, tasks.RetryOutcome(1), n)
	require.Equal(t, 1, attempt)

	// Attempt 0 still owns platforms[1]: its change finishing counts.
	_, err = store.Update(ctx, rollout.TaskID(r.ID, 0, platforms[1]), func(rec *tasks.Record) error {
		rec.Status = tasks.StatusSucceeded
		return nil
	})
	require.NoError(t, err)
	// Attempt 0 no longer speaks for platforms[0].
	require.NoError(t, tasks.MoveRolloutPlatform(ctx, rb.Client, rb.Prefix, r.ID, 0, platforms[0], tasks.StatusCanceled))

	state, err := rb.Client.HGetAll(ctx, tasks.RolloutStateKey(rb.Prefix, r.ID)).Result()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{platforms[0]: "queued", platforms[1]: "succeeded", platforms[2]: "queued"}, state)
	got, err := svc.Get(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, rollout.Counts{Queued: 2, Succeeded: 1}, got.Counts)
}

// TestRetryByAnOlderVersionStillFinishes: a retry made by a version that
// kept no owners (during an upgrade) leaves platforms without one; its
// attempt's changes still move them, and the rollout finishes.
func TestRetryByAnOlderVersionStillFinishes(t *testing.T) {
	t.Parallel()
	rb, svc := setup(t)
	ctx := context.Background()
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	_, err = svc.Cancel(ctx, r.ID)
	require.NoError(t, err)
	_, attempt, err := tasks.RetryRollout(ctx, rb.Client, rb.Prefix, r.ID)
	require.NoError(t, err)
	require.Equal(t, 1, attempt)
	// What an older version's retry leaves: no owners.
	require.NoError(t, rb.Client.Del(ctx, tasks.RolloutOwnerKey(rb.Prefix, r.ID)).Err())
	payload := []byte(`{"rollout_id":"` + r.ID + `","attempt":1}`)
	require.NoError(t, svc.ProcessTask(ctx, asynq.NewTask(rollout.TypeFanout, payload)))
	store := tasks.NewStore(rb.Client, rb.Prefix, time.Hour)
	for _, p := range platforms {
		_, err = store.Update(ctx, rollout.TaskID(r.ID, 1, p), func(rec *tasks.Record) error {
			rec.Status = tasks.StatusSucceeded
			return nil
		})
		require.NoError(t, err)
	}
	got, err := svc.Get(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, rollout.Counts{Succeeded: 3}, got.Counts)
	assert.Equal(t, rollout.StatusDone, got.Status)
}
