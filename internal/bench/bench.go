// Package bench measures wxdomain against raw asynq on the same Redis in
// one run, and against the limits it is configured with, so the numbers
// hold on any machine: every figure is a ratio to a baseline measured here.
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
	"github.com/wxdomain/wxdomain/worker"
)

// Results are the figures of one run; the ratio keys are what users compare.
type Results struct {
	EnqueueRatio1 float64 `json:"enqueue_ratio_1"`
	EnqueueRatio8 float64 `json:"enqueue_ratio_8"`
	// With WXDOMAIN_REDIS_MIN_REPLICAS=1 against a local replica; 0 when
	// no redis-server could be started for it.
	DurableEnqueueRatio1 float64 `json:"durable_enqueue_ratio_1"`
	DurableEnqueueRatio8 float64 `json:"durable_enqueue_ratio_8"`
	OverheadRatio        float64 `json:"overhead_ratio"`
	// OverheadSandboxRatio is OverheadRatio with the sandbox over HTTP as
	// the upstream (its HTTP and emulation in the same process).
	OverheadSandboxRatio float64 `json:"overhead_sandbox_ratio"`
	ThroughputRatio      float64 `json:"throughput_ratio"`
	LimitRatio           float64 `json:"limit_ratio"`
	GlobalLimitRatio     float64 `json:"global_limit_ratio"`
	StormCallsRatio      float64 `json:"storm_calls_ratio"`
	StormTimeRatio       float64 `json:"storm_time_ratio"`
	RolloutTimeRatio     float64 `json:"rollout_time_ratio"`
	WorkerRSSMiB         float64 `json:"worker_rss_mib"`
	WorkerRSSLoadMiB     float64 `json:"worker_rss_load_mib"`
	RedisBytesPerRecord  float64 `json:"redis_bytes_per_record"`
	// Redis commands from enqueue to final record (no rate limit, upstream
	// answering at once); a pipeline's commands count one each, a script
	// call one. Independent of the machine's load.
	RedisCmdsPerChange        float64 `json:"redis_cmds_per_change"`
	RedisCmdsPerTaskRaw       float64 `json:"redis_cmds_per_task_raw"`
	RedisCmdsPerRolloutChange float64 `json:"redis_cmds_per_rollout_change"`
	// RedisCmdsSplit is the commands per change by side and kind
	// ("change.worker.record": the worker's record writes of a single
	// change).
	RedisCmdsSplit map[string]float64 `json:"redis_cmds_split"`
	Raw            map[string]float64 `json:"raw"`
}

