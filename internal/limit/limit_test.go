package limit_test

import (
	"context"
	"fmt"
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
			// Each slot is when the reservation came back plus its wait, so
			// that a slow host (time passing between reservations) does not
			// move the figures.
			var mu sync.Mutex
			var slots []time.Time
			var wg sync.WaitGroup
			for p := 0; p < 3; p++ {
				l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 10; i++ {
						r, err := l.Reserve(ctx, limit.Request{Platform: "wx1", Rate: limit.Rate{PerSecond: 10, Burst: 2}, MaxAhead: time.Hour})
						at := time.Now()
						assert.NoError(t, err)
						assert.True(t, r.OK)
						mu.Lock()
						slots = append(slots, at.Add(r.Wait))
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			first, last := slots[0], slots[0]
			for _, s := range slots {
				if s.Before(first) {
					first = s
				}
				if s.After(last) {
					last = s
				}
			}
			// 30 calls at 10/s with a burst of 2: the last 2.8s after the first.
			assert.InDelta(t, 2.8, last.Sub(first).Seconds(), 0.15)
			// Distinct slots: no two reservations share a moment beyond the burst.
			n := map[int64]int{}
			for _, s := range slots {
				n[s.Sub(first).Round(50*time.Millisecond).Milliseconds()/100]++
			}
			for slot, k := range n {
				assert.LessOrEqual(t, k, 2, "slot %d", slot)
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
	r, err := l.Reserve(ctx, limit.Request{Platform: "wx1", Rate: rate, MaxAhead: time.Second})
	require.NoError(t, err)
	require.True(t, r.OK)
	require.Zero(t, r.Wait)
	r, err = l.Reserve(ctx, limit.Request{Platform: "wx1", Rate: rate, MaxAhead: time.Second})
	require.NoError(t, err)
	require.True(t, r.OK)
	assert.InDelta(t, 0.5, r.Wait.Seconds(), 0.05)
	for i := 0; i < 3; i++ {
		r, err = l.Reserve(ctx, limit.Request{Platform: "wx1", Rate: rate, MaxAhead: 200 * time.Millisecond})
		require.NoError(t, err)
		assert.False(t, r.OK)
		assert.InDelta(t, 1.0, r.Wait.Seconds(), 0.05, "refusals take no slot: the wait does not grow")
	}
	// Other platforms are not affected.
	r, err = l.Reserve(ctx, limit.Request{Platform: "wx2", Rate: rate, MaxAhead: 0})
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
		r, err := l.Reserve(ctx, limit.Request{Platform: app, Rate: limit.Rate{PerSecond: 100}, MaxAhead: time.Hour})
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
		require.NoError(t, l.Feedback(ctx, "wx1", "", limit.Busy))
	}
	f, err := other.Factor(ctx, "wx1")
	require.NoError(t, err)
	assert.Equal(t, 1.0, f, "two busy answers are not a burst")
	require.NoError(t, l.Feedback(ctx, "wx1", "", limit.Busy))
	f, err = other.Factor(ctx, "wx1")
	require.NoError(t, err)
	assert.InDelta(t, 0.7, f, 1e-9, "the fleet sees the decrease")
	for i := 0; i < 5; i++ {
		require.NoError(t, l.Feedback(ctx, "wx1", "", limit.Busy))
	}
	f, _ = other.Factor(ctx, "wx1")
	assert.InDelta(t, 0.7, f, 1e-9, "one decrease per second at most")

	// At factor 0.7 a 10/s platform is spaced by 1/7 s.
	rate := limit.Rate{PerSecond: 10, Burst: 1}
	_, err = other.Reserve(ctx, limit.Request{Platform: "wx1", Rate: rate, MaxAhead: time.Hour})
	require.NoError(t, err)
	r, err := other.Reserve(ctx, limit.Request{Platform: "wx1", Rate: rate, MaxAhead: time.Hour})
	require.NoError(t, err)
	assert.InDelta(t, 1.0/7, r.Wait.Seconds(), 0.02)

	for i := 0; i < 6; i++ {
		require.NoError(t, l.Feedback(ctx, "wx1", "", limit.Answered))
	}
	f, _ = other.Factor(ctx, "wx1")
	assert.Equal(t, 1.0, f, "successes restore the full rate")
}

func TestUnlimitedCostsNothing(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
	r, err := l.Reserve(context.Background(), limit.Request{Platform: "wx1", Rate: limit.Rate{}, MaxAhead: 0})
	require.NoError(t, err)
	assert.Equal(t, limit.Reservation{OK: true}, r)
	keys, _ := rb.Client.Keys(context.Background(), "*").Result()
	assert.Empty(t, keys)
}

// TestHolderFindsItsSlotAgain: a task that comes back gets the slot it
// reserved, with the wait on Redis's clock, not a new one.
func TestHolderFindsItsSlotAgain(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
	rate := limit.Rate{PerSecond: 2, Burst: 1}
	req := func(holder string) limit.Request {
		return limit.Request{Platform: "wx1", Holder: holder, Rate: rate, MaxAhead: time.Hour, Tolerance: 50 * time.Millisecond}
	}
	var waits []time.Duration
	for _, h := range []string{"a", "b", "c"} {
		r, err := l.Reserve(ctx, req(h))
		require.NoError(t, err)
		waits = append(waits, r.Wait)
	}
	assert.InDelta(t, 1.0, waits[2].Seconds(), 0.05)
	time.Sleep(300 * time.Millisecond)
	r, err := l.Reserve(ctx, req("c"))
	require.NoError(t, err)
	assert.True(t, r.OK)
	assert.InDelta(t, 0.7, r.Wait.Seconds(), 0.05, "the same slot, 300ms nearer")
	r, err = l.Reserve(ctx, req("d"))
	require.NoError(t, err)
	assert.InDelta(t, 1.2, r.Wait.Seconds(), 0.05, "a new holder goes after c")
}

// TestReleasedSlotsAreTakenByLaterChanges: a canceled backlog gives its
// slots back; the next change does not wait behind ghosts.
func TestReleasedSlotsAreTakenByLaterChanges(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			rb := be.Open(t)
			ctx := context.Background()
			l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 5, Burst: 1}, limit.Pacing{})
			rate := limit.Rate{PerSecond: 5, Burst: 1}
			var holders []string
			for i := 0; i < 40; i++ {
				h := fmt.Sprintf("t%d", i)
				_, err := l.Reserve(ctx, limit.Request{Platform: "wx1", Holder: h, Rate: rate, MaxAhead: time.Hour})
				require.NoError(t, err)
				holders = append(holders, h)
			}
			// Released in any order (here oldest first), as a cancel does.
			for _, h := range holders[1:] {
				require.NoError(t, limit.Release(ctx, rb.Client, rb.Prefix, "wx1", h))
			}
			r, err := l.Reserve(ctx, limit.Request{Platform: "wx1", Holder: "new", Rate: rate, MaxAhead: time.Hour})
			require.NoError(t, err)
			assert.True(t, r.OK)
			assert.LessOrEqual(t, r.Wait, 250*time.Millisecond, "right after the one slot still held, not 8s behind ghosts")
			r, err = l.Reserve(ctx, limit.Request{Platform: "wx2", Holder: "other", Rate: rate, MaxAhead: time.Hour})
			require.NoError(t, err)
			assert.LessOrEqual(t, r.Wait, 450*time.Millisecond, "the global lane gave its slots back too")
		})
	}
}

