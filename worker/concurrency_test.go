package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/metrics"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// allModifyTimes returns when the sandbox received each modify call.
func allModifyTimes(sb *wechattest.Sandbox) []time.Time {
	var out []time.Time
	for _, c := range sb.Calls() {
		if c.API == "modify_wxa_jump_domain" {
			out = append(out, c.Time)
		}
	}
	return sortTimes(out)
}

func sortTimes(ts []time.Time) []time.Time {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].Before(ts[j-1]); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
	return ts
}

// waitAll waits for the final records of the given changes.
func waitAll(t *testing.T, b *testBundle, ids []string, d time.Duration) []*tasks.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out []*tasks.Record
	for _, id := range ids {
		rec, err := b.client.Wait(ctx, id)
		require.NoError(t, err, "task %s did not finish: %+v", id, rec)
		out = append(out, rec)
	}
	return out
}

// TestEveryUpstreamCallTakesItsOwnSlot: an ensure-mode change (a get, then
// the change) and a change whose token was refused (the call, then the
// call again) each make two calls, on two slots: under a global limit of
// 10/s, never more than 11 calls in any second.
func TestEveryUpstreamCallTakesItsOwnSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(20)
	b := setup(t, redistest.Real, setupOpts{platforms: platforms, workers: 2, concurrency: 10, global: limit.Rate{PerSecond: 10, Burst: 1}})
	var ids []string
	for _, p := range platforms {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: p, Action: tasks.ActionAdd, Domains: []string{"e.example.com"}, Ensure: true}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	for _, r := range waitAll(t, b, ids, 60*time.Second) {
		require.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
	}
	// Every token refused now: each platform's next call is made twice.
	b.sandbox.RevokeTokens()
	ids = nil
	for _, p := range platforms {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: p, Action: tasks.ActionAdd, Domains: []string{"f.example.com"}}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	for _, r := range waitAll(t, b, ids, 60*time.Second) {
		require.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
	}
	times := allModifyTimes(b.sandbox)
	require.Len(t, times, 80, "20 gets and 20 adds, then 20 refused calls and 20 calls again")
	assert.LessOrEqual(t, maxInWindow(times, time.Second), 11)
}

// TestOneBusyTokenAnswerCostsNoAttempt: a -1 from the token API is not a
// refusal: the fleet asks again after a short backoff, once, and the
// changes waiting use no attempt.
func TestOneBusyTokenAnswerCostsNoAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{maxAttempts: 2, workers: 2})
	b.sandbox.SetFaults(appB, wechattest.Faults{TokenScript: []int{-1}})
	start := time.Now()
	var ids []string
	for i := 0; i < 10; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	for _, r := range waitAll(t, b, ids, 20*time.Second) {
		assert.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
		assert.Equal(t, 1, r.Attempts, "the busy token API used no attempt")
	}
	assert.Less(t, time.Since(start), 5*time.Second)
	tokenCalls := 0
	for _, c := range b.sandbox.Calls() {
		if c.API == "api_component_token" && c.AppID == appB {
			tokenCalls++
		}
	}
	assert.Equal(t, 2, tokenCalls, "one busy answer, then one token, for the whole fleet")
	n, err := b.redis.Client.Exists(ctx, b.redis.Prefix+"token_refusal:"+appB).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "a busy answer is not remembered as a refusal")
}

// TestCanceledBacklogGivesItsSlotsBack: cancelling 40 changes that hold
// slots of a 5/s platform frees the slots; the next change does not wait
// behind them.
func TestCanceledBacklogGivesItsSlotsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{rates: map[string]limit.Rate{appA: {PerSecond: 5, Burst: 1}}, concurrency: 20})
	var ids []string
	for i := 0; i < 40; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i)}}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	require.Eventually(t, func() bool {
		deferred := 0
		for _, id := range ids {
			if r, err := b.client.Get(ctx, id); err == nil && r.Status == tasks.StatusRetrying {
				deferred++
			}
		}
		return deferred >= 30
	}, 10*time.Second, 20*time.Millisecond, "the backlog holds its slots")
	for _, id := range ids {
		_, err := b.client.Cancel(ctx, id)
		if err != nil && !errors.Is(err, tasks.ErrFinal) {
			require.NoError(t, err)
		}
	}
	before := len(modifyTimes(b.sandbox, appA))
	start := time.Now()
	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"next.example.com"}})
	require.Equal(t, tasks.StatusSucceeded, rec.Status)
	times := modifyTimes(b.sandbox, appA)
	require.Len(t, times, before+1)
	took := times[len(times)-1].Sub(start)
	t.Logf("the next change called WeChat %s after it was submitted", took.Round(time.Millisecond))
	assert.Less(t, took, 1200*time.Millisecond, "not behind the 8s of canceled slots")
}

