package tasks_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

// commands counts the commands a client sends (a script call is one),
// handshakes of new connections aside.
type commands struct{ n atomic.Int64 }

func (c *commands) hook() redistest.Seen {
	return func(cmd redis.Cmder) {
		if !redistest.Handshake(cmd) {
			c.n.Add(1)
		}
	}
}

// counted is a store over its own client of the test's Redis, whose
// commands are counted.
func counted(t *testing.T, rb redistest.Bundle) (*tasks.Store, *commands) {
	t.Helper()
	var c redis.UniversalClient
	switch o := rb.Client.(type) {
	case *redis.Client:
		c = redis.NewClient(o.Options())
	default:
		t.Fatalf("unexpected client %T", rb.Client)
	}
	t.Cleanup(func() { _ = c.Close() })
	k := &commands{}
	c.AddHook(k.hook())
	return tasks.NewStore(c, rb.Prefix, time.Hour), k
}

// queuedFromTask rebuilds a change's queued record from its asynq task,
// as a worker does.
func queuedFromTask(t *testing.T, b *clientBundle, id string) *tasks.Record {
	t.Helper()
	info, err := b.inspect.GetTaskInfo(b.redis.Queue, id)
	require.NoError(t, err)
	change, at, err := tasks.ParseTask(info.Payload)
	require.NoError(t, err)
	require.False(t, at.IsZero(), "the task says when its record was written")
	require.NoError(t, change.Validate())
	return tasks.QueuedRecord(id, change, b.redis.Queue, at)
}

// warmScripts runs the store's record script once, so that Redis has it
// (a first run loads it: two commands, once per server).
func warmScripts(t *testing.T, b *clientBundle, store *tasks.Store) {
	t.Helper()
	rec, err := b.client.Enqueue(context.Background(), addChange("warm.example.com"), tasks.EnqueueOptions{})
	require.NoError(t, err)
	_, err = store.Update(context.Background(), rec.TaskID, running)
	require.NoError(t, err)
}

func running(r *tasks.Record) error {
	r.Status = tasks.StatusRunning
	r.Attempts++
	return nil
}

func succeeded(r *tasks.Record) error {
	r.Status = tasks.StatusSucceeded
	return nil
}

// TestStartAndFinishAreOneCommandEach: a worker that starts a change from
// its task and finishes it from the record it wrote makes one Redis
// command for each, and the record is what a read-then-write would give.
func TestStartAndFinishAreOneCommandEach(t *testing.T) {
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			b := setupClient(t, be.Open)
			ctx := context.Background()
			rec, err := b.client.Enqueue(ctx, addChange("a.example.com"), tasks.EnqueueOptions{})
			require.NoError(t, err)
			queued := queuedFromTask(t, b, rec.TaskID)

			store, n := counted(t, b.redis)
			warmScripts(t, b, store)
			n.n.Store(0)
			started, err := store.Start(ctx, rec.TaskID, queued, running)
			require.NoError(t, err)
			assert.Equal(t, int64(1), n.n.Load(), "start: one script call, no read first")
			got, err := b.client.Get(ctx, rec.TaskID)
			require.NoError(t, err)
			assert.Equal(t, tasks.StatusRunning, got.Status)
			assert.Equal(t, 1, got.Attempts)
			assert.True(t, got.CreatedAt.Equal(rec.CreatedAt), "created_at kept: %s vs %s", got.CreatedAt, rec.CreatedAt)
			require.Len(t, got.Events, 2, "queued, then running")

			n.n.Store(0)
			done, err := store.FinishFrom(ctx, started, nil, succeeded)
			require.NoError(t, err)
			assert.Equal(t, int64(1), n.n.Load(), "finish: one script call")
			assert.Equal(t, tasks.StatusSucceeded, done.Status)
			got, err = b.client.Get(ctx, rec.TaskID)
			require.NoError(t, err)
			assert.Equal(t, tasks.StatusSucceeded, got.Status)
			assert.NotNil(t, got.FinishedAt)

			// From a record that is final now: nothing written.
			_, err = store.FinishFrom(ctx, started, nil, running)
			assert.ErrorIs(t, err, tasks.ErrFinal)
			_, err = store.Start(ctx, rec.TaskID, queued, running)
			assert.ErrorIs(t, err, tasks.ErrFinal)
		})
	}
}

