package worker_test

import (
	"testing"
	"time"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
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