// TestSingleChangeGoesBeforeBulkUnderTheGlobalLimit: bulk changes that
// were dequeued once do not hold global slots ahead of a single change.
func TestSingleChangeGoesBeforeBulkUnderTheGlobalLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{global: limit.Rate{PerSecond: 5, Burst: 1}, concurrency: 20})
	var ids []string
	for i := 0; i < 40; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i)}},
			tasks.EnqueueOptions{Queue: b.redis.Queue + "_bulk"})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	require.Eventually(t, func() bool {
		deferred := 0
		for _, id := range ids {
			if r, err := b.client.Get(ctx, id); err == nil && r.Status == tasks.StatusRetrying {
				deferred++
			}
		}
		return deferred >= 30
	}, 10*time.Second, 20*time.Millisecond, "the bulk backlog was dequeued once")
	start := time.Now()
	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet})
	require.Equal(t, tasks.StatusSucceeded, rec.Status)
	took := time.Since(start)
	t.Logf("a single change behind 40 bulk changes at a global 5/s took %s", took.Round(time.Millisecond))
	assert.Less(t, took, 2*time.Second)
	for _, r := range waitAll(t, b, ids, 30*time.Second) {
		assert.Equal(t, tasks.StatusSucceeded, r.Status)
	}
	assert.LessOrEqual(t, maxInWindow(allModifyTimes(b.sandbox), time.Second), 6, "the global limit held")
}

// TestRetriedRolloutNeverRunsAnOldAttempt: a rollout canceled while it
// fans out, then retried at once, calls no platform twice.
func TestRetriedRolloutNeverRunsAnOldAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(300)
	b := setup(t, redistest.Real, setupOpts{platforms: platforms, noWorker: true, workers: 2, concurrency: 4})
	// One batch, so that the cancel lands while the fan-out still queues
	// it; slow enough that the changes it queued wait in the queue.
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms, BatchSize: 1000,
		Rules: tasks.Rules{KnownPlatform: func(a string) bool { _, ok := b.secrets(a); return ok }},
	})
	t.Cleanup(func() { _ = svc.Close() })
	b.opts.handlers = map[string]asynq.Handler{rollout.TypeFanout: svc}
	b.sandbox.SetLatency(20 * time.Millisecond)
	b.redis.Client.AddHook(slowEnqueue{prefix: "asynq:{" + b.redis.Queue + "_bulk}:t:"}) // the fan-out takes about a second
	for i := 0; i < 2; i++ {
		b.startWorker(t)
	}
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"r.example.com"}, All: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		n, err := b.redis.Client.Exists(ctx, b.redis.Prefix+"record:"+rollout.TaskID(r.ID, 0, platforms[20])).Result()
		return err == nil && n > 0
	}, 20*time.Second, time.Millisecond)
	_, err = svc.Cancel(ctx, r.ID)
	require.NoError(t, err)
	_, err = svc.Retry(ctx, r.ID)
	require.NoError(t, err)
	got := waitRollout(t, svc, r.ID)
	assert.Equal(t, 300, got.Counts.Succeeded, "%+v", got.Counts)
	twice := 0
	for _, p := range platforms {
		if callsOf(b.sandbox, p, "add") > 1 {
			twice++
		}
	}
	assert.Zero(t, twice, "platforms called twice")
}

// slowEnqueue delays asynq's enqueue of tasks whose key has a prefix.
type slowEnqueue struct{ prefix string }

func (slowEnqueue) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h slowEnqueue) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if n := strings.ToLower(cmd.Name()); (n == "evalsha" || n == "eval") && len(args) > 3 && strings.HasPrefix(fmt.Sprint(args[3]), h.prefix) {
			time.Sleep(3 * time.Millisecond)
		}
		return next(ctx, cmd)
	}
}
func (slowEnqueue) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// deferrals reads wxdomain_deferrals_total for a reason.
func deferrals(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "wxdomain_deferrals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestDeferredOnceNotPolled: a backlog on a rate-limited platform is
// handed back to the queue at most once per change, although asynq brings
// a deferred task back up to a second early.
func TestDeferredOnceNotPolled(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	b := setup(t, redistest.Real, setupOpts{rates: map[string]limit.Rate{appA: {PerSecond: 2, Burst: 1}}, metrics: metrics.New(reg)})
	recs := submitAll(t, b, appA, 12, tasks.EnqueueOptions{})
	for _, r := range recs {
		require.Equal(t, tasks.StatusSucceeded, r.Status)
	}
	n := deferrals(t, reg, "rate_limit")
	t.Logf("12 changes at 2/s: %g deferrals", n)
	assert.LessOrEqual(t, n, 12.0, "each change deferred at most once")
	assert.LessOrEqual(t, maxInWindow(modifyTimes(b.sandbox, appA), time.Second), 3)
}

// resumeHook runs an operator's resume at the moment a worker remembers a
// change as waiting for a pause: just before (before=true), or just after.
type resumeHook struct {
	key    string
	before bool
	once   sync.Once
	resume func()
}

func (h *resumeHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *resumeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *resumeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		remembers := false
		for _, c := range cmds {
			if strings.EqualFold(c.Name(), "hset") && len(c.Args()) > 1 && c.Args()[1] == h.key {
				remembers = true
			}
		}
		if !remembers {
			return next(ctx, cmds)
		}
		if h.before {
			h.once.Do(h.resume)
			return next(ctx, cmds)
		}
		err := next(ctx, cmds)
		h.once.Do(func() { go h.resume() })
		return err
	}
}

