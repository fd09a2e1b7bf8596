package pause

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
)

// TestWatchedPausesAreReadFromMemory: a worker that follows the fleet's
// pause changes checks a platform without a Redis command, and still sees
// at once a pause set, ended or resumed by another process.
func TestWatchedPausesAreReadFromMemory(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000aa"
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			rb := be.Open(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wc := redis.NewClient(rb.Client.(*redis.Client).Options())
			t.Cleanup(func() { _ = wc.Close() })
			var n atomic.Int64
			wc.AddHook(redistest.Seen(func(redis.Cmder) { n.Add(1) }))
			worker := NewStore(wc, rb.Prefix)
			other := NewStore(rb.Client, rb.Prefix) // another process
			done := make(chan struct{})
			go func() { defer close(done); worker.Watch(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			require.Eventually(t, worker.cache.Live, 5*time.Second, 5*time.Millisecond)

			_, paused, err := worker.Get(ctx, app)
			require.NoError(t, err)
			require.False(t, paused)
			before := n.Load()
			for i := 0; i < 100; i++ {
				_, paused, err := worker.Get(ctx, app)
				require.NoError(t, err)
				require.False(t, paused)
			}
			assert.Equal(t, before, n.Load(), "a platform known not paused is checked from memory")

			started, err := other.Set(ctx, app, Pause{Kind: KindDailyQuota, Reason: "quota", ErrCode: 45009, Until: time.Now().Add(time.Hour)})
			require.NoError(t, err)
			require.True(t, started)
			require.Eventually(t, func() bool {
				p, paused, err := worker.Get(ctx, app)
				return err == nil && paused && p.Kind == KindDailyQuota
			}, 5*time.Second, 5*time.Millisecond, "a pause set elsewhere is seen")
			before = n.Load()
			_, paused, err = worker.Get(ctx, app)
			require.NoError(t, err)
			assert.True(t, paused)
			assert.Equal(t, before, n.Load(), "a pause in force is checked from memory too")

			_, err = other.Resume(ctx, asynq.NewInspectorFromRedisClient(rb.Client), app)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				_, paused, err := worker.Get(ctx, app)
				return err == nil && !paused
			}, 5*time.Second, 5*time.Millisecond, "a resume elsewhere is seen")

			// A pause kept in memory ends at its time, as its key expires.
			short := time.Now().Add(300 * time.Millisecond)
			_, err = other.Set(ctx, app, Pause{Kind: KindMinuteLimit, Reason: "minute", ErrCode: 45011, Until: short})
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				_, paused, err := worker.Get(ctx, app)
				return err == nil && paused
			}, 5*time.Second, 5*time.Millisecond)
			time.Sleep(time.Until(short) + 50*time.Millisecond)
			_, paused, err = worker.Get(ctx, app)
			require.NoError(t, err)
			assert.False(t, paused, "ended at its time")
		})
	}
}

// TestUnwatchedPausesAreReadFromRedis: without the change feed nothing is
// kept: every check reads Redis and sees a pause at once.
func TestUnwatchedPausesAreReadFromRedis(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000bb"
	rb := redistest.Mini(t)
	ctx := context.Background()
	worker, other := NewStore(rb.Client, rb.Prefix), NewStore(rb.Client, rb.Prefix)
	_, paused, err := worker.Get(ctx, app)
	require.NoError(t, err)
	require.False(t, paused)
	_, err = other.Set(ctx, app, Pause{Kind: KindDailyQuota, Reason: "quota", Until: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	_, paused, err = worker.Get(ctx, app)
	require.NoError(t, err)
	assert.True(t, paused)
}

// TestAPauseEndedWithoutNoticeIsSeenSoon: a pause deleted by a process
// that announces nothing (an earlier version's resume) is seen gone once
// the kept pause is older than pausedRecheck.
func TestAPauseEndedWithoutNoticeIsSeenSoon(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000cc"
	rb := redistest.Mini(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	worker := NewStore(rb.Client, rb.Prefix)
	done := make(chan struct{})
	go func() { defer close(done); worker.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, worker.cache.Live, 5*time.Second, 5*time.Millisecond)

	_, err := NewStore(rb.Client, rb.Prefix).Set(ctx, app, Pause{Kind: KindDailyQuota, Reason: "quota", Until: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, paused, err := worker.Get(ctx, app)
		return err == nil && paused
	}, 5*time.Second, 5*time.Millisecond)

	require.NoError(t, rb.Client.Del(ctx, rb.Prefix+"pause:"+app).Err()) // no announcement
	_, paused, err := worker.Get(ctx, app)
	require.NoError(t, err)
	assert.True(t, paused, "still kept")
	worker.now = func() time.Time { return time.Now().Add(pausedRecheck + time.Second) }
	_, paused, err = worker.Get(ctx, app)
	require.NoError(t, err)
	assert.False(t, paused, "read again once older than pausedRecheck")

	// A read from Redis (a deferral's) updates what is kept.
	worker.now = time.Now
	_, err = NewStore(rb.Client, rb.Prefix).Set(ctx, app, Pause{Kind: KindDailyQuota, Reason: "quota", Until: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, paused, err := worker.Get(ctx, app)
		return err == nil && paused
	}, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, rb.Client.Del(ctx, rb.Prefix+"pause:"+app).Err())
	_, paused, err = worker.Read(ctx, app)
	require.NoError(t, err)
	require.False(t, paused)
	_, paused, err = worker.Get(ctx, app)
	require.NoError(t, err)
	assert.False(t, paused, "the fresh read is what is kept now")
}
