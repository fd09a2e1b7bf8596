package worker_test

import (
	"context"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/metrics"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/preflight/preflighttest"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
	"github.com/wxdomain/wxdomain/worker"
)

const (
	appA = "wxaaaaaaaaaaaaaaaa"
	appB = "wxbbbbbbbbbbbbbbbb"
)

type testBundle struct {
	redis   redistest.Bundle
	sandbox *wechattest.Sandbox
	client  *tasks.Client
	store   *tasks.Store
	tickets *ticket.Store
	pauses  *pause.Store
	log     *zap.Logger
	logs    *observer.ObservedLogs
	opts    setupOpts
	wc      *wechat.Client
	secrets func(string) (string, bool)
}

type setupOpts struct {
	maxAttempts int
	retryBase   time.Duration
	noWorker    bool
	// workers is how many independent workers (each with its own token
	// source, limiter and asynq server, like separate processes) run; 1 by
	// default, each at concurrency (default 4).
	workers     int
	concurrency int
	// platforms are more platforms (released, with tickets) besides A and B.
	platforms []string
	// handlers are more task types the workers run.
	handlers map[string]asynq.Handler
	// rates per platform (none: unlimited) and the global rate.
	rates  map[string]limit.Rate
	global limit.Rate
	// upstream, if set, wraps the sandbox's handler (a redirecting front, say).
	upstream func(http.Handler) http.Handler
	// metrics, if set, count what the workers do.
	metrics *metrics.Metrics
	// maxDefer bounds how long a change may wait in all (default 48h).
	maxDefer time.Duration
	// files, if set, serves the domains' verification files: the sandbox
	// checks them (as WeChat does) and the workers run the preflight,
	// both aimed at this server, in preflightMode by default.
	files         *preflighttest.Server
	preflightMode tasks.PreflightMode
	// hook, if set, sees every command the workers send: they then use a
	// Redis client of their own.
	hook redis.Hook
	// preflightChecks, if set, is told of every check a worker makes.
	preflightChecks func(result string)
}

// setup runs a real asynq worker against the sandbox upstream over the
// given Redis, with two released platforms that have tickets.
func setup(t testing.TB, open func(testing.TB) redistest.Bundle, o setupOpts) *testBundle {
	t.Helper()
	rb := open(t)
	sbCfg := wechattest.Config{Strict: true}
	if o.files != nil {
		sbCfg.FileClient = o.files.Client()
	}
	sb := wechattest.New(sbCfg)
	apps := append([]string{appA, appB}, o.platforms...)
	for _, app := range apps {
		sb.PutPlatform(wechattest.Platform{AppID: app, Secret: "secret-" + app, Released: true, CheckFiles: o.files != nil})
	}
	h := sb.Handler()
	if o.upstream != nil {
		h = o.upstream(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	obs, logs := observer.New(zapcore.InfoLevel)
	log := zaptest.NewLogger(t, zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, obs) })))
	wc, err := wechat.New(srv.URL, &http.Client{Timeout: 5 * time.Second})
	require.NoError(t, err)
	tickets := ticket.NewStore(rb.Client, rb.Prefix)
	ctx := context.Background()
	for _, app := range apps {
		require.NoError(t, tickets.Set(ctx, app, "ticket-"+app))
	}
	secrets := func(appid string) (string, bool) {
		if slices.Contains(apps, appid) {
			return "secret-" + appid, true
		}
		return "", false
	}
	store := tasks.NewStore(rb.Client, rb.Prefix, time.Hour)
	if o.maxAttempts == 0 {
		o.maxAttempts = 5
	}
	if o.retryBase == 0 {
		o.retryBase = 20 * time.Millisecond
	}
	o.workers = max(o.workers, 1)
	if o.concurrency == 0 {
		o.concurrency = 4
	}

	client := tasks.NewClient(rb.Client, tasks.ClientConfig{
		Prefix: rb.Prefix, Queue: rb.Queue, ResultTTL: time.Hour, PollInterval: 50 * time.Millisecond,
		Rules: tasks.Rules{KnownPlatform: func(a string) bool { _, ok := secrets(a); return ok }},
	})
	t.Cleanup(func() { _ = client.Close() })

	b := &testBundle{
		redis: rb, sandbox: sb, client: client, store: store, tickets: tickets, pauses: pause.NewStore(rb.Client, rb.Prefix),
		log: log, logs: logs, opts: o, wc: wc, secrets: secrets,
	}
	if !o.noWorker {
		for i := 0; i < o.workers; i++ {
			b.startWorker(t)
		}
	}
	return b
}