// TestFinishFromAStaleRecordAppliesToTheCurrentOne: a cancel requested
// after the worker read the record is not lost; the update applies to the
// record as it stands, in one more command.
func TestFinishFromAStaleRecordAppliesToTheCurrentOne(t *testing.T) {
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			b := setupClient(t, be.Open)
			ctx := context.Background()
			rec, err := b.client.Enqueue(ctx, addChange("a.example.com"), tasks.EnqueueOptions{})
			require.NoError(t, err)
			queued := queuedFromTask(t, b, rec.TaskID)
			store, n := counted(t, b.redis)
			warmScripts(t, b, store)
			started, err := store.Start(ctx, rec.TaskID, queued, running)
			require.NoError(t, err)

			_, err = b.client.Store().Update(ctx, rec.TaskID, func(r *tasks.Record) error {
				r.CancelRequested = true
				return nil
			})
			require.NoError(t, err)

			n.n.Store(0)
			var sawCancel bool
			got, err := store.FinishFrom(ctx, started, nil, func(r *tasks.Record) error {
				sawCancel = r.CancelRequested
				r.Status = tasks.StatusCanceled
				return nil
			})
			require.NoError(t, err)
			assert.True(t, sawCancel, "the update saw the cancel request written meanwhile")
			assert.True(t, got.CancelRequested)
			assert.Equal(t, int64(2), n.n.Load(), "a refused write hands back the record: no separate read")

			// A start from a queued record that moved on (a cancel
			// request) applies to it too.
			rec2, err := b.client.Enqueue(ctx, addChange("b.example.com"), tasks.EnqueueOptions{})
			require.NoError(t, err)
			queued2 := queuedFromTask(t, b, rec2.TaskID)
			_, err = b.client.Store().Update(ctx, rec2.TaskID, func(r *tasks.Record) error {
				r.CancelRequested = true
				return nil
			})
			require.NoError(t, err)
			got, err = store.Start(ctx, rec2.TaskID, queued2, func(r *tasks.Record) error {
				if r.CancelRequested {
					r.Status = tasks.StatusCanceled
					return nil
				}
				return running(r)
			})
			require.NoError(t, err)
			assert.Equal(t, tasks.StatusCanceled, got.Status)
		})
	}
}

// TestStartWritesAMissingRecordFromTheTask: a worker that takes a task
// before its record lands writes the record from the task; without what
// the task says, a missing record is reported.
func TestStartWritesAMissingRecordFromTheTask(t *testing.T) {
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			b := setupClient(t, be.Open)
			ctx := context.Background()
			rec, err := b.client.Enqueue(ctx, addChange("a.example.com"), tasks.EnqueueOptions{})
			require.NoError(t, err)
			queued := queuedFromTask(t, b, rec.TaskID)
			require.NoError(t, b.client.Store().Delete(ctx, rec.TaskID))

			_, err = b.client.Store().Start(ctx, rec.TaskID, nil, running)
			require.ErrorIs(t, err, tasks.ErrTaskNotFound)

			got, err := b.client.Store().Start(ctx, rec.TaskID, queued, running)
			require.NoError(t, err)
			assert.Equal(t, tasks.StatusRunning, got.Status)
			read, err := b.client.Get(ctx, rec.TaskID)
			require.NoError(t, err)
			assert.Equal(t, rec.Domains, read.Domains)
			assert.Equal(t, 1, read.Attempts)
		})
	}
}

