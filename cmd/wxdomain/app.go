package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/metrics"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/redisha"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/tasks"
	"github.com/wxdomain/wxdomain/worker"
)

// app holds what every command shares: the environment, the output streams
// and the global flags.
type app struct {
	getenv         func(string) string
	stdout, stderr io.Writer

	redisURL      string
	platformsFile string
	logLevel      string
	logFormat     string

	// ha counts unconfirmed writes and watches the Redis primary.
	ha *redisha.Monitor
}

func newRootCommand(getenv func(string) string, stdout, stderr io.Writer) *cobra.Command {
	a := &app{getenv: getenv, stdout: stdout, stderr: stderr, ha: redisha.New()}
	redis.SetLogger(quietRedis{}) // until a long-running command logs them (start)
	root := &cobra.Command{
		Use:   "wxdomain",
		Short: "Change WeChat third-party platforms' Mini Program jump domains, reliably, at fleet scale",
		Long: `Change WeChat third-party platforms' Mini Program jump domains, reliably, at fleet scale.

Appids are component appids: "wx" and 16 lower-case hex digits. Ids and
appids given to any command are checked against the form wxdomain makes
before Redis is touched.

A platform WeChat cannot serve now is paused for the whole fleet, with a kind
that says what ends it: a new ticket ends only no_ticket and ticket_refused;
minute_limit ends at the next minute, daily_quota at 00:00 China time, the
others after WXDOMAIN_OPERATOR_PAUSE; 'wxdomain platforms resume APPID' ends
any of them at once.

'wxdomain serve' requires WXDOMAIN_API_TOKENS, refuses cross-site
state-changing browser requests, refuses WeChat pushes older than
WXDOMAIN_PUSH_MAX_SKEW and tickets older than the stored one, and cuts off
slow requests. See the README for every setting.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(flagError)
	pf := root.PersistentFlags()
	pf.StringVar(&a.redisURL, "redis-url", "", "Redis URL (overrides WXDOMAIN_REDIS_URL)")
	pf.StringVar(&a.platformsFile, "platforms-file", "", "platforms YAML file (overrides WXDOMAIN_PLATFORMS_FILE)")
	pf.StringVar(&a.logLevel, "log-level", "", "debug, info, warn or error (overrides WXDOMAIN_LOG_LEVEL)")
	pf.StringVar(&a.logFormat, "log-format", "", "json or console (overrides WXDOMAIN_LOG_FORMAT)")
	root.AddCommand(
		a.workerCommand(),
		a.ticketCommand(),
		a.enqueueCommand(),
		a.statusCommand(),
		a.cancelCommand(),
		a.platformsCommand(),
		a.doctorCommand(),
		a.serveCommand(),
		a.rolloutCommand(),
		a.confirmFileCommand(),
		a.domainsCommand(),
		a.fakeWeChatCommand(),
		a.devCommand(),
	)
	usageArgs(root)
	return root
}

// config reads the environment, then applies the global flags; an error
// names what the user set: the flag as typed, or the variable.
func (a *app) config() (config.Config, error) {
	return config.FromSources(a.getenv, map[string]config.Flag{
		"WXDOMAIN_REDIS_URL":      {Name: "--redis-url", Value: a.redisURL},
		"WXDOMAIN_PLATFORMS_FILE": {Name: "--platforms-file", Value: a.platformsFile},
		"WXDOMAIN_LOG_LEVEL":      {Name: "--log-level", Value: a.logLevel},
		"WXDOMAIN_LOG_FORMAT":     {Name: "--log-format", Value: a.logFormat},
	})
}

// newMetrics registers wxdomain's metrics and the queue collector.
func (a *app) newMetrics(rdb redis.UniversalClient) (*prometheus.Registry, *metrics.Metrics) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	reg.MustRegister(metrics.NewQueueCollector(asynq.NewInspectorFromRedisClient(rdb)))
	a.ha.SetMetrics(m)
	return reg, m
}

// durability is what acknowledged writes wait for (WXDOMAIN_REDIS_MIN_REPLICAS).
func (a *app) durability(cfg config.Config) tasks.Durability {
	return tasks.Durability{MinReplicas: cfg.MinReplicas(), Timeout: cfg.RedisWaitTimeout, OnUnconfirmed: a.ha.Unconfirmed}
}

// watchPrimary logs a change of the Redis primary (a failover), once per
// change, until ctx ends.
func (a *app) watchPrimary(ctx context.Context, rdb redis.UniversalClient, log *zap.Logger) {
	go a.ha.Run(ctx, rdb, time.Second, log.Named("redis"))
}

// redisLog sends go-redis's own lines (a Sentinel switching, a dial
// retried) to the process's log at debug, structured; a CLI command keeps
// them off its stderr (quietRedis), which is the command's own answer.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// start makes the logger and the Redis connection of a long-running
// command; done releases them.
func (a *app) start(ctx context.Context, cfg config.Config) (*zap.Logger, redis.UniversalClient, func(), error) {
	log, err := a.logger(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	redis.SetLogger(redisLog{log: log.Named("go-redis")})
	rdb, err := openRedisWaiting(ctx, cfg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	return log, rdb, func() {
		_ = rdb.Close()
		_ = log.Sync()
	}, nil
}

// revealTokens returns the API tokens' values, for the handlers that compare them.
func revealTokens(cfg config.Config) []string {
	tokens := make([]string, len(cfg.APITokens))
	for i, t := range cfg.APITokens {
		tokens[i] = t.Reveal()
	}
	return tokens
}

// configAndPlatforms reads the settings and the platforms file.
func (a *app) configAndPlatforms() (config.Config, *config.Platforms, error) {
	cfg, err := a.config()
	if err != nil {
		return cfg, nil, err
	}
	platforms, err := config.LoadPlatformsFrom(cfg.PlatformsFile, cfg.PlatformsFileFrom)
	return cfg, platforms, err
}

func (a *app) logger(cfg config.Config) (*zap.Logger, error) {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.EncodeDuration = zapcore.StringDurationEncoder
	var encoder zapcore.Encoder
	if cfg.LogFormat == "console" {
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	} else {
		encoder = zapcore.NewJSONEncoder(enc)
	}
	core := zapcore.NewCore(encoder, zapcore.AddSync(a.stderr), cfg.LogLevel)
	return zap.New(core), nil
}

// openRedis connects a short command and checks Redis answers, within
// about a second: a command that cannot reach Redis says so at once, in
// one line that names the URL (password masked) and where it came from.
func openRedis(ctx context.Context, cfg config.Config) (redis.UniversalClient, error) {
	rdb, err := config.OpenRedis(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	// A Sentinel URL expects failovers: a primary being switched does not
	// answer for a few seconds, and a command then waits as it used to.
	patience := quickPing
	if config.IsSentinelURL(cfg.RedisURL) {
		patience = 10 * time.Second
	}
	deadline := time.Now().Add(patience)
	for {
		pctx, cancel := context.WithTimeout(ctx, min(2*time.Second, patience))
		err = rdb.Ping(pctx).Err()
		cancel()
		if err == nil {
			return rdb, nil
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			_ = rdb.Close()
			return nil, redisDown(cfg, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// quickPing bounds a short command's check that Redis answers.
const quickPing = time.Second

// redisDown says a Redis does not answer, and what to change.
func redisDown(cfg config.Config, err error) error {
	why := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		why = fmt.Sprintf("no answer within %s", quickPing)
		// go-redis retries its dials until the deadline: one plain dial
		// says why (connection refused, no such host).
		if o, perr := redis.ParseURL(cfg.RedisURL); perr == nil {
			if conn, derr := net.DialTimeout("tcp", o.Addr, 500*time.Millisecond); derr != nil {
				why = derr.Error()
			} else {
				_ = conn.Close()
			}
		}
	}
	return fmt.Errorf("redis at %s does not answer (%s); set WXDOMAIN_REDIS_URL or --redis-url (`make run` prints the URL of its in-process Redis, new at every start)", config.RedactURL(cfg.RedisURL), why)
}

// openRedisWaiting connects a long-running command (worker, serve): it
// waits for Redis as long as ctx lasts, a docker compose Redis starting
// late, say, logging one line per failed try.
func openRedisWaiting(ctx context.Context, cfg config.Config, log *zap.Logger) (redis.UniversalClient, error) {
	rdb, err := config.OpenRedis(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	delay := 500 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = rdb.Ping(pctx).Err()
		cancel()
		if err == nil {
			return rdb, nil
		}
		if ctx.Err() != nil {
			_ = rdb.Close()
			return nil, ctx.Err() // stopped while waiting: an interruption
		}
		log.Warn("redis does not answer; trying again", zap.String("redis_url", config.RedactURL(cfg.RedisURL)), zap.String("error", err.Error()), zap.Duration("retry_in", delay))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = rdb.Close()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// producer is what the enqueueing commands need.
type producer struct {
	rdb    redis.UniversalClient
	client *tasks.Client
	cfg    tasks.ClientConfig
}

// retrying is a client of the producer's that retries submissions Redis
// did not confirm, for d.
func (p *producer) retrying(d time.Duration, onRetry func(error, time.Duration)) *tasks.Client {
	c := p.cfg
	c.Retry, c.OnRetry = d, onRetry
	return tasks.NewClient(p.rdb, c)
}

func (p *producer) Close() {
	_ = p.client.Close()
	_ = p.rdb.Close()
}

// producer connects a tasks client. check, when given, runs before Redis
// is contacted, so that a bad change is refused even with Redis down.
func (a *app) producer(ctx context.Context, needPlatforms bool, check func(tasks.Rules) error) (*producer, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	rules := tasks.Rules{MaxDomains: cfg.MaxDomains}
	if needPlatforms {
		platforms, err := config.LoadPlatformsFrom(cfg.PlatformsFile, cfg.PlatformsFileFrom)
		if err != nil {
			return nil, err
		}
		rules.KnownPlatform = platforms.Has
	}
	if check != nil {
		if err := check(rules); err != nil {
			return nil, err
		}
	}
	rdb, err := openRedis(ctx, cfg)
	if err != nil {
		return nil, err
	}
	ccfg := tasks.ClientConfig{
		Prefix: cfg.KeyPrefix, Queue: cfg.Queue, ResultTTL: cfg.ResultTTL, Rules: rules, Durability: a.durability(cfg),
	}
	return &producer{rdb: rdb, client: tasks.NewClient(rdb, ccfg), cfg: ccfg}, nil
}

// platformProducer connects a tasks client for a command about one
// platform, once its appid is known to be of the platforms file.
func (a *app) platformProducer(ctx context.Context, appid string) (*producer, error) {
	return a.producer(ctx, true, func(r tasks.Rules) error {
		if pr, ok := tasks.CheckPlatform(appid, r); !ok {
			return fmt.Errorf("platform %q %s", tasks.Truncate(appid), pr.Reason)
		}
		return nil
	})
}

// fleet is the worker's wiring from configuration: what `worker` and `dev` share.
type fleet struct {
	rdb       redis.UniversalClient
	handler   *worker.Handler
	tokens    *token.Source
	tickets   *ticket.Store
	pauses    *pause.Store
	limiter   *limit.Limiter
	rollouts  *rollout.Service
	preflight *preflight.Preflight
	up        *upstream
	log       *zap.Logger
}

// upstream is what calls WeChat on a platform's behalf: the client, the
// fleet's shared tokens and its rate limiter.
type upstream struct {
	wc      *wechat.Client
	tokens  *token.Source
	tickets *ticket.Store
	limiter *limit.Limiter
	policy  worker.Policy
}

func newUpstream(rdb redis.UniversalClient, cfg config.Config, platforms *config.Platforms, m *metrics.Metrics, log *zap.Logger) (*upstream, error) {
	wc, err := wechat.New(cfg.WeChatBaseURL, &http.Client{Timeout: cfg.HTTPTimeout})
	if err != nil {
		return nil, fmt.Errorf("WXDOMAIN_WECHAT_BASE_URL: %w", err)
	}
	secret := func(appid string) (string, bool) {
		p, ok := platforms.Get(appid)
		return p.Secret.Reveal(), ok && p.Secret != ""
	}
	tickets := ticket.NewStore(rdb, cfg.KeyPrefix)
	policy := worker.DefaultPolicy()
	policy.RetryCodes, policy.TokenCodes, policy.MinuteCodes, policy.DayCodes = cfg.RetryCodes, cfg.TokenCodes, cfg.MinuteCodes, cfg.DayCodes
	tokens := token.NewSource(rdb, wc, tickets, token.SourceConfig{
		Prefix: cfg.KeyPrefix, Margin: cfg.TokenMargin, Secret: secret, Observe: m.TokenFetch, RetryCodes: policy.TokenAPIRetryCodes,
		// The lock outlives the slowest fetch, so no second process fetches
		// while the first is still waiting for WeChat.
		Lease: 2*cfg.HTTPTimeout + 5*time.Second,
	}, log.Named("token"))
	limiter := limit.New(rdb, cfg.KeyPrefix, limit.Rate{PerSecond: cfg.GlobalRate, Burst: cfg.GlobalBurst}, limit.Pacing{
		Decrease: cfg.BusyDecrease, Increase: cfg.BusyIncrease, MinFactor: cfg.BusyMinFactor,
	})
	return &upstream{wc: wc, tokens: tokens, tickets: tickets, limiter: limiter, policy: policy}, nil
}

// newPreflight is a process's verification-file preflight: its files come
// through the fleet's tokens and rate limits, and its checks (at most 8
// at once in the process) are shared fleet-wide through Redis.
func newPreflight(rdb redis.UniversalClient, cfg config.Config, platforms *config.Platforms, up *upstream, m *metrics.Metrics) *preflight.Preflight {
	fetch := worker.ConfirmFileFetcher(up.tokens, up.wc, up.limiter, platformRates(cfg, platforms), up.policy, max(cfg.LimitMaxWait, time.Second))
	return &preflight.Preflight{
		Files:   preflight.NewFiles(rdb, cfg.KeyPrefix, fetch),
		Checker: preflight.NewChecker(rdb, cfg.KeyPrefix, preflight.Config{Observe: m.PreflightCheck}),
	}
}

func newFleet(rdb redis.UniversalClient, cfg config.Config, dur tasks.Durability, platforms *config.Platforms, m *metrics.Metrics, log *zap.Logger) (*fleet, error) {
	up, err := newUpstream(rdb, cfg, platforms, m, log)
	if err != nil {
		return nil, err
	}
	pf := newPreflight(rdb, cfg, platforms, up, m)
	pauses := pause.NewStore(rdb, cfg.KeyPrefix)
	store := tasks.NewStore(rdb, cfg.KeyPrefix, cfg.ResultTTL).WithDurability(dur)
	store.OnFinish(func(r *tasks.Record) { m.ChangeFinished(string(r.Status)) })
	h := worker.NewHandler(store, up.tokens, up.wc, pauses, up.limiter, worker.Config{
		RetryBase: cfg.RetryBase, RetryMax: cfg.RetryMax, MaxAttempts: cfg.MaxAttempts, OperatorPause: cfg.OperatorPause,
		Policy: up.policy,
		Rate:   platformRates(cfg, platforms), MaxWait: cfg.LimitMaxWait, MaxDefer: cfg.MaxDefer,
		// Deferred tasks come back once the queue's poller sees them due.
		Lead:             cfg.PollInterval + 100*time.Millisecond,
		Metrics:          m,
		MaxDomains:       cfg.MaxDomains,
		BulkQueue:        cfg.BulkQueue,
		Concurrency:      cfg.Concurrency,
		Preflight:        pf,
		PreflightDefault: cfg.Preflight,
	}, log)
	svc, _ := rolloutService(rdb, cfg, dur, platforms, pf, up)
	return &fleet{rdb: rdb, handler: h, tokens: up.tokens, tickets: up.tickets, pauses: pauses, limiter: up.limiter, rollouts: svc, preflight: pf, up: up, log: log}, nil
}

// listsOf reads a platform's current lists with a get call, through the
// fleet's token and rate limits (an ensure dry run); nil without upstream.
func listsOf(cfg config.Config, platforms *config.Platforms, up *upstream) rollout.ListsFunc {
	if up == nil {
		return nil
	}
	return worker.ListsOf(worker.ListsFetcher(up.tokens, up.wc, up.limiter, platformRates(cfg, platforms), up.policy, max(cfg.LimitMaxWait, time.Second)))
}

// preflighter is pf as the rollout service takes it: nil when there is
// none (not a nil pointer in an interface).
func preflighter(pf *preflight.Preflight) rollout.Preflighter {
	if pf == nil {
		return nil
	}
	return pf
}

// preflightConn is what a command checking domains needs.
type preflightConn struct {
	cfg       config.Config
	platforms *config.Platforms
	rdb       redis.UniversalClient
	preflight *preflight.Preflight
}

func (c *preflightConn) Close() { _ = c.rdb.Close() }

// preflight connects a command to Redis and to WeChat for verification
// files: through the fleet's shared token (a secret the command cannot
// resolve only matters when no worker fetched the token yet).
func (a *app) preflight(ctx context.Context) (*preflightConn, error) {
	cfg, platforms, err := a.configAndPlatforms()
	if err != nil {
		return nil, err
	}
	_ = platforms.ResolveSecrets(a.getenv)
	rdb, err := openRedis(ctx, cfg)
	if err != nil {
		return nil, err
	}
	log := zap.NewNop()
	up, err := newUpstream(rdb, cfg, platforms, nil, log)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	return &preflightConn{cfg: cfg, platforms: platforms, rdb: rdb, preflight: newPreflight(rdb, cfg, platforms, up, nil)}, nil
}

// rolloutService returns the rollout service and the tasks client under it.
// up, when set, lets an ensure dry run read each platform's lists.
func rolloutService(rdb redis.UniversalClient, cfg config.Config, dur tasks.Durability, platforms *config.Platforms, pf *preflight.Preflight, up *upstream) (*rollout.Service, *tasks.Client) {
	rules := tasks.Rules{MaxDomains: cfg.MaxDomains, KnownPlatform: platforms.Has}
	client := tasks.NewClient(rdb, tasks.ClientConfig{Prefix: cfg.KeyPrefix, Queue: cfg.Queue, ResultTTL: cfg.ResultTTL, Rules: rules, Durability: dur})
	all := make([]string, len(platforms.List))
	for i, p := range platforms.List {
		all[i] = p.AppID
	}
	return rollout.New(rdb, client, rollout.Config{
		Prefix: cfg.KeyPrefix, Queue: cfg.Queue, BulkQueue: cfg.BulkQueue, Platforms: all, Rules: rules, TTL: cfg.RolloutTTL, BatchSize: cfg.FanoutBatch,
		Durability: dur, Preflight: preflighter(pf), PreflightDefault: cfg.Preflight, Lists: listsOf(cfg, platforms, up),
	}), client
}

// platformRates resolves each platform's rate: its own, or the defaults.
func platformRates(cfg config.Config, platforms *config.Platforms) func(string) limit.Rate {
	return func(appid string) limit.Rate {
		p, _ := platforms.Get(appid)
		r := limit.Rate{PerSecond: p.Rate, Burst: p.Burst}
		if r.PerSecond == 0 {
			r.PerSecond = cfg.DefaultRate
		}
		if r.Burst == 0 {
			r.Burst = cfg.DefaultBurst
		}
		return r
	}
}

func serverConfig(cfg config.Config) worker.ServerConfig {
	return worker.ServerConfig{
		Concurrency:     cfg.Concurrency,
		Waiting:         cfg.Waiting,
		Queues:          map[string]int{cfg.Queue: 2, cfg.BulkQueue: 1},
		ShutdownTimeout: cfg.ShutdownTimeout,
		PollInterval:    cfg.PollInterval,
	}
}

// run processes changes until ctx ends; tokens and pauses are kept in
// memory while the fleet's changes to them are followed.
func (f *fleet) run(ctx context.Context, sc worker.ServerConfig) error {
	sc.Handlers = map[string]asynq.Handler{rollout.TypeFanout: f.rollouts}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var watched sync.WaitGroup
	watched.Go(func() { f.tokens.Watch(wctx) })
	watched.Go(func() { f.pauses.Watch(wctx) })
	err := worker.Run(ctx, f.rdb, sc, f.handler, f.log)
	cancel()
	watched.Wait()
	f.tokens.Drain()
	return err
}

func (a *app) workerCommand() *cobra.Command {
	var concurrency int
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker: take changes from the queue and apply them on WeChat",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, platforms, err := a.configAndPlatforms()
			if err != nil {
				return err
			}
			if concurrency > 0 {
				cfg.Concurrency = concurrency
			}
			if err := platforms.ResolveSecrets(a.getenv); err != nil {
				return err
			}
			log, rdb, done, err := a.start(ctx, cfg)
			if err != nil {
				return err
			}
			defer done()
			reg, m := a.newMetrics(rdb)
			a.watchPrimary(ctx, rdb, log)
			if cfg.MetricsAddr != "" {
				tokens := revealTokens(cfg)
				if len(tokens) == 0 && !cfg.MetricsPublic {
					return errors.New("WXDOMAIN_METRICS_ADDR is set but neither WXDOMAIN_API_TOKENS nor WXDOMAIN_METRICS_PUBLIC=true: nobody could read the metrics")
				}
				ln, err := net.Listen("tcp", cfg.MetricsAddr)
				if err != nil {
					return fmt.Errorf("WXDOMAIN_METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
				}
				mux := http.NewServeMux()
				mux.Handle("GET /metrics", httpapi.MetricsHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), cfg.MetricsPublic, tokens))
				go func() { _ = serve(ctx, ln, mux, cfg) }()
				log.Info("metrics listening", zap.String("addr", ln.Addr().String()))
			}
			f, err := newFleet(rdb, cfg, a.durability(cfg), platforms, m, log)
			if err != nil {
				return err
			}
			log.Info("configuration",
				zap.String("redis_url", config.RedactURL(cfg.RedisURL)),
				zap.String("wechat_base_url", cfg.WeChatBaseURL),
				zap.Int("platforms", len(platforms.List)),
				zap.String("queue", cfg.Queue))
			return f.run(ctx, serverConfig(cfg))
		},
	}
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "tasks run at once (overrides WXDOMAIN_CONCURRENCY, default 20)")
	return cmd
}

func (a *app) ticketCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ticket", Short: "Manage platforms' component_verify_tickets"}
	var created string
	set := &cobra.Command{
		Use:   "set APPID TICKET|- [--time CREATE_TIME]",
		Short: "Store a platform's component_verify_ticket (- reads it from standard input, out of sight of ps and shell history)",
		Long: `Stores a platform's component_verify_ticket for the whole fleet.

With --time (WeChat's CreateTime of the ticket, Unix seconds or RFC 3339), a
ticket created no later than the stored one changes nothing, as for WeChat's
pushes. Without it the ticket replaces whatever is stored.

A new ticket ends a pause that a ticket cures (no ticket stored, 61005,
61006) and runs the platform's waiting changes at once. Other pauses (daily
quota, per-minute limit, IP not whitelisted, wrong secret) stay until their
time or 'wxdomain platforms resume APPID'.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			appid, value := args[0], args[1]
			if value == "-" {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
				if err != nil {
					return fmt.Errorf("read the ticket from standard input: %w", err)
				}
				value = string(b)
			}
			value = strings.TrimSpace(value)
			var at time.Time
			if created != "" {
				var err error
				if at, err = parseTicketTime(created); err != nil {
					return fmt.Errorf("--time %q: %w", tasks.Truncate(created), err)
				}
			}
			p, err := a.platformProducer(cmd.Context(), appid)
			if err != nil {
				return err
			}
			defer p.Close()
			res, err := p.client.SetTicket(cmd.Context(), appid, value, at)
			if err != nil {
				return err
			}
			if !res.Stored {
				fmt.Fprintf(a.stdout, "kept the stored component_verify_ticket of %s: it was created at %s, no earlier than this one; nothing changed\n", appid, res.CreatedAt.Format(time.RFC3339))
				return nil
			}
			fmt.Fprintf(a.stdout, "stored the component_verify_ticket of %s\n", appid)
			if p := res.EndedPause; p != nil {
				fmt.Fprintf(a.stdout, "ended the platform's pause (%s); %d waiting changes run now\n", p.Kind, res.ResumedChanges)
			}
			if p := res.KeptPause; p != nil {
				fmt.Fprintf(a.stdout, "the platform stays paused (%s) until %s: a ticket does not cure it; end it sooner with `wxdomain platforms resume %s`\n", p.Kind, p.Until.Local().Format(time.DateTime), appid)
			}
			return nil
		},
	}
	set.Flags().StringVar(&created, "time", "", "WeChat's CreateTime of the ticket (Unix seconds or RFC 3339); an older ticket than the stored one changes nothing")
	cmd.AddCommand(set)
	return cmd
}

// parseTicketTime reads a ticket's creation time: Unix seconds or RFC 3339,
// not in the future (it would make every later push look old).
func parseTicketTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		sec, serr := strconv.ParseInt(s, 10, 64)
		if serr != nil || sec <= 0 {
			return time.Time{}, errors.New("want Unix seconds (WeChat's CreateTime) or an RFC 3339 time")
		}
		t = time.Unix(sec, 0)
	}
	if tasks.CheckTicketTime(t) != nil {
		return time.Time{}, errors.New("is in the future; give WeChat's CreateTime in seconds")
	}
	return t, nil
}
