package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

// counter counts what a Redis client sends: round trips (a pipeline is
// one) and commands (a script call is one). These do not depend on the
// machine's load, so they are the figure to drive down.
type counter struct{ trips, cmds atomic.Int64 }

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.trips.Add(1)
		c.cmds.Add(1)
		return next(ctx, cmd)
	}
}
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.trips.Add(1)
		c.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

func (c *counter) read() (trips, cmds int64) { return c.trips.Load(), c.cmds.Load() }

// counted is a client of the bench's Redis whose commands are counted.
func (e *env) counted() (*redis.Client, *counter) {
	c := redis.NewClient(e.rdb.Options())
	k := &counter{}
	c.AddHook(k)
	return c, k
}

// with is the env over another client (the same Redis and namespace).
func (e *env) with(rdb *redis.Client) *env {
	c := *e
	c.rdb = rdb
	return &c
}

// phase is what one side sent per item. The servers poll once a second
// here (their chatter when idle: a few commands a second, against
// thousands of commands a second of work), and nothing is subtracted: a
// busy server dequeues without polling.
type phase struct{ trips, cmds float64 }

func measure(k *counter, n int, run func() error) (phase, error) {
	t0, c0 := k.read()
	if err := run(); err != nil {
		return phase{}, err
	}
	t1, c1 := k.read()
	return phase{trips: float64(t1-t0) / float64(n), cmds: float64(c1-c0) / float64(n)}, nil
}

// countPoll is the servers' poll interval while commands are counted.
const countPoll = time.Second

// commands counts Redis round trips and commands per change, enqueue to
// final record, no rate limit, upstream answering at once: a single
// change, raw asynq's task with a no-op handler, and a rollout's change
// with its fan-out.
func (e *env) commands(r *Results) error {
	const n, concurrency = 1000, 20
	plain := e.client() // waits, uncounted
	defer plain.Close()
	if err := e.warmTokens(plain); err != nil {
		return err
	}

	// Ours: a single change.
	prod, pk := e.counted()
	defer prod.Close()
	work, wk := e.counted()
	defer work.Close()
	we := e.with(work)
	we.poll = countPoll
	stop := we.startWorker(concurrency, nil, limit.Rate{})
	time.Sleep(500 * time.Millisecond)
	pc := e.with(prod).client()
	var ids []string
	var enq phase
	// The worker's count runs from the first submission to the last record.
	proc, err := measure(wk, n, func() error {
		var err error
		enq, err = measure(pk, n, func() error {
			ids, err = e.submit(pc, n, e.apps)
			return err
		})
		if err != nil {
			return err
		}
		return e.waitAll(plain, ids)
	})
	stop()
	_ = pc.Close()
	if err != nil {
		return err
	}

	// Raw asynq: enqueue, then a no-op handler.
	rprod, rpk := e.counted()
	defer rprod.Close()
	rwork, rwk := e.counted()
	defer rwork.Close()
	rawQueue := e.queue + "_cmds"
	var done atomic.Int64
	finished := make(chan struct{})
	srv := asynq.NewServerFromRedisClient(rwork, asynq.Config{Concurrency: concurrency, Queues: map[string]int{rawQueue: 1}, TaskCheckInterval: countPoll, DelayedTaskCheckInterval: countPoll, LogLevel: asynq.FatalLevel})
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		if done.Add(1) == n {
			close(finished)
		}
		return nil
	})); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	raw := asynq.NewClientFromRedisClient(rprod)
	var rawEnq phase
	rawProc, err := measure(rwk, n, func() error {
		var err error
		rawEnq, err = measure(rpk, n, func() error {
			for i := 0; i < n; i++ {
				if _, err := raw.Enqueue(asynq.NewTask("noop", nil), asynq.Queue(rawQueue)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		select {
		case <-finished:
			return nil
		case <-time.After(2 * time.Minute):
			return fmt.Errorf("raw asynq did not finish %d tasks", n)
		}
	})
	srv.Shutdown()
	if err != nil {
		return err
	}

	// A rollout's change, its fan-out included.
	roll, rk := e.counted()
	defer roll.Close()
	rw, rwk2 := e.counted()
	defer rw.Close()
	rc := e.with(roll).client()
	defer rc.Close()
	svc := rollout.New(roll, rc, rollout.Config{Prefix: e.prefix, Queue: e.queue, BulkQueue: e.queue, Platforms: e.apps})
	defer svc.Close()
	re := e.with(rw)
	re.poll = countPoll
	stop = re.startWorkerWith(concurrency, nil, limit.Rate{}, map[string]asynq.Handler{rollout.TypeFanout: svc})
	time.Sleep(500 * time.Millisecond)
	watch := rollout.New(e.rdb, plain, rollout.Config{Prefix: e.prefix}) // reads progress, uncounted
	defer watch.Close()
	// 50 rollouts of the 20 platforms: 1000 changes.
	var rolled phase
	var workSide phase
	rolled, err = measure(rk, n, func() error {
		var err error
		workSide, err = measure(rwk2, n, func() error {
			var ids []string
			for i := 0; i < n/len(e.apps); i++ {
				ro, err := svc.Create(e.ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("r%d.example.com", i)}, All: true})
				if err != nil {
					return err
				}
				ids = append(ids, ro.ID)
			}
			for _, id := range ids {
				if err := waitRollout(e.ctx, watch, id); err != nil {
					return err
				}
			}
			return nil
		})
		return err
	})
	stop()
	if err != nil {
		return err
	}

	r.RedisCmdsPerChange = enq.cmds + proc.cmds
	r.RedisCmdsPerTaskRaw = rawEnq.cmds + rawProc.cmds
	r.RedisCmdsPerRolloutChange = rolled.cmds + workSide.cmds
	r.Raw["redis_trips_per_change"] = enq.trips + proc.trips
	r.Raw["redis_trips_per_task_raw"] = rawEnq.trips + rawProc.trips
	r.Raw["redis_trips_per_rollout_change"] = rolled.trips + workSide.trips
	r.Raw["redis_cmds_enqueue"], r.Raw["redis_cmds_process"] = enq.cmds, proc.cmds
	r.Raw["redis_cmds_enqueue_raw"], r.Raw["redis_cmds_process_raw"] = rawEnq.cmds, rawProc.cmds
	r.Raw["redis_cmds_rollout_producer"], r.Raw["redis_cmds_rollout_worker"] = rolled.cmds, workSide.cmds
	return nil
}

// waitRollout waits for a rollout to finish with every platform succeeded.
func waitRollout(ctx context.Context, svc *rollout.Service, id string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		got, err := svc.Get(ctx, id)
		if err != nil {
			return err
		}
		if got.FinishedAt != nil {
			if got.Counts.Succeeded != got.Total {
				return fmt.Errorf("rollout ended with %+v", got.Counts)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("rollout %s did not finish in 2 minutes", id)
}