// Run measures everything against the Redis at url, in its own key space.
// only, when not empty, runs only the measurements whose name contains it
// (WXBENCH_ONLY="redis commands").
func Run(ctx context.Context, url, only string, progress io.Writer) (*Results, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("redis at %s: %w", url, err)
	}
	r := &Results{Raw: map[string]float64{}}
	step := func(name string, fn func(*env) error) error {
		fmt.Fprintf(progress, "bench: %s...\n", name)
		e, err := newEnv(ctx, rdb)
		if err != nil {
			return err
		}
		defer e.close()
		return fn(e)
	}
	r.WorkerRSSMiB = rssMiB()
	for _, s := range []struct {
		name string
		fn   func(*env) error
	}{
		{"enqueue", func(e *env) error { return e.enqueue(r) }},
		{"durable enqueue", func(e *env) error { return e.durableEnqueue(r, opt.Addr, progress) }},
		{"overhead", func(e *env) error { return e.overhead(r) }},
		{"throughput", func(e *env) error { return e.throughput(r) }},
		{"limits", func(e *env) error { return e.limits(r) }},
		{"busy storm", func(e *env) error { return e.storm(r) }},
		{"rollout", func(e *env) error { return e.rollout(r) }},
		{"memory", func(e *env) error { return e.memory(r) }},
		{"redis commands", func(e *env) error { return e.commands(r) }},
	} {
		if !strings.Contains(s.name, only) {
			continue
		}
		if err := step(s.name, s.fn); err != nil {
			return r, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return r, nil
}

// env is one measurement's namespace: a key prefix, queues and a sandbox.
type env struct {
	ctx     context.Context
	rdb     *redis.Client
	prefix  string
	queue   string
	sandbox *wechattest.Sandbox
	srv     *httptest.Server
	wc      *wechat.Client
	apps    []string
	// poll, when set, is the worker's poll interval (default 20ms).
	poll time.Duration
	// upstream, when set, is what the worker calls instead of the sandbox.
	upstream worker.Upstream
	// finished, when set, is told of every record the worker finishes.
	finished func(*tasks.Record)
}

// noopUpstream answers every change at once, in process: what is left is
// wxdomain's own processing.
type noopUpstream struct{}

func (noopUpstream) ModifyJumpDomain(_ context.Context, _ string, ch wechat.JumpDomainChange) (wechat.JumpDomains, error) {
	return wechat.JumpDomains{Testing: ch.Domains}, nil
}

func newEnv(ctx context.Context, rdb *redis.Client) (*env, error) {
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	e := &env{ctx: ctx, rdb: rdb, prefix: "wxbench:" + id + ":", queue: "wxbench_" + id}
	e.sandbox = wechattest.New(wechattest.Config{})
	e.srv = httptest.NewServer(e.sandbox.Handler())
	var err error
	if e.wc, err = wechat.New(e.srv.URL, &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 200}}); err != nil {
		return nil, err
	}
	tickets := ticket.NewStore(rdb, e.prefix)
	for i := 0; i < 20; i++ {
		app := fmt.Sprintf("wxe%015x", i)
		e.apps = append(e.apps, app)
		e.sandbox.PutPlatform(wechattest.Platform{AppID: app, Released: true})
		if err := tickets.Set(ctx, app, "t"); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *env) close() {
	e.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pattern := range []string{e.prefix + "*", "asynq:{" + e.queue + "*"} {
		iter := e.rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 1000 {
				e.rdb.Del(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			e.rdb.Del(ctx, keys...)
		}
	}
	for _, q := range e.rdb.SMembers(ctx, "asynq:queues").Val() {
		if strings.HasPrefix(q, e.queue) {
			e.rdb.SRem(ctx, "asynq:queues", q)
		}
	}
}

func (e *env) client() *tasks.Client {
	return tasks.NewClient(e.rdb, tasks.ClientConfig{Prefix: e.prefix, Queue: e.queue, PollInterval: 50 * time.Millisecond})
}

// startWorker runs wxdomain's worker until the returned stop is called.
func (e *env) startWorker(concurrency int, rate func(string) limit.Rate, global limit.Rate) func() {
	return e.startWorkerWith(concurrency, rate, global, nil)
}

func (e *env) startWorkerWith(concurrency int, rate func(string) limit.Rate, global limit.Rate, handlers map[string]asynq.Handler) func() {
	log := zap.NewNop()
	tokens := token.NewSource(e.rdb, e.wc, ticket.NewStore(e.rdb, e.prefix), token.SourceConfig{
		Prefix: e.prefix, Margin: time.Minute, Secret: func(string) (string, bool) { return "s", true },
	}, log)
	var limiter *limit.Limiter
	if rate != nil || global.PerSecond > 0 {
		limiter = limit.New(e.rdb, e.prefix, global, limit.Pacing{})
	}
	pauses := pause.NewStore(e.rdb, e.prefix)
	store := tasks.NewStore(e.rdb, e.prefix, time.Hour)
	if e.finished != nil {
		store.OnFinish(e.finished)
	}
	var up worker.Upstream = e.wc
	if e.upstream != nil {
		up = e.upstream
	}
	h := worker.NewHandler(store, tokens, up, pauses, limiter, worker.Config{
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, MaxAttempts: 20, Rate: rate, Lead: 100 * time.Millisecond,
		Concurrency: concurrency, // the same work at once as raw asynq's
	}, log)
	ctx, cancel := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); tokens.Watch(ctx) }()
	go func() { defer wg.Done(); pauses.Watch(ctx) }()
	go func() {
		defer wg.Done()
		_ = worker.Run(ctx, e.rdb, worker.ServerConfig{
			Concurrency: concurrency, Waiting: 100, Queues: map[string]int{e.queue: 1}, ShutdownTimeout: 10 * time.Second, PollInterval: cmp.Or(e.poll, 20*time.Millisecond),
			Handlers: handlers,
		}, h, log)
	}()
	return func() { cancel(); wg.Wait() }
}

