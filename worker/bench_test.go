package worker_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// BenchmarkThrottledPlatform reports, in one run on a real Redis, the rate
// a limited platform achieves against its configured limit, and how much a
// throttled platform slows another one that shares the workers: B's time
// with A throttled beside it ÷ B's time alone (1 = A's waiting tasks take
// no worker slots from B). Run with -benchtime=1x: each iteration is a
// whole scenario.
func BenchmarkThrottledPlatform(b *testing.B) {
	const (
		rateA  = 20.0
		nA, nB = 100, 300
	)
	for i := 0; i < b.N; i++ {
		run := func(withA bool) (aRate float64, bTime time.Duration) {
			tb := setup(b, redistest.Real, setupOpts{
				workers: 1, concurrency: 10,
				rates: map[string]limit.Rate{appA: {PerSecond: rateA, Burst: 1}},
			})
			tb.sandbox.SetFaults(appB, wechattest.Faults{Latency: 20 * time.Millisecond})
			done := make(chan struct{})
			if withA {
				go func() {
					defer close(done)
					submitAll(b, tb, appA, nA, tasks.EnqueueOptions{})
				}()
				time.Sleep(300 * time.Millisecond) // A's backlog is there first
			} else {
				close(done)
			}
			start := time.Now()
			submitAll(b, tb, appB, nB, tasks.EnqueueOptions{})
			bTime = time.Since(start)
			<-done
			if withA {
				times := modifyTimes(tb.sandbox, appA)
				aRate = float64(len(times)-1) / times[len(times)-1].Sub(times[0]).Seconds()
			}
			return aRate, bTime
		}
		_, alone := run(false)
		aRate, shared := run(true)
		b.ReportMetric(aRate/rateA, "limit_ratio")
		b.ReportMetric(shared.Seconds()/alone.Seconds(), "b_slowdown")
		b.Logf("A: %.2f calls/s of %g allowed; B: %d changes in %s alone, %s beside throttled A", aRate, rateA, nB, alone.Round(time.Millisecond), shared.Round(time.Millisecond))
	}
}

// BenchmarkRolloutFanout reports, in one run on a real Redis, how fast a
// 10,000-platform rollout is fanned out (tasks enqueued per second, records
// included) against raw asynq Enqueue of as many tasks, and a rollout's
// total time against its lower bound under a global rate. Run with
// -benchtime=1x.
func BenchmarkRolloutFanout(b *testing.B) {
	const n = 10000
	for i := 0; i < b.N; i++ {
		platforms := manyPlatforms(n)
		rb := redistest.Real(b)
		client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
		svc := rollout.New(rb.Client, client, rollout.Config{Prefix: rb.Prefix, Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk", Platforms: platforms})
		ctx := context.Background()
		r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true})
		require.NoError(b, err)
		payload, _ := json.Marshal(map[string]any{"rollout_id": r.ID, "attempt": 0})
		start := time.Now()
		require.NoError(b, svc.ProcessTask(ctx, asynq.NewTask(rollout.TypeFanout, payload)))
		ours := float64(n) / time.Since(start).Seconds()

		raw := asynq.NewClientFromRedisClient(rb.Client)
		change, _ := json.Marshal(tasks.JumpDomainChange{Platform: platforms[0], Action: tasks.ActionAdd, Domains: []string{"a.example.com"}})
		start = time.Now()
		for j := 0; j < n; j++ {
			_, err := raw.Enqueue(asynq.NewTask(tasks.TypeJumpDomain, change), asynq.Queue(rb.Queue+"_raw"))
			require.NoError(b, err)
		}
		baseline := float64(n) / time.Since(start).Seconds()
		// And raw asynq with as many enqueues at once as the fan-out makes.
		var next atomic.Int64
		var wg sync.WaitGroup
		start = time.Now()
		for w := 0; w < 8; w++ {
			wg.Go(func() {
				for next.Add(1) <= n {
					_, err := raw.Enqueue(asynq.NewTask(tasks.TypeJumpDomain, change), asynq.Queue(rb.Queue+"_raw8"))
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		baseline8 := float64(n) / time.Since(start).Seconds()
		b.ReportMetric(ours, "fanout_tasks/s")
		b.ReportMetric(ours/baseline, "fanout_ratio")
		b.ReportMetric(ours/baseline8, "fanout_ratio_8")
		b.Logf("fan-out of %d platforms: %.0f tasks/s; raw asynq Enqueue: %.0f tasks/s (ratio %.2f), 8 at once %.0f tasks/s (ratio %.2f)", n, ours, baseline, ours/baseline, baseline8, ours/baseline8)
		_ = raw.Close()
		_ = svc.Close()
		_ = client.Close()

		// A rollout over 200 platforms under a global limit of 50 calls/s.
		const m, global = 200, 50.0
		_, rs := setupRollouts(b, manyPlatforms(m), setupOpts{workers: 1, concurrency: 20, global: limit.Rate{PerSecond: global, Burst: 1}})
		start = time.Now()
		ro, err := rs.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true})
		require.NoError(b, err)
		ro = waitRollout(b, rs, ro.ID)
		took := time.Since(start)
		lower := time.Duration(float64(m-1) / global * float64(time.Second))
		b.ReportMetric(took.Seconds()/lower.Seconds(), "rollout_time_ratio")
		b.Logf("rollout of %d platforms at %g calls/s: %s (lower bound %s), %d succeeded", m, global, took.Round(time.Millisecond), lower, ro.Counts.Succeeded)
	}
}
