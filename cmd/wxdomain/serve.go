package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/console"
	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/monitor"
	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/wxcrypt"
	"github.com/wxdomain/wxdomain/worker"
)

func (a *app) serveCommand() *cobra.Command {
	var (
		addr       string
		withWorker bool
	)
	cmd := &cobra.Command{
		Use:   "serve [--addr 127.0.0.1:8080] [--with-worker]",
		Short: "Serve the HTTP API (and, with --with-worker, process changes in the same process)",
		Long: `Serves the HTTP API under /v1 (OpenAPI at /v1/openapi.json), the monitoring UI
under /monitoring/, /metrics, and WeChat's ticket pushes at /wechat/events/{appid}.

Every /v1 route and the UI need one of WXDOMAIN_API_TOKENS (bearer token, or a
browser's basic-auth password). State-changing requests from another site's
pages are refused (403 cross_site_request). A push whose timestamp is more than
WXDOMAIN_PUSH_MAX_SKEW from now is refused; one whose ticket is not newer than
the stored one changes nothing. Slow requests are cut off
(WXDOMAIN_HTTP_READ_TIMEOUT), answers bounded (WXDOMAIN_HTTP_WRITE_TIMEOUT,
long polls end 5s before it), error answers never exceed 16 KiB.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, platforms, err := a.configAndPlatforms()
			if err != nil {
				return err
			}
			if addr != "" {
				cfg.HTTPAddr = addr
			}
			tokens, err := a.apiTokens(cfg)
			if err != nil {
				return err
			}
			if withWorker {
				if err := platforms.ResolveSecrets(a.getenv); err != nil {
					return err
				}
			} else {
				// The API asks WeChat for verification files with the
				// fleet's shared token; a secret it cannot resolve only
				// matters while no worker has fetched that token.
				_ = platforms.ResolveSecrets(a.getenv)
			}
			log, rdb, done, err := a.start(ctx, cfg)
			if err != nil {
				return err
			}
			defer done()
			ln, err := net.Listen("tcp", cfg.HTTPAddr)
			if err != nil {
				return fmt.Errorf("WXDOMAIN_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
			}
			fmt.Fprintf(a.stdout, "wxdomain API listening on http://%s (console: http://%s/ui/)\n", ln.Addr(), ln.Addr())

			reg, m := a.newMetrics(rdb)
			a.watchPrimary(ctx, rdb, log)
			var (
				f  *fleet
				pf *preflight.Preflight
				up *upstream
			)
			if withWorker {
				if f, err = newFleet(rdb, cfg, a.durability(cfg), platforms, m, log); err != nil {
					return err
				}
				pf, up = f.preflight, f.up
			} else {
				if up, err = newUpstream(rdb, cfg, platforms, m, log); err != nil {
					return err
				}
				pf = newPreflight(rdb, cfg, platforms, up, m)
			}
			handler, err := a.apiHandler(rdb, cfg, platforms, tokens, reg, pf, up, log)
			if err != nil {
				return err
			}
			errc := make(chan error, 2)
			sctx, stop := context.WithCancel(ctx)
			defer stop()
			go func() { errc <- serve(sctx, ln, handler, cfg) }()
			running := 1
			if f != nil {
				running++
				go func() { errc <- f.run(sctx, serverConfig(cfg)) }()
			}
			var first error
			for ; running > 0; running-- {
				if err := <-errc; err != nil && first == nil {
					first = err
				}
				stop() // one part ending stops the other
			}
			return first
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "", "address to listen on (overrides WXDOMAIN_HTTP_ADDR, default 127.0.0.1:8080)")
	cmd.Flags().BoolVar(&withWorker, "with-worker", false, "also run a worker in this process")
	return cmd
}

// apiTokens returns the API tokens. Without any, only a loopback address
// is allowed, with a one-time token printed for this process.
func (a *app) apiTokens(cfg config.Config) ([]string, error) {
	tokens := revealTokens(cfg)
	if len(tokens) > 0 {
		return tokens, nil
	}
	host, _, _ := net.SplitHostPort(cfg.HTTPAddr)
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("WXDOMAIN_API_TOKENS is not set: refusing to serve the API on the non-loopback address %s without authentication", cfg.HTTPAddr)
	}
	t := oneTimeToken()
	fmt.Fprintf(a.stderr, "wxdomain: WXDOMAIN_API_TOKENS is not set; this process accepts the one-time token %s\n", t)
	return []string{t}, nil
}

func oneTimeToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "wxd_" + hex.EncodeToString(b[:])
}

func (a *app) apiHandler(rdb redis.UniversalClient, cfg config.Config, platforms *config.Platforms, tokens []string, reg *prometheus.Registry, pf *preflight.Preflight, up *upstream, log *zap.Logger) (http.Handler, error) {
	events, err := eventCrypters(platforms)
	if err != nil {
		return nil, err
	}
	rollouts, client := rolloutService(rdb, cfg, a.durability(cfg), platforms, pf, up)
	var hpf httpapi.Preflight
	if pf != nil {
		hpf = pf
	}
	report := platformReporter(rdb, cfg, platforms)
	var factors func(context.Context, []string) (map[string]float64, error)
	if up != nil {
		factors = up.limiter.Factors
	}
	ui := console.New(console.Config{
		Factors: factors,
		Client:  client, Rollouts: rollouts, Platforms: report, Lists: client.Store().PlatformLists,
		KnownPlatform: platforms.Has, Meaning: worker.Meaning, MonitoringPath: "/monitoring", DefaultRate: cfg.DefaultRate, Queue: cfg.Queue, BulkQueue: cfg.BulkQueue,
		Log: log.Named("console"),
	})
	return httpapi.New(httpapi.Config{
		Console:         ui,
		Preflight:       hpf,
		MaxDomains:      cfg.MaxDomains,
		Client:          client,
		Rollouts:        rollouts,
		Platforms:       report,
		KnownPlatform:   platforms.Has,
		Events:          events,
		Monitoring:      monitor.New(rdb, "/monitoring"),
		Metrics:         promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		MetricsPublic:   cfg.MetricsPublic,
		Ready:           func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		Tokens:          tokens,
		TrustedOrigins:  cfg.TrustedOrigins,
		MaxBody:         int64(cfg.MaxBody),
		MaxWait:         cfg.LongPollMax(),
		PushMaxSkew:     cfg.PushMaxSkew,
		PushReadTimeout: min(httpapi.DefaultPushReadTimeout, cfg.HTTPReadTimeout),
		Log:             log.Named("api"),
	}), nil
}

// eventCrypters builds the crypters of the platforms that set a message
// token and key.
func eventCrypters(platforms *config.Platforms) (func(string) (*wxcrypt.Crypter, bool), error) {
	crypters := map[string]*wxcrypt.Crypter{}
	for _, p := range platforms.List {
		if p.Token == "" {
			continue
		}
		c, err := wxcrypt.New(p.Token.Reveal(), p.EncodingAESKey.Reveal(), p.AppID)
		if err != nil {
			return nil, fmt.Errorf("WXDOMAIN_PLATFORMS_FILE: platform %s: %w", p.AppID, err)
		}
		crypters[p.AppID] = c
	}
	return func(appid string) (*wxcrypt.Crypter, bool) {
		c, ok := crypters[appid]
		return c, ok
	}, nil
}