// submit enqueues n changes over the platforms and returns their ids.
func (e *env) submit(c *tasks.Client, n int, apps []string) ([]string, error) {
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		rec, err := c.Enqueue(e.ctx, tasks.JumpDomainChange{Platform: apps[i%len(apps)], Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i%100)}}, tasks.EnqueueOptions{})
		if err != nil {
			return nil, err
		}
		ids = append(ids, rec.TaskID)
	}
	return ids, nil
}

func (e *env) waitAll(c *tasks.Client, ids []string) error {
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Minute)
	defer cancel()
	for _, id := range ids {
		rec, err := c.Wait(ctx, id)
		if err != nil {
			return err
		}
		if rec.Status != tasks.StatusSucceeded {
			return fmt.Errorf("change %s ended %s: %s", id, rec.Status, rec.Error)
		}
	}
	return nil
}

func (e *env) warmTokens(c *tasks.Client) error {
	stop := e.startWorker(20, nil, limit.Rate{})
	defer stop()
	ids, err := e.submit(c, len(e.apps), e.apps)
	if err != nil {
		return err
	}
	return e.waitAll(c, ids)
}

// rate runs fn over n items with g goroutines and returns items per second.
func rate(n, g int, fn func(i int) error) (float64, error) {
	var next atomic.Int64
	var first error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), first
}

func (e *env) enqueue(r *Results) error {
	c := e.client()
	defer c.Close()
	var err error
	r.EnqueueRatio1, r.EnqueueRatio8, err = e.enqueueRatios(r, c, 10000, "enqueue")
	return err
}

// enqueueRatios measures c's Enqueue against raw asynq's on the same
// Redis, n tasks each, with 1 and with 8 goroutines; the rates go to
// r.Raw under name. The two take turns, in rounds, and the ratio is the
// median of the rounds': a shared machine's slow moments then fall on
// both sides of a round alike.
func (e *env) enqueueRatios(r *Results, c *tasks.Client, n int, name string) (ratio1, ratio8 float64, err error) {
	raw := asynq.NewClientFromRedisClient(e.rdb)
	defer raw.Close()
	payload, _ := json.Marshal(tasks.JumpDomainChange{Platform: e.apps[0], Action: tasks.ActionAdd, Domains: []string{"a.example.com"}})
	const rounds = 7
	for _, g := range []int{1, 8} {
		var ratios []float64
		var rawSum, oursSum float64
		for round := 0; round < rounds; round++ {
			rawRate, err := rate(n/rounds, g, func(int) error {
				_, err := raw.EnqueueContext(e.ctx, asynq.NewTask(tasks.TypeJumpDomain, payload), asynq.Queue(e.queue+"_raw"))
				return err
			})
			if err != nil {
				return 0, 0, err
			}
			ours, err := rate(n/rounds, g, func(i int) error {
				_, err := c.Enqueue(e.ctx, tasks.JumpDomainChange{Platform: e.apps[i%len(e.apps)], Action: tasks.ActionAdd, Domains: []string{"a.example.com"}}, tasks.EnqueueOptions{})
				return err
			})
			if err != nil {
				return 0, 0, err
			}
			ratios = append(ratios, ours/rawRate)
			rawSum += rawRate
			oursSum += ours
		}
		r.Raw[fmt.Sprintf("%s_raw_per_s_%d", name, g)] = rawSum / rounds
		r.Raw[fmt.Sprintf("%s_ours_per_s_%d", name, g)] = oursSum / rounds
		slices.Sort(ratios)
		if g == 1 {
			ratio1 = ratios[rounds/2]
		} else {
			ratio8 = ratios[rounds/2]
		}
	}
	return ratio1, ratio8, nil
}

