package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// busyThenWaiting runs a change whose first attempt WeChat answers busy
// (-1), and returns once the change waits for its second, far off (a
// long backoff); the worker is stopped then.
func busyThenWaiting(t *testing.T) (*testBundle, *tasks.Record) {
	t.Helper()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{retryBase: 24 * time.Hour, noWorker: true})
	stop := b.startWorker(t)
	b.sandbox.SetFaults(appA, wechattest.Faults{Script: []int{-1}})
	rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"a.example.com"}}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r, err := b.client.Get(ctx, rec.TaskID)
		return err == nil && r.Status == tasks.StatusRetrying && r.Attempts == 1
	}, 20*time.Second, 20*time.Millisecond)
	stop()
	rec, err = b.client.Get(ctx, rec.TaskID)
	require.NoError(t, err)
	require.NotNil(t, rec.ErrCode)
	require.Equal(t, -1, *rec.ErrCode)
	return b, rec
}

const busyThenCanceled = "canceled before attempt 2; attempt 1 called WeChat and got errcode -1 (system busy), which changed nothing"

// TestCanceledRunAfterABusyAttemptSaysWhatHappened: a change whose cancel
// request reached no run (asynq had just handed the task to a worker, so
// the client could not take it out of the queue, and the signal came
// before the run could hear it) is canceled by the worker before its next
// attempt; its record says that attempt 1 was answered busy and changed
// nothing, not "canceled before it ran" beside attempts: 1.
func TestCanceledRunAfterABusyAttemptSaysWhatHappened(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, rec := busyThenWaiting(t)
	// The cancel request as Client.Cancel records it for a running change.
	_, err := b.store.Update(ctx, rec.TaskID, func(r *tasks.Record) error {
		r.CancelRequested = true
		return nil
	})
	require.NoError(t, err)
	// Its next attempt is due now.
	inspector := asynq.NewInspectorFromRedisClient(b.redis.Client)
	t.Cleanup(func() { _ = inspector.Close() })
	require.NoError(t, inspector.RunTask(rec.Queue, rec.TaskID))
	b.startWorker(t)

	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	final, err := b.client.Wait(wctx, rec.TaskID)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusCanceled, final.Status)
	assert.Equal(t, 1, final.Attempts)
	assert.Equal(t, busyThenCanceled, final.Error)
	assert.Equal(t, 1, callsOf(b.sandbox, appA, "add"), "no second call")
}

// TestCancelAfterABusyAttemptSaysWhatHappened is issue 14's case: a
// change waiting for its second attempt, canceled with the tasks client.
// The client records that cancel itself (tasks.Client.cancelIfWaiting),
// in tasks/client.go.
func TestCancelAfterABusyAttemptSaysWhatHappened(t *testing.T) {
	t.Parallel()
	b, rec := busyThenWaiting(t)
	got, err := b.client.Cancel(context.Background(), rec.TaskID)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusCanceled, got.Status)
	assert.Equal(t, 1, got.Attempts)
	assert.Equal(t, busyThenCanceled, got.Error)
}