// TestResumeWhileAChangeIsBeingDeferred: an operator's resume that lands
// while a worker is deferring a change for the pause (either side of the
// moment it remembers the change) still runs it; it does not wait out the
// hour.
func TestResumeWhileAChangeIsBeingDeferred(t *testing.T) {
	t.Parallel()
	for _, before := range []bool{true, false} {
		t.Run(fmt.Sprintf("before=%v", before), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, redistest.Real, setupOpts{noWorker: true})
			_, err := b.pauses.Set(ctx, appA, pause.Pause{Kind: pause.KindDailyQuota, Reason: "quota", Until: time.Now().Add(time.Hour)})
			require.NoError(t, err)
			var resumed sync.WaitGroup
			resumed.Add(1)
			b.redis.Client.AddHook(&resumeHook{key: b.redis.Prefix + "deferred:" + appA, before: before, resume: func() {
				defer resumed.Done()
				_, err := b.client.Resume(context.Background(), appA)
				assert.NoError(t, err)
			}})
			b.startWorker(t)
			rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
			assert.Equal(t, tasks.StatusSucceeded, rec.Status)
			resumed.Wait()
		})
	}
}

// TestMaxDeferHoldsAtTheDeferral: a change that could only run after
// MaxDefer fails when it is deferred, not after waiting that long.
func TestMaxDeferHoldsAtTheDeferral(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{maxDefer: 3 * time.Second, rates: map[string]limit.Rate{appA: {PerSecond: 0.2, Burst: 1}}})
	first, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{})
	require.NoError(t, err)
	second, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "b.com"), tasks.EnqueueOptions{})
	require.NoError(t, err)
	start := time.Now()
	recs := waitAll(t, b, []string{first.TaskID, second.TaskID}, 10*time.Second)
	if recs[0].Status == tasks.StatusFailed {
		recs[0], recs[1] = recs[1], recs[0] // the workers took the second first
	}
	assert.Equal(t, tasks.StatusSucceeded, recs[0].Status)
	assert.Equal(t, tasks.StatusFailed, recs[1].Status)
	assert.Contains(t, recs[1].Error, "longer than 3s in all")
	assert.Less(t, time.Since(start), 2*time.Second, "failed at once, not after waiting")
	assert.Len(t, modifyTimes(b.sandbox, appA), 1)
}

// TestWaitingForAPlaceDoesNotBunchCalls: changes that slept to their slot
// and then waited for a place of work (every place busy with a slow
// platform) take their slots again; they do not all call at once when
// places free.
func TestWaitingForAPlaceDoesNotBunchCalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{concurrency: 2, rates: map[string]limit.Rate{appA: {PerSecond: 2, Burst: 1}}})
	b.sandbox.SetFaults(appB, wechattest.Faults{Latency: 1500 * time.Millisecond})
	var ids []string
	for i := 0; i < 2; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	time.Sleep(300 * time.Millisecond) // both places taken by the slow platform
	for i := 0; i < 6; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i)}}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	for _, r := range waitAll(t, b, ids, 60*time.Second) {
		require.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
	}
	times := modifyTimes(b.sandbox, appA)
	require.Len(t, times, 6)
	t.Logf("platform A's calls: %v", gaps(times))
	assert.LessOrEqual(t, maxInWindow(times, time.Second), 3, "2/s held after the places freed")
}

// TestSingleChangeGetsTheNextPlace: when every place of work is busy, the
// next one to free goes to a single change before bulk work that waited
// longer.
func TestSingleChangeGetsTheNextPlace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{concurrency: 1})
	b.sandbox.SetFaults(appB, wechattest.Faults{Latency: time.Second})
	slow, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond)
	ids := []string{slow.TaskID}
	for i := 0; i < 5; i++ {
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("bulk%d.example.com", i)}},
			tasks.EnqueueOptions{Queue: b.redis.Queue + "_bulk"})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	time.Sleep(300 * time.Millisecond) // the bulk work waits for the place
	single, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"single.example.com"}}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	for _, r := range waitAll(t, b, append(ids, single.TaskID), 60*time.Second) {
		require.Equal(t, tasks.StatusSucceeded, r.Status, "%+v", r)
	}
	var order []string
	for _, c := range b.sandbox.Calls() {
		if c.API == "modify_wxa_jump_domain" && c.AppID == appA {
			order = append(order, c.Domains)
		}
	}
	require.NotEmpty(t, order)
	assert.Equal(t, "single.example.com", order[0], "calls on A in order: %v", order)
}

// gaps are the times between calls, for a failure message.
func gaps(times []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(times); i++ {
		out = append(out, times[i].Sub(times[i-1]).Round(time.Millisecond))
	}
	return out
}