// durableEnqueue measures enqueue with one replica confirming each
// submission (WXDOMAIN_REDIS_MIN_REPLICAS=1): a replica of the bench's
// Redis is started for it (redis-server from PATH) and removed after.
func (e *env) durableEnqueue(r *Results, primary string, progress io.Writer) error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		fmt.Fprintf(progress, "bench: no redis-server to start a replica (%v); durable enqueue not measured\n", err)
		return nil
	}
	host, port, err := net.SplitHostPort(primary)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	rport := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close()
	dir, err := os.MkdirTemp("", "wxbench-replica-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	replica := exec.Command(bin, "--port", rport, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--replicaof", host, port)
	if err := replica.Start(); err != nil {
		return err
	}
	defer func() {
		_ = replica.Process.Kill()
		_ = replica.Wait()
	}()
	// In sync once it acknowledges writes, three times running.
	deadline := time.Now().Add(60 * time.Second)
	for ok := 0; ok < 3; {
		var wait *redis.Cmd
		_, err := e.rdb.Pipelined(e.ctx, func(p redis.Pipeliner) error {
			p.Set(e.ctx, e.prefix+"sync", ok, time.Minute)
			wait = p.Do(e.ctx, "WAIT", 1, 200)
			return nil
		})
		if n, _ := wait.Int(); err == nil && n >= 1 {
			ok++
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the replica did not come in sync: %v", err)
		}
		ok = 0
		time.Sleep(100 * time.Millisecond)
	}
	c := tasks.NewClient(e.rdb, tasks.ClientConfig{Prefix: e.prefix, Queue: e.queue, Durability: tasks.Durability{MinReplicas: 1, Timeout: time.Second}})
	defer c.Close()
	r.DurableEnqueueRatio1, r.DurableEnqueueRatio8, err = e.enqueueRatios(r, c, 2000, "durable_enqueue")
	return err
}

// overhead: wxdomain processing (records, tokens, pauses, no limits, an
// upstream answering at once) against raw asynq with a no-op handler,
// same concurrency.
func (e *env) overhead(r *Results) error {
	const n, concurrency = 2000, 20
	c := e.client()
	defer c.Close()
	if err := e.warmTokens(c); err != nil {
		return err
	}
	// Raw asynq: enqueue, then time the drain with a no-op handler.
	raw := asynq.NewClientFromRedisClient(e.rdb)
	defer raw.Close()
	rawQueue := e.queue + "_noop"
	for i := 0; i < n; i++ {
		if _, err := raw.Enqueue(asynq.NewTask("noop", nil), asynq.Queue(rawQueue)); err != nil {
			return err
		}
	}
	var done atomic.Int64
	finished := make(chan struct{})
	srv := asynq.NewServerFromRedisClient(e.rdb, asynq.Config{Concurrency: concurrency, Queues: map[string]int{rawQueue: 1}, TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel})
	start := time.Now()
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		if done.Add(1) == n {
			close(finished)
		}
		return nil
	})); err != nil {
		return err
	}
	<-finished
	rawTime := time.Since(start)
	srv.Shutdown()

	// Ours, twice: with an upstream that answers at once in process (what
	// is left is wxdomain's own processing: the target), and with the
	// sandbox over HTTP (a WeChat that answers at once). Each drain is
	// timed to its last record, as raw asynq's to its last handler.
	ours := func(up worker.Upstream) (time.Duration, error) {
		ids, err := e.submit(c, n, e.apps)
		if err != nil {
			return 0, err
		}
		var finishedN atomic.Int64
		all := make(chan struct{})
		w := *e
		w.upstream = up
		w.finished = func(*tasks.Record) {
			if finishedN.Add(1) == n {
				close(all)
			}
		}
		start := time.Now()
		stop := w.startWorker(concurrency, nil, limit.Rate{})
		select {
		case <-all:
		case <-time.After(3 * time.Minute):
		}
		took := time.Since(start)
		stop()
		return took, e.waitAll(c, ids)
	}
	noop, err := ours(noopUpstream{})
	if err != nil {
		return err
	}
	overHTTP, err := ours(nil)
	if err != nil {
		return err
	}
	r.Raw["overhead_raw_per_s"] = float64(n) / rawTime.Seconds()
	r.Raw["overhead_ours_per_s"] = float64(n) / noop.Seconds()
	r.Raw["overhead_ours_sandbox_per_s"] = float64(n) / overHTTP.Seconds()
	r.OverheadRatio = rawTime.Seconds() / noop.Seconds()
	r.OverheadSandboxRatio = rawTime.Seconds() / overHTTP.Seconds()
	return nil
}

