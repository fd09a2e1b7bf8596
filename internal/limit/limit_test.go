package limit_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
)

func TestReservationsAreSpacedByTheRate(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			rb := be.Open(t)
			ctx := context.Background()
			// Three "processes" reserve for the same platform at 10/s, burst 2.
			var mu sync.Mutex
			var waits []time.Duration
			var wg sync.WaitGroup
			for p := 0; p < 3; p++ {
				l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 10; i++ {
						r, err := l.Reserve(ctx, "wx1", limit.Rate{PerSecond: 10, Burst: 2}, time.Hour)
						assert.NoError(t, err)
						assert.True(t, r.OK)
						mu.Lock()
						waits = append(waits, r.Wait)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			// 30 calls at 10/s with a burst of 2: the last waits about 2.8s.
			maxWait := time.Duration(0)
			for _, w := range waits {
				maxWait = max(maxWait, w)
			}
			assert.InDelta(t, 2.8, maxWait.Seconds(), 0.15)
			// Waits are distinct slots: no two reservations share a moment
			// beyond the burst.
			slots := map[int64]int{}
			for _, w := range waits {
				slots[w.Round(50*time.Millisecond).Milliseconds()/100]++
			}
			for slot, n := range slots {
				assert.LessOrEqual(t, n, 2, "slot %d", slot)
			}
		})
	}
}

func TestTooLongAWaitReservesNothing(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
	rate := limit.Rate{PerSecond: 2, Burst: 1}
	r, err := l.Reserve(ctx, "wx1", rate, time.Second)
	require.NoError(t, err)
	require.True(t, r.OK)
	require.Zero(t, r.Wait)
	r, err = l.Reserve(ctx, "wx1", rate, time.Second)
	require.NoError(t, err)
	require.True(t, r.OK)
	assert.InDelta(t, 0.5, r.Wait.Seconds(), 0.05)
	for i := 0; i < 3; i++ {
		r, err = l.Reserve(ctx, "wx1", rate, 200*time.Millisecond)
		require.NoError(t, err)
		assert.False(t, r.OK)
		assert.InDelta(t, 1.0, r.Wait.Seconds(), 0.05, "refusals take no slot: the wait does not grow")
	}
	// Other platforms are not affected.
	r, err = l.Reserve(ctx, "wx2", rate, 0)
	require.NoError(t, err)
	assert.True(t, r.OK)
}

func TestGlobalRateSpansPlatforms(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 4, Burst: 1}, limit.Pacing{})
	var last time.Duration
	for i, app := range []string{"wx1", "wx2", "wx3", "wx4"} {
		r, err := l.Reserve(ctx, app, limit.Rate{PerSecond: 100}, time.Hour)
		require.NoError(t, err)
		require.True(t, r.OK)
		assert.InDelta(t, 0.25*float64(i), r.Wait.Seconds(), 0.05)
		last = r.Wait
	}
	assert.Greater(t, last, 700*time.Millisecond)
}

func TestBusyBurstSlowsThePlatformAndSuccessRestoresIt(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
	other := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{}) // another process
	for i := 0; i < 2; i++ {
		require.NoError(t, l.Feedback(ctx, "wx1", true))
	}
	f, err := other.Factor(ctx, "wx1")
	require.NoError(t, err)
	assert.Equal(t, 1.0, f, "two busy answers are not a burst")
	require.NoError(t, l.Feedback(ctx, "wx1", true))
	f, err = other.Factor(ctx, "wx1")
	require.NoError(t, err)
	assert.InDelta(t, 0.7, f, 1e-9, "the fleet sees the decrease")
	for i := 0; i < 5; i++ {
		require.NoError(t, l.Feedback(ctx, "wx1", true))
	}
	f, _ = other.Factor(ctx, "wx1")
	assert.InDelta(t, 0.7, f, 1e-9, "one decrease per second at most")

	// At factor 0.7 a 10/s platform is spaced by 1/7 s.
	rate := limit.Rate{PerSecond: 10, Burst: 1}
	_, err = other.Reserve(ctx, "wx1", rate, time.Hour)
	require.NoError(t, err)
	r, err := other.Reserve(ctx, "wx1", rate, time.Hour)
	require.NoError(t, err)
	assert.InDelta(t, 1.0/7, r.Wait.Seconds(), 0.02)

	for i := 0; i < 6; i++ {
		require.NoError(t, l.Feedback(ctx, "wx1", false))
	}
	f, _ = other.Factor(ctx, "wx1")
	assert.Equal(t, 1.0, f, "successes restore the full rate")
}

func TestUnlimitedCostsNothing(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
	r, err := l.Reserve(context.Background(), "wx1", limit.Rate{}, 0)
	require.NoError(t, err)
	assert.Equal(t, limit.Reservation{OK: true}, r)
	keys, _ := rb.Client.Keys(context.Background(), "*").Result()
	assert.Empty(t, keys)
}
