package worker_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// modifyTimes returns when the sandbox received each modify call of appid.
func modifyTimes(sb *wechattest.Sandbox, appid string) []time.Time {
	var out []time.Time
	for _, c := range sb.Calls() {
		if c.API == "modify_wxa_jump_domain" && c.AppID == appid {
			out = append(out, c.Time)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// maxInWindow is the most calls within any window of length w.
func maxInWindow(times []time.Time, w time.Duration) int {
	best, lo := 0, 0
	for hi := range times {
		for times[hi].Sub(times[lo]) >= w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// submitAll enqueues n changes of appid and waits for all to finish.
func submitAll(t testing.TB, b *testBundle, appid string, n int, opts tasks.EnqueueOptions) []*tasks.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ids []string
	for i := 0; i < n; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appid, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i%150)}}, opts)
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	var out []*tasks.Record
	for _, id := range ids {
		rec, err := b.client.Wait(ctx, id)
		require.NoError(t, err)
		out = append(out, rec)
	}
	return out
}

func TestFleetRespectsThePlatformRate(t *testing.T) {
	t.Parallel()
	const rate, burst, n = 10.0, 1, 200
	b := setup(t, redistest.Real, setupOpts{
		workers: 3, concurrency: 10, maxAttempts: 2,
		rates: map[string]limit.Rate{appA: {PerSecond: rate, Burst: burst}},
	})
	start := time.Now()
	recs := submitAll(t, b, appA, n, tasks.EnqueueOptions{})
	elapsed := time.Since(start)
	for _, r := range recs {
		require.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
		assert.Equal(t, 1, r.Attempts, "waiting for capacity uses no attempt")
	}
	times := modifyTimes(b.sandbox, appA)
	require.Len(t, times, n)
	if most := maxInWindow(times, time.Second); most > int(rate)+burst {
		gaps := []time.Duration{}
		for i := 1; i < len(times); i++ {
			if d := times[i].Sub(times[i-1]); d < 60*time.Millisecond {
				gaps = append(gaps, d.Round(time.Millisecond))
			}
		}
		t.Errorf("%d calls in one second; gaps under 60ms: %v", most, gaps)
	}
	lowerBound := time.Duration(float64(n-1) / rate * float64(time.Second))
	t.Logf("%d changes at %g/s in %s (lower bound %s, ratio %.3f)", n, rate, elapsed.Round(time.Millisecond), lowerBound, elapsed.Seconds()/lowerBound.Seconds())
	assert.LessOrEqual(t, elapsed.Seconds(), 1.15*lowerBound.Seconds())
}

func TestBusyStormCostsTheExpectedCalls(t *testing.T) {
	t.Parallel()
	const n, busy = 200, 0.3
	b := setup(t, redistest.Real, setupOpts{
		workers: 3, concurrency: 10, maxAttempts: 12,
		rates: map[string]limit.Rate{appA: {PerSecond: 100, Burst: 5}},
	})
	b.sandbox.SetFaults(appA, wechattest.Faults{BusyRate: busy})
	recs := submitAll(t, b, appA, n, tasks.EnqueueOptions{})
	attempts := 0
	for _, r := range recs {
		require.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
		attempts += r.Attempts
	}
	calls := len(modifyTimes(b.sandbox, appA))
	expected := float64(n) / (1 - busy)
	t.Logf("%d changes, %d calls, expected %.1f (ratio %.3f)", n, calls, expected, float64(calls)/expected)
	assert.Equal(t, calls, attempts, "every call is one attempt")
	assert.LessOrEqual(t, float64(calls), 1.15*expected)
}

func TestDailyQuotaPausesOnlyThatPlatform(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{
		workers: 2, concurrency: 4,
		rates: map[string]limit.Rate{appA: {PerSecond: 10, Burst: 1}, appB: {PerSecond: 10, Burst: 1}},
	})
	b.sandbox.SetFaults(appA, wechattest.Faults{Script: []int{45009}})
	var held []string
	for i := 0; i < 10; i++ {
		rec, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, fmt.Sprintf("a%d.com", i)), tasks.EnqueueOptions{})
		require.NoError(t, err)
		held = append(held, rec.TaskID)
	}
	start := time.Now()
	for _, r := range submitAll(t, b, appB, 30, tasks.EnqueueOptions{}) {
		require.Equal(t, tasks.StatusSucceeded, r.Status)
	}
	elapsed := time.Since(start)
	assert.LessOrEqual(t, elapsed.Seconds(), 1.15*2.9+0.5, "platform B keeps its full rate")

	china := time.FixedZone("UTC+8", 8*3600)
	c := time.Now().In(china)
	midnight := time.Date(c.Year(), c.Month(), c.Day()+1, 0, 0, 0, 0, china)
	require.Eventually(t, func() bool {
		for _, id := range held {
			r, err := b.client.Get(ctx, id)
			if err != nil || r.Status != tasks.StatusRetrying || r.NextAttemptAt == nil {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond)
	for _, id := range held {
		r, err := b.client.Get(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, 0, r.Attempts, "a quota pause is not a failure")
		assert.True(t, r.NextAttemptAt.Equal(midnight), "until 00:00 China time, got %s", r.NextAttemptAt)
		assert.Contains(t, r.Error, "daily API quota")
	}
	assert.Len(t, modifyTimes(b.sandbox, appA), 1, "one call found the quota used up; the rest waited without calling")
	assert.Len(t, b.logs.FilterMessage("platform paused; its changes wait").All(), 1)
	p, paused, err := b.pauses.Get(ctx, appA)
	require.NoError(t, err)
	require.True(t, paused)
	assert.Equal(t, 45009, p.ErrCode)
}

func TestMinuteLimitPausesUntilTheNextMinute(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Mini, setupOpts{})
	b.sandbox.SetFaults(appA, wechattest.Faults{Script: []int{45011}})
	rec, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r, err := b.client.Get(ctx, rec.TaskID)
		return err == nil && r.Status == tasks.StatusRetrying && r.NextAttemptAt != nil
	}, 5*time.Second, 10*time.Millisecond)
	r, err := b.client.Get(ctx, rec.TaskID)
	require.NoError(t, err)
	assert.True(t, r.NextAttemptAt.Equal(r.UpdatedAt.Truncate(time.Minute).Add(time.Minute)) || r.NextAttemptAt.After(r.UpdatedAt), "%s", r.NextAttemptAt)
	assert.Zero(t, r.NextAttemptAt.Second())
	assert.Equal(t, 0, r.Attempts)
	assert.Contains(t, r.Error, "frequency limit")
}

func TestSingleChangeOvertakesBulkWork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{
		workers: 1, concurrency: 4,
		rates: map[string]limit.Rate{appA: {PerSecond: 5, Burst: 1}},
	})
	bulk := tasks.EnqueueOptions{Queue: b.redis.Queue + "_bulk"}
	for i := 0; i < 1000; i++ {
		_, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, fmt.Sprintf("bulk%d.com", i%150)), bulk)
		require.NoError(t, err)
	}
	time.Sleep(500 * time.Millisecond) // the bulk work is under way
	start := time.Now()
	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet})
	require.Equal(t, tasks.StatusSucceeded, rec.Status)
	t.Logf("single change done %s after submission, 1000 bulk changes waiting", time.Since(start).Round(time.Millisecond))
	assert.Less(t, time.Since(start), 3*time.Second)
}