// TestStartRefusesAStoppedRolloutsChange: a rollout change does not start
// while its rollout is canceled, nor once a later attempt owns its
// platform; the record is left as it was.
func TestStartRefusesAStoppedRolloutsChange(t *testing.T) {
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			b := setupClient(t, be.Open)
			ctx := context.Background()
			const rid = "0123456789abcdef"
			rkey := tasks.RolloutKey(b.redis.Prefix, rid)
			require.NoError(t, b.redis.Client.HSet(ctx, rkey, "status", "running", "attempt", 0, "total", 1).Err())
			problems, err := b.client.EnqueueRollout(ctx, rid, 0, []tasks.JumpDomainChange{addChange("a.example.com")}, b.redis.Queue)
			require.NoError(t, err)
			require.NoError(t, problems[0])
			id := tasks.RolloutTaskID(rid, 0, app)
			queued := queuedFromTask(t, b, id)

			require.NoError(t, b.redis.Client.HSet(ctx, rkey, "status", "canceled").Err())
			_, err = b.client.Store().Start(ctx, id, queued, running)
			require.ErrorIs(t, err, tasks.ErrRolloutStopping)

			require.NoError(t, b.redis.Client.HSet(ctx, rkey, "status", "running").Err())
			require.NoError(t, b.redis.Client.HSet(ctx, tasks.RolloutOwnerKey(b.redis.Prefix, rid), app, 1).Err())
			_, err = b.client.Store().Start(ctx, id, queued, running)
			require.ErrorIs(t, err, tasks.ErrRolloutStopping, "attempt 1 owns the platform now")

			got, err := b.client.Get(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, tasks.StatusQueued, got.Status, "nothing written")
			assert.Equal(t, 0, got.Attempts)

			require.NoError(t, b.redis.Client.HSet(ctx, tasks.RolloutOwnerKey(b.redis.Prefix, rid), app, 0).Err())
			got, err = b.client.Store().Start(ctx, id, queued, running)
			require.NoError(t, err)
			assert.Equal(t, tasks.StatusRunning, got.Status)
			state, err := b.redis.Client.HGet(ctx, tasks.RolloutStateKey(b.redis.Prefix, rid), app).Result()
			require.NoError(t, err)
			assert.Equal(t, "running", state, "the rollout's platform moved in the same step")
		})
	}
}

// TestFinishGivesThePacingFeedbackInItsWrite: the limiter hears of an
// answered call in the record's final write (its pace recovers, the call
// is counted), and not at all when the record was not written.
func TestFinishGivesThePacingFeedbackInItsWrite(t *testing.T) {
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			b := setupClient(t, be.Open)
			ctx := context.Background()
			lim := limit.New(b.redis.Client, b.redis.Prefix, limit.Rate{}, limit.Pacing{})
			factorKey := b.redis.Prefix + "limit_factor:" + app
			require.NoError(t, b.redis.Client.Set(ctx, factorKey, "0.5", time.Minute).Err())
			factor := func() float64 {
				f, err := lim.Factors(ctx, []string{app})
				require.NoError(t, err)
				return f[app]
			}

			rec, err := b.client.Enqueue(ctx, addChange("a.example.com"), tasks.EnqueueOptions{})
			require.NoError(t, err)
			started, err := b.client.Store().Start(ctx, rec.TaskID, queuedFromTask(t, b, rec.TaskID), running)
			require.NoError(t, err)
			pacing := lim.Answered(app, rec.TaskID)
			_, err = b.client.Store().FinishFrom(ctx, started, &pacing, succeeded)
			require.NoError(t, err)
			after := factor()
			assert.Greater(t, after, 0.5, "the answer let the platform's pace recover")
			calls, err := b.redis.Client.HGet(ctx, b.redis.Prefix+"limit_busy:"+app, "calls").Int()
			require.NoError(t, err)
			assert.Equal(t, 1, calls, "the call is counted in the busy window")

			// A record final already: nothing written, no feedback.
			_, err = b.client.Store().FinishFrom(ctx, started, &pacing, succeeded)
			require.ErrorIs(t, err, tasks.ErrFinal)
			assert.Equal(t, after, factor())
		})
	}
}

// TestStartRefusesACanceledRolloutsChangeWhateverItsID: a change that
// names a rollout under an id of another form (a library caller's) is
// refused too while the rollout is canceled.
func TestStartRefusesACanceledRolloutsChangeWhateverItsID(t *testing.T) {
	b := setupClient(t, redistest.Real)
	ctx := context.Background()
	const rid = "fedcba9876543210"
	rkey := tasks.RolloutKey(b.redis.Prefix, rid)
	require.NoError(t, b.redis.Client.HSet(ctx, rkey, "status", "canceled", "attempt", 0, "total", 1).Err())
	change := addChange("a.example.com")
	change.RolloutID = rid
	rec, err := b.client.Enqueue(ctx, change, tasks.EnqueueOptions{})
	require.NoError(t, err)
	_, err = b.client.Store().Start(ctx, rec.TaskID, queuedFromTask(t, b, rec.TaskID), running)
	require.ErrorIs(t, err, tasks.ErrRolloutStopping)
}