// throughput: upstream latency 50ms, concurrency 100, against the ideal
// concurrency/latency, in the steady state (after the first wave), raw
// asynq with a handler sleeping as long measured alike.
func (e *env) throughput(r *Results) error {
	const n, concurrency, latency = 2000, 100, 50 * time.Millisecond
	c := e.client()
	defer c.Close()
	if err := e.warmTokens(c); err != nil {
		return err
	}
	e.sandbox.SetLatency(latency)
	ids, err := e.submit(c, n, e.apps)
	if err != nil {
		return err
	}
	// Steady state, for both sides alike: from the end of the first wave
	// (the concurrency-th change done) to the last change done (a
	// process's start is not throughput).
	var finishedN atomic.Int64
	var first atomic.Int64
	all := make(chan struct{})
	w := *e
	w.finished = func(*tasks.Record) {
		switch finishedN.Add(1) {
		case concurrency:
			first.Store(time.Now().UnixNano())
		case n:
			close(all)
		}
	}
	stop := w.startWorker(concurrency, nil, limit.Rate{})
	select {
	case <-all:
	case <-time.After(3 * time.Minute):
	}
	took := time.Since(time.Unix(0, first.Load()))
	stop()
	if err := e.waitAll(c, ids); err != nil {
		return err
	}

	// Raw asynq, its handler sleeping as long as the upstream takes.
	raw := asynq.NewClientFromRedisClient(e.rdb)
	defer raw.Close()
	rawQueue := e.queue + "_sleep"
	for i := 0; i < n; i++ {
		if _, err := raw.Enqueue(asynq.NewTask("sleep", nil), asynq.Queue(rawQueue)); err != nil {
			return err
		}
	}
	var done, rawFirst atomic.Int64
	rawAll := make(chan struct{})
	srv := asynq.NewServerFromRedisClient(e.rdb, asynq.Config{Concurrency: concurrency, Queues: map[string]int{rawQueue: 1}, TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, _ *asynq.Task) error {
		time.Sleep(latency)
		switch done.Add(1) {
		case concurrency:
			rawFirst.Store(time.Now().UnixNano())
		case n:
			close(rawAll)
		}
		return nil
	})); err != nil {
		return err
	}
	<-rawAll
	rawTook := time.Since(time.Unix(0, rawFirst.Load()))
	srv.Shutdown()

	// n-concurrency changes done after the first wave's end.
	ideal := float64(concurrency) / latency.Seconds()
	achieved := float64(n-concurrency) / took.Seconds()
	r.Raw["throughput_per_s"], r.Raw["throughput_ideal_per_s"] = achieved, ideal
	r.Raw["throughput_raw_ratio"] = float64(n-concurrency) / rawTook.Seconds() / ideal
	r.ThroughputRatio = achieved / ideal
	return nil
}

