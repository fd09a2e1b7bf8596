package tasks_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

const app = "wx1234567890abcdef"

type clientBundle struct {
	redis   redistest.Bundle
	client  *tasks.Client
	inspect *asynq.Inspector
}

func setupClient(t *testing.T, open func(testing.TB) redistest.Bundle) *clientBundle {
	t.Helper()
	rb := open(t)
	c := tasks.NewClient(rb.Client, tasks.ClientConfig{
		Prefix: rb.Prefix, Queue: rb.Queue, ResultTTL: time.Hour, PollInterval: 20 * time.Millisecond,
		Rules: tasks.Rules{KnownPlatform: func(a string) bool { return a == app }},
	})
	t.Cleanup(func() { _ = c.Close() })
	return &clientBundle{redis: rb, client: c, inspect: asynq.NewInspectorFromRedisClient(rb.Client)}
}

func addChange(domains ...string) tasks.JumpDomainChange {
	return tasks.JumpDomainChange{Platform: app, Action: tasks.ActionAdd, Domains: domains}
}

func TestClient(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()

			t.Run("enqueue records the change and queues a task with the same id", func(t *testing.T) {
				b := setupClient(t, be.Open)
				rec, err := b.client.Enqueue(ctx, addChange("B.com", "b.com"), tasks.EnqueueOptions{})
				require.NoError(t, err)
				assert.Equal(t, tasks.StatusQueued, rec.Status)
				assert.Equal(t, []string{"b.com"}, rec.Domains)
				assert.False(t, rec.Replayed)

				got, err := b.client.Get(ctx, rec.TaskID)
				require.NoError(t, err)
				assert.Equal(t, rec.TaskID, got.TaskID)
				assert.Equal(t, tasks.StatusQueued, got.Status)

				info, err := b.inspect.GetTaskInfo(b.redis.Queue, rec.TaskID)
				require.NoError(t, err)
				assert.Equal(t, tasks.TypeJumpDomain, info.Type)
				assert.Equal(t, asynq.TaskStatePending, info.State)

				ttl, err := b.redis.Client.TTL(ctx, b.redis.Prefix+"record:"+rec.TaskID).Result()
				require.NoError(t, err)
				assert.InDelta(t, time.Hour.Seconds(), ttl.Seconds(), 5)
			})

			t.Run("an invalid change writes nothing to Redis", func(t *testing.T) {
				b := setupClient(t, be.Open)
				_, err := b.client.Enqueue(ctx, addChange("https://a.com"), tasks.EnqueueOptions{IdempotencyKey: "k"})
				var ve *tasks.ValidationError
				require.ErrorAs(t, err, &ve)
				for _, pattern := range []string{b.redis.Prefix + "*", "asynq:{" + b.redis.Queue + "}*"} {
					keys, err := b.redis.Client.Keys(ctx, pattern).Result()
					require.NoError(t, err)
					assert.Empty(t, keys, pattern)
				}
			})

			t.Run("same idempotency key and change return the first task", func(t *testing.T) {
				b := setupClient(t, be.Open)
				first, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{IdempotencyKey: "deploy-42"})
				require.NoError(t, err)
				// Normalisation makes these the same change.
				again, err := b.client.Enqueue(ctx, addChange("A.COM."), tasks.EnqueueOptions{IdempotencyKey: "deploy-42"})
				require.NoError(t, err)
				assert.Equal(t, first.TaskID, again.TaskID)
				assert.True(t, again.Replayed)
				n, err := b.inspect.GetQueueInfo(b.redis.Queue)
				require.NoError(t, err)
				assert.Equal(t, 1, n.Pending)

				_, err = b.client.Enqueue(ctx, addChange("other.com"), tasks.EnqueueOptions{IdempotencyKey: "deploy-42"})
				require.ErrorIs(t, err, tasks.ErrIdempotencyConflict)
				assert.Contains(t, err.Error(), first.TaskID)
			})

			t.Run("a replay repairs a submission cut short before enqueueing", func(t *testing.T) {
				b := setupClient(t, be.Open)
				first, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{IdempotencyKey: "k1"})
				require.NoError(t, err)
				// Simulate a crash between writing the record and enqueueing.
				require.NoError(t, b.inspect.DeleteTask(b.redis.Queue, first.TaskID))
				again, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{IdempotencyKey: "k1"})
				require.NoError(t, err)
				assert.Equal(t, first.TaskID, again.TaskID)
				_, err = b.inspect.GetTaskInfo(b.redis.Queue, first.TaskID)
				require.NoError(t, err, "the task is queued again")
			})

			t.Run("bad idempotency keys are refused", func(t *testing.T) {
				b := setupClient(t, be.Open)
				_, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{IdempotencyKey: "bad\nkey"})
				require.ErrorIs(t, err, tasks.ErrInvalidIdempotencyKey)
			})

			t.Run("unknown task ids", func(t *testing.T) {
				b := setupClient(t, be.Open)
				for _, id := range []string{"0123456789abcdef0123456789abcdef", "../etc", ""} {
					_, err := b.client.Get(ctx, id)
					require.ErrorIs(t, err, tasks.ErrTaskNotFound, id)
				}
			})

			t.Run("cancel a queued change", func(t *testing.T) {
				b := setupClient(t, be.Open)
				rec, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{})
				require.NoError(t, err)
				got, err := b.client.Cancel(ctx, rec.TaskID)
				require.NoError(t, err)
				assert.Equal(t, tasks.StatusCanceled, got.Status)
				require.NotNil(t, got.FinishedAt)
				_, err = b.inspect.GetTaskInfo(b.redis.Queue, rec.TaskID)
				require.ErrorIs(t, err, asynq.ErrTaskNotFound, "nothing left to run")

				_, err = b.client.Cancel(ctx, rec.TaskID)
				require.ErrorIs(t, err, tasks.ErrFinal)
			})

			t.Run("wait gives up with the last record when ctx ends", func(t *testing.T) {
				b := setupClient(t, be.Open)
				rec, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{})
				require.NoError(t, err)
				wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				defer cancel()
				got, err := b.client.Wait(wctx, rec.TaskID)
				require.ErrorIs(t, err, context.DeadlineExceeded)
				require.NotNil(t, got)
				assert.Equal(t, tasks.StatusQueued, got.Status)
			})
		})
	}
}

func TestConcurrentUpdatesLoseNothing(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			b := setupClient(t, be.Open)
			ctx := context.Background()
			rec, err := b.client.Enqueue(ctx, addChange("a.com"), tasks.EnqueueOptions{})
			require.NoError(t, err)
			var wg sync.WaitGroup
			for i := 0; i < 20; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := b.client.Store().Update(ctx, rec.TaskID, func(r *tasks.Record) error {
						r.Attempts++
						return nil
					})
					assert.NoError(t, err)
				}()
			}
			wg.Wait()
			got, err := b.client.Get(ctx, rec.TaskID)
			require.NoError(t, err)
			assert.Equal(t, 20, got.Attempts, "every update applied once")
		})
	}
}