// TestBulkWorkWaitsInLineBehindSingles: under a global limit, bulk work
// takes real slots only a little ahead; a single change arriving behind a
// bulk backlog waits at most that much.
func TestBulkWorkWaitsInLineBehindSingles(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 5, Burst: 1}, limit.Pacing{})
	const horizon = time.Second
	var last limit.Reservation
	for i := 0; i < 40; i++ {
		r, err := l.Reserve(ctx, limit.Request{Platform: fmt.Sprintf("wx%02d", i), Holder: fmt.Sprintf("b%d", i), MaxAhead: time.Hour, Bulk: true, Horizon: horizon})
		require.NoError(t, err)
		assert.True(t, r.OK || r.Queued)
		last = r
	}
	assert.True(t, last.Queued, "far back in the bulk line")
	assert.InDelta(t, 7.8, last.Wait.Seconds(), 0.1, "its turn comes at the global rate")
	r, err := l.Reserve(ctx, limit.Request{Platform: "wxsingle", Holder: "s", MaxAhead: time.Hour})
	require.NoError(t, err)
	assert.True(t, r.OK)
	assert.LessOrEqual(t, r.Wait, horizon+250*time.Millisecond, "a single change is not behind 40 bulk changes")
	// A bulk change back before its turn stays in line, its turn kept.
	time.Sleep(200 * time.Millisecond)
	r, err = l.Reserve(ctx, limit.Request{Platform: "wx20", Holder: "b20", MaxAhead: time.Hour, Bulk: true, Horizon: horizon})
	require.NoError(t, err)
	assert.True(t, r.Queued)
	assert.InDelta(t, 3.8, r.Wait.Seconds(), 0.1)
	// Near its turn, it takes a real global slot.
	time.Sleep(r.Wait - 900*time.Millisecond)
	r, err = l.Reserve(ctx, limit.Request{Platform: "wx20", Holder: "b20", MaxAhead: time.Hour, Bulk: true, Horizon: horizon})
	require.NoError(t, err)
	assert.True(t, r.OK, "a real slot %s away", r.Wait)
	assert.LessOrEqual(t, r.Wait, horizon)
}