// limits: achieved upstream rate against a per-platform limit (20/s) and a
// global one (50/s over ten platforms).
func (e *env) limits(r *Results) error {
	c := e.client()
	defer c.Close()
	if err := e.warmTokens(c); err != nil {
		return err
	}
	measure := func(n int, apps []string, rateFn func(string) limit.Rate, global limit.Rate) (float64, error) {
		e.sandbox.ResetCalls()
		ids, err := e.submit(c, n, apps)
		if err != nil {
			return 0, err
		}
		stop := e.startWorker(30, rateFn, global)
		err = e.waitAll(c, ids)
		stop()
		if err != nil {
			return 0, err
		}
		var first, last time.Time
		calls := 0
		for _, call := range e.sandbox.Calls() {
			if call.API != "modify_wxa_jump_domain" {
				continue
			}
			if calls == 0 || call.Time.Before(first) {
				first = call.Time
			}
			if call.Time.After(last) {
				last = call.Time
			}
			calls++
		}
		return float64(calls-1) / last.Sub(first).Seconds(), nil
	}
	per, err := measure(200, e.apps[:1], func(string) limit.Rate { return limit.Rate{PerSecond: 20, Burst: 1} }, limit.Rate{})
	if err != nil {
		return err
	}
	global, err := measure(300, e.apps[:10], func(string) limit.Rate { return limit.Rate{} }, limit.Rate{PerSecond: 50, Burst: 1})
	if err != nil {
		return err
	}
	r.Raw["limit_achieved_per_s"], r.Raw["limit_configured_per_s"] = per, 20
	r.Raw["global_limit_achieved_per_s"], r.Raw["global_limit_configured_per_s"] = global, 50
	r.LimitRatio, r.GlobalLimitRatio = per/20, global/50
	return nil
}

// storm: 30% busy answers; calls made against the expected n/(1-0.3), and
// completion time against the same work without busy answers.
func (e *env) storm(r *Results) error {
	const n, busy = 1000, 0.3
	c := e.client()
	defer c.Close()
	if err := e.warmTokens(c); err != nil {
		return err
	}
	run := func() (time.Duration, error) {
		ids, err := e.submit(c, n, e.apps)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		stop := e.startWorker(20, nil, limit.Rate{})
		err = e.waitAll(c, ids)
		took := time.Since(start)
		stop()
		return took, err
	}
	calm, err := run()
	if err != nil {
		return err
	}
	e.sandbox.ResetCalls()
	e.sandbox.SetDefaultFaults(wechattest.Faults{BusyRate: busy})
	stormy, err := run()
	if err != nil {
		return err
	}
	calls := 0
	for _, call := range e.sandbox.Calls() {
		if call.API == "modify_wxa_jump_domain" {
			calls++
		}
	}
	expected := float64(n) / (1 - busy)
	r.Raw["storm_calls"], r.Raw["storm_calls_expected"] = float64(calls), expected
	r.Raw["storm_seconds"], r.Raw["calm_seconds"] = stormy.Seconds(), calm.Seconds()
	r.StormCallsRatio = float64(calls) / expected
	r.StormTimeRatio = stormy.Seconds() / calm.Seconds()
	return nil
}

// rollout: a rollout over the 20 platforms, 10 changes' worth each under a
// global limit of 50 calls/s, against its lower bound.
func (e *env) rollout(r *Results) error {
	const global = 50.0
	c := e.client()
	defer c.Close()
	if err := e.warmTokens(c); err != nil {
		return err
	}
	apps := make([]string, 200)
	for i := range apps {
		apps[i] = fmt.Sprintf("wxf%015x", i)
		e.sandbox.PutPlatform(wechattest.Platform{AppID: apps[i], Released: true})
		if err := ticket.NewStore(e.rdb, e.prefix).Set(e.ctx, apps[i], "t"); err != nil {
			return err
		}
	}
	svc := rollout.New(e.rdb, c, rollout.Config{Prefix: e.prefix, Queue: e.queue, BulkQueue: e.queue, Platforms: apps})
	defer svc.Close()
	stop := e.startWorkerWith(30, func(string) limit.Rate { return limit.Rate{} }, limit.Rate{PerSecond: global, Burst: 1}, map[string]asynq.Handler{rollout.TypeFanout: svc})
	defer stop()
	start := time.Now()
	ro, err := svc.Create(e.ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true})
	if err != nil {
		return err
	}
	for {
		got, err := svc.Get(e.ctx, ro.ID)
		if err != nil {
			return err
		}
		if got.FinishedAt != nil {
			if got.Counts.Succeeded != len(apps) {
				return fmt.Errorf("rollout ended with %+v", got.Counts)
			}
			break
		}
		if time.Since(start) > 2*time.Minute {
			return errors.New("rollout did not finish in 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	lower := float64(len(apps)-1) / global
	r.Raw["rollout_seconds"], r.Raw["rollout_lower_bound_seconds"] = took.Seconds(), lower
	r.RolloutTimeRatio = took.Seconds() / lower
	return nil
}

// memory: worker RSS under load, and Redis bytes per finished record.
func (e *env) memory(r *Results) error {
	const n = 2000
	c := e.client()
	defer c.Close()
	ids, err := e.submit(c, n, e.apps)
	if err != nil {
		return err
	}
	stop := e.startWorker(50, nil, limit.Rate{})
	var peak float64
	done := make(chan error, 1)
	go func() { done <- e.waitAll(c, ids) }()
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		case <-time.After(100 * time.Millisecond):
			peak = math.Max(peak, rssMiB())
		}
	}
	stop()
	if err != nil {
		return err
	}
	r.WorkerRSSLoadMiB = math.Max(peak, rssMiB())
	var total int64
	sample := ids[:200]
	for _, id := range sample {
		n, err := e.rdb.MemoryUsage(e.ctx, e.prefix+"record:"+id).Result()
		if err != nil {
			return err
		}
		total += n
	}
	r.RedisBytesPerRecord = float64(total) / float64(len(sample))
	return nil
}

