package bench

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
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
type counter struct {
	trips, cmds atomic.Int64
	mu          sync.Mutex
	kinds       map[string]int64
}

// kind names what a command is for, from its first key: asynq's own,
// a task record, a pause, a token, pacing, a rollout, an idempotency key;
// "connect" and "idle" are not counted (see count).
func kind(cmd redis.Cmder) string {
	name := strings.ToLower(cmd.Name())
	switch name {
	case "hello", "client", "select", "auth":
		return "connect"
	case "ping", "subscribe", "psubscribe", "unsubscribe", "punsubscribe":
		return "idle"
	}
	args := cmd.Args()
	key := ""
	switch {
	case (name == "evalsha" || name == "eval") && len(args) > 3:
		key, _ = args[3].(string)
	case len(args) > 1:
		key, _ = args[1].(string)
	}
	if strings.HasPrefix(key, "asynq:") {
		// A task's own steps: its enqueue (its key), its dequeue (the
		// pending list, when it found a task) and its end (the active
		// set). The rest is a server's upkeep.
		switch {
		case strings.Contains(key, ":t:"), strings.HasSuffix(key, ":active"):
			return "asynq"
		case strings.HasSuffix(key, ":pending") && found(cmd):
			return "asynq"
		}
		return "idle"
	}
	for _, k := range []struct{ part, kind string }{
		{":record:", "record"}, {":pause:", "pause"}, {":deferred:", "pause"},
		{":token", "token"}, {":limit", "pacing"}, {":rollout:", "rollout"}, {":idem:", "idempotency"},
	} {
		if strings.Contains(key, k.part) {
			return k.kind
		}
	}
	return "other"
}

// found reports whether a script call answered something (a dequeue
// that found a task, not a poll of an empty queue).
func found(cmd redis.Cmder) bool {
	c, ok := cmd.(*redis.Cmd)
	return ok && c.Err() == nil && c.Val() != nil
}

func (c *counter) tally(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kinds == nil {
		c.kinds = map[string]int64{}
	}
	for _, cmd := range cmds {
		c.kinds[kind(cmd)]++
	}
}

func (c *counter) split() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.kinds)
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.count(cmd)
		return err
	}
}
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		c.count(cmds...)
		return err
	}
}

// count counts one round trip's commands, after their replies. What a
// process does whether or not there is work is not counted, only tallied
// in the split (it depends on how long the work took, not on how much
// there was): a new connection's handshake ("connect"), and a server's
// upkeep ("idle": polling a queue that was empty, heartbeats, forwarding
// and cleanup runs, pings, subscriptions).
func (c *counter) count(cmds ...redis.Cmder) {
	n := int64(0)
	for _, cmd := range cmds {
		if k := kind(cmd); k != "connect" && k != "idle" {
			n++
		}
	}
	if n > 0 {
		c.trips.Add(1)
		c.cmds.Add(n)
	}
	c.tally(cmds...)
}

func (c *counter) read() (trips, cmds int64) { return c.trips.Load(), c.cmds.Load() }

// counted is a client of the bench's Redis whose commands are counted.
func (e *env) counted() (*redis.Client, *counter) {
	c := redis.NewClient(e.rdb.Options())
	// wxdomain's client installs its own hook first (the record that
	// rides with asynq's command), as in a process that counted nothing:
	// the counter then sees what goes to Redis, each command once.
	_ = tasks.NewClient(c, tasks.ClientConfig{Prefix: e.prefix})
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
type phase struct {
	trips, cmds float64
	kinds       map[string]float64 // commands per item by kind
}

func measure(k *counter, n int, run func() error) (phase, error) {
	t0, c0 := k.read()
	k0 := k.split()
	if err := run(); err != nil {
		return phase{}, err
	}
	t1, c1 := k.read()
	p := phase{trips: float64(t1-t0) / float64(n), cmds: float64(c1-c0) / float64(n), kinds: map[string]float64{}}
	for name, v := range k.split() {
		if d := v - k0[name]; d > 0 {
			p.kinds[name] = float64(d) / float64(n)
		}
	}
	return p, nil
}

// record adds a side's commands per item by kind to the split.
func (p phase) record(r *Results, side string) {
	for name, v := range p.kinds {
		r.RedisCmdsSplit[side+"."+name] = v
	}
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
	// A worker that has served each platform once (what a fleet's
	// workers are): its first look at a platform's token and pause,
	// once per process, is not a cost per change.
	if err := e.warm(plain); err != nil {
		stop()
		return err
	}
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
		if err := e.waitAll(plain, ids); err != nil {
			return err
		}
		settle() // asynq's own end of the last tasks lands after their records
		return nil
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
			settle() // asynq ends the last tasks after their handler returned
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
	if err := e.warm(plain); err != nil {
		stop()
		return err
	}
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
			settle()
			return nil
		})
		return err
	})
	stop()
	if err != nil {
		return err
	}

	r.RedisCmdsSplit = map[string]float64{}
	enq.record(r, "change.enqueue")
	proc.record(r, "change.worker")
	rawEnq.record(r, "raw.enqueue")
	rawProc.record(r, "raw.worker")
	rolled.record(r, "rollout.producer")
	workSide.record(r, "rollout.worker")
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

// warm runs a change of each platform through the worker started last,
// uncounted but for the worker's side, and lets it settle.
func (e *env) warm(c *tasks.Client) error {
	time.Sleep(500 * time.Millisecond)
	ids, err := e.submit(c, len(e.apps), e.apps)
	if err != nil {
		return err
	}
	if err := e.waitAll(c, ids); err != nil {
		return err
	}
	settle()
	return nil
}

// settle lets the last tasks' ends reach Redis: what a server does while
// idle is not counted, so waiting costs the count nothing.
func settle() { time.Sleep(500 * time.Millisecond) }

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