// TestLateHolderGetsNoNegativeWait: a task back a moment after its slot
// (within the tolerance) still has it, to be used at once.
func TestLateHolderGetsNoNegativeWait(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 1}, limit.Pacing{})
	req := limit.Request{Platform: "wx1", Holder: "a", Rate: limit.Rate{PerSecond: 2}, MaxAhead: time.Hour, Tolerance: 100 * time.Millisecond}
	r, err := l.Reserve(ctx, req)
	require.NoError(t, err)
	require.True(t, r.OK)
	time.Sleep(r.Wait + 60*time.Millisecond)
	r, err = l.Reserve(ctx, req)
	require.NoError(t, err)
	assert.True(t, r.OK)
	assert.Equal(t, time.Duration(0), r.Wait, "its slot, to use now, not a negative wait")
}

// TestReleaseKeepsTheBurst: giving back later slots does not open more
// than the burst at once.
func TestReleaseKeepsTheBurst(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{})
	rate := limit.Rate{PerSecond: 1, Burst: 5}
	var holders []string
	for i := 0; i < 10; i++ {
		h := fmt.Sprintf("h%d", i)
		_, err := l.Reserve(ctx, limit.Request{Platform: "wx1", Holder: h, Rate: rate, MaxAhead: time.Hour})
		require.NoError(t, err)
		holders = append(holders, h)
	}
	// The first five hold the burst now; the next five were 1..5s ahead.
	require.NoError(t, limit.Release(ctx, rb.Client, rb.Prefix, "wx1", holders[5:]...))
	r, err := l.Reserve(ctx, limit.Request{Platform: "wx1", Holder: "new", Rate: rate, MaxAhead: time.Hour})
	require.NoError(t, err)
	assert.InDelta(t, 1.0, r.Wait.Seconds(), 0.1, "a sixth call at once would exceed the burst of 5")
}

// TestBulkBacklogLeavesItsPlatformToSingles: bulk work waiting in the line
// holds no platform slot, so a single change on one of its platforms is
// not pushed behind the global backlog.
func TestBulkBacklogLeavesItsPlatformToSingles(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 5, Burst: 1}, limit.Pacing{})
	rate := limit.Rate{PerSecond: 1}
	const horizon = time.Second
	for i := 0; i < 40; i++ {
		_, err := l.Reserve(ctx, limit.Request{Platform: fmt.Sprintf("wx%02d", i), Holder: fmt.Sprintf("b%d", i), Rate: rate, MaxAhead: time.Hour, Bulk: true, Horizon: horizon})
		require.NoError(t, err)
	}
	// wx39 is the last in line, about 8s away; a single on wx39 now:
	r, err := l.Reserve(ctx, limit.Request{Platform: "wx39", Holder: "s", Rate: rate, MaxAhead: time.Hour})
	require.NoError(t, err)
	assert.True(t, r.OK)
	assert.LessOrEqual(t, r.Wait, horizon+250*time.Millisecond, "the single is not behind the global backlog on its platform")
}