// rssMiB reads this process's resident memory (Linux).
func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// Markdown renders the results as the README's table.
func (r *Results) Markdown() string {
	rows := []struct {
		name, target string
		value        float64
		format       string
	}{
		{"enqueue, 1 goroutine (ours ÷ raw asynq)", "≥ 0.9", r.EnqueueRatio1, "%.2f"},
		{"enqueue, 8 goroutines (ours ÷ raw asynq)", "≥ 0.8", r.EnqueueRatio8, "%.2f"},
		{"enqueue, 1 goroutine, 1 replica must confirm (ours ÷ raw asynq)", "", r.DurableEnqueueRatio1, "%.2f"},
		{"enqueue, 8 goroutines, 1 replica must confirm (ours ÷ raw asynq)", "", r.DurableEnqueueRatio8, "%.2f"},
		{"processing overhead, no-op upstream (ours ÷ raw asynq no-op)", "≥ 0.6", r.OverheadRatio, "%.2f"},
		{"processing overhead, sandbox over HTTP (ours ÷ raw asynq no-op)", "", r.OverheadSandboxRatio, "%.2f"},
		{"throughput, 50 ms upstream, concurrency 100 (÷ ideal)", "≥ 0.93", r.ThroughputRatio, "%.2f"},
		{"throughput, raw asynq sleeping 50 ms, concurrency 100 (÷ ideal)", "", r.Raw["throughput_raw_ratio"], "%.2f"},
		{"per-platform limit 20/s (achieved ÷ configured)", "0.95–1.0", r.LimitRatio, "%.3f"},
		{"global limit 50/s (achieved ÷ configured)", "0.95–1.0", r.GlobalLimitRatio, "%.3f"},
		{"busy storm 30%: calls ÷ expected", "≤ 1.1", r.StormCallsRatio, "%.3f"},
		{"busy storm 30%: time ÷ time without busy", "", r.StormTimeRatio, "%.2f"},
		{"rollout of 200 platforms at 50/s global (time ÷ lower bound)", "", r.RolloutTimeRatio, "%.3f"},
		{"worker RSS at rest (MiB)", "", r.WorkerRSSMiB, "%.0f"},
		{"worker RSS under load (MiB)", "", r.WorkerRSSLoadMiB, "%.0f"},
		{"Redis bytes per finished record", "≤ 2048", r.RedisBytesPerRecord, "%.0f"},
		{"Redis commands per change, enqueue to record", "≤ 2× raw", r.RedisCmdsPerChange, "%.1f"},
		{"Redis commands per raw asynq task (no-op handler)", "", r.RedisCmdsPerTaskRaw, "%.1f"},
		{"Redis commands per rollout change, fan-out included", "≤ per change", r.RedisCmdsPerRolloutChange, "%.1f"},
	}
	var b strings.Builder
	b.WriteString("| measure | value | target |\n|---|---|---|\n")
	for _, row := range rows {
		fmt.Fprintf(&b, "| %s | "+row.format+" | %s |\n", row.name, row.value, row.target)
	}
	return b.String()
}