// startWorker runs an asynq worker until the test ends; the returned
// function stops it gracefully earlier and waits for it.
func (b *testBundle) startWorker(t testing.TB) (stop func()) {
	t.Helper()
	o := b.opts
	rdb, store, tickets := b.redis.Client, b.store, b.tickets
	if o.hook != nil {
		c := redis.NewClient(b.redis.Client.(*redis.Client).Options())
		c.AddHook(o.hook)
		t.Cleanup(func() { _ = c.Close() })
		rdb, store, tickets = c, tasks.NewStore(c, b.redis.Prefix, time.Hour), ticket.NewStore(c, b.redis.Prefix)
	}
	tokens := token.NewSource(rdb, b.wc, tickets, token.SourceConfig{Prefix: b.redis.Prefix, Margin: time.Minute, Secret: b.secrets}, b.log)
	limiter := limit.New(rdb, b.redis.Prefix, o.global, limit.Pacing{})
	rate := func(appid string) limit.Rate { return o.rates[appid] }
	var pf worker.Preflighter
	if o.files != nil {
		pf = b.newPreflight(tokens, limiter, o.files)
	}
	// Each worker is a process of its own: its pauses are kept in its
	// memory while it follows the fleet's pause changes.
	pauses := pause.NewStore(rdb, b.redis.Prefix)
	h := worker.NewHandler(store, tokens, b.wc, pauses, limiter, worker.Config{
		Preflight: pf, PreflightDefault: o.preflightMode,
		RetryBase: o.retryBase, RetryMax: 5 * o.retryBase, MaxAttempts: o.maxAttempts, OperatorPause: time.Minute,
		Rate:    rate,
		Lead:    100 * time.Millisecond, // the queue is polled every 50ms here
		Metrics: o.metrics, MaxDefer: o.maxDefer, BulkQueue: b.redis.Queue + "_bulk", Concurrency: o.concurrency,
	}, b.log)
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var watched sync.WaitGroup
	watched.Go(func() { tokens.Watch(wctx) })
	watched.Go(func() { pauses.Watch(wctx) })
	go func() {
		done <- worker.Run(wctx, rdb, worker.ServerConfig{
			Concurrency: o.concurrency, Waiting: 100, Queues: map[string]int{b.redis.Queue: 2, b.redis.Queue + "_bulk": 1},
			ShutdownTimeout: 5 * time.Second, PollInterval: 50 * time.Millisecond, Handlers: b.opts.handlers,
		}, h, b.log)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
			watched.Wait()
			tokens.Drain()
		})
	}
	t.Cleanup(stop)
	return stop
}

// newPreflight is a process's preflight aimed at the files server.
func (b *testBundle) newPreflight(tokens worker.Tokens, limiter *limit.Limiter, files *preflighttest.Server) *preflight.Preflight {
	cc := files.CheckerConfig()
	cc.Observe = b.opts.preflightChecks
	rate := func(appid string) limit.Rate { return b.opts.rates[appid] }
	return &preflight.Preflight{
		Files:   preflight.NewFiles(b.redis.Client, b.redis.Prefix, worker.ConfirmFileFetcher(tokens, b.wc, limiter, rate, worker.DefaultPolicy(), time.Second)),
		Checker: preflight.NewChecker(b.redis.Client, b.redis.Prefix, cc),
	}
}

// preflight is the preflight of another process (an API server's).
func (b *testBundle) preflight(t testing.TB, files *preflighttest.Server) *preflight.Preflight {
	t.Helper()
	tokens := token.NewSource(b.redis.Client, b.wc, b.tickets, token.SourceConfig{Prefix: b.redis.Prefix, Margin: time.Minute, Secret: b.secrets}, b.log)
	return b.newPreflight(tokens, limit.New(b.redis.Client, b.redis.Prefix, b.opts.global, limit.Pacing{}), files)
}

// enqueueWait submits a change and waits for its final record.
func (b *testBundle) enqueueWait(t *testing.T, c tasks.JumpDomainChange) *tasks.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec, err := b.client.Enqueue(ctx, c, tasks.EnqueueOptions{})
	require.NoError(t, err)
	final, err := b.client.Wait(ctx, rec.TaskID)
	require.NoError(t, err, "task %s did not finish; last record %+v", rec.TaskID, final)
	return final
}