// TestBulkBehindItsPlatformHoldsThePlatformSlot: when the platform's own
// rate is the longer wait, bulk work takes its platform slots (so it is
// deferred once) and its global slot only when it comes back.
func TestBulkBehindItsPlatformHoldsThePlatformSlot(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 50, Burst: 1}, limit.Pacing{})
	rate := limit.Rate{PerSecond: 2}
	const horizon = 500 * time.Millisecond
	req := func(h string) limit.Request {
		return limit.Request{Platform: "wx1", Holder: h, Rate: rate, MaxAhead: time.Hour, Bulk: true, Horizon: horizon, Tolerance: 50 * time.Millisecond}
	}
	var waits []time.Duration
	for i := 0; i < 6; i++ {
		r, err := l.Reserve(ctx, req(fmt.Sprintf("b%d", i)))
		require.NoError(t, err)
		require.True(t, r.OK || r.Queued)
		waits = append(waits, r.Wait)
	}
	for i := 1; i < len(waits); i++ {
		assert.InDelta(t, 0.5, (waits[i] - waits[i-1]).Seconds(), 0.05, "platform slots 0.5s apart: %v", waits)
	}
	// b4, back just before its platform slot, gets the global slot with it.
	time.Sleep(waits[4] - 300*time.Millisecond)
	r, err := l.Reserve(ctx, req("b4"))
	require.NoError(t, err)
	assert.True(t, r.OK)
	assert.InDelta(t, 0.3, r.Wait.Seconds(), 0.05)
	// A global slot was taken with it: another platform's single waits 20ms behind it.
	r2, err := l.Reserve(ctx, limit.Request{Platform: "wx2", Holder: "s", MaxAhead: time.Hour})
	require.NoError(t, err)
	assert.True(t, r2.OK)
}

// TestHolderFindsItsGlobalSlotAgain: with a global limit alone (no
// platform rate), a task that comes back keeps its slot too.
func TestHolderFindsItsGlobalSlotAgain(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	ctx := context.Background()
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{PerSecond: 2, Burst: 1}, limit.Pacing{})
	req := func(holder, appid string) limit.Request {
		return limit.Request{Platform: appid, Holder: holder, MaxAhead: time.Hour, Tolerance: 50 * time.Millisecond}
	}
	var last limit.Reservation
	for i, h := range []string{"a", "b", "c"} {
		r, err := l.Reserve(ctx, req(h, fmt.Sprintf("wx%d", i)))
		require.NoError(t, err)
		last = r
	}
	require.InDelta(t, 1.0, last.Wait.Seconds(), 0.05)
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 3; i++ {
		r, err := l.Reserve(ctx, req("c", "wx2"))
		require.NoError(t, err)
		assert.True(t, r.OK)
		assert.InDelta(t, 0.7, r.Wait.Seconds(), 0.05, "the same slot each time it comes back")
	}
}

func TestFactorsInOneRead(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	l := limit.New(rb.Client, rb.Prefix, limit.Rate{}, limit.Pacing{Decrease: 0.5, MinFactor: 0.1})
	ctx := context.Background()
	require.NoError(t, rb.Client.Set(ctx, rb.Prefix+"limit_factor:wxaaaaaaaaaaaaaaaa", "0.35", 0).Err())
	got, err := l.Factors(ctx, []string{"wxaaaaaaaaaaaaaaaa", "wxbbbbbbbbbbbbbbbb"})
	require.NoError(t, err)
	assert.Equal(t, map[string]float64{"wxaaaaaaaaaaaaaaaa": 0.35, "wxbbbbbbbbbbbbbbbb": 1}, got)
}
