package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// The demo platforms of `wxdomain dev`. Their secrets are sandbox-only.
var devPlatforms = []struct{ appid, secret string }{
	{"wxd0000000000000a1", "dev-secret-a1"},
	{"wxd0000000000000b2", "dev-secret-b2"},
}

func (a *app) devCommand() *cobra.Command {
	var redisAddr, upstreamAddr, apiAddr string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run everything in one process: in-process Redis, the sandbox upstream, a worker, and a sample change",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runDev(cmd.Context(), redisAddr, upstreamAddr, apiAddr)
		},
	}
	cmd.Flags().StringVar(&redisAddr, "redis-addr", "", "where the in-process Redis listens (default 127.0.0.1:6390, or a free port if that one is taken; port 0 picks a free one)")
	cmd.Flags().StringVar(&upstreamAddr, "upstream-addr", "127.0.0.1:0", "where the sandbox upstream listens")
	cmd.Flags().StringVar(&apiAddr, "api-addr", "127.0.0.1:8080", "where the HTTP API listens")
	return cmd
}

// devRedisAddr is the in-process Redis's usual address: the same at every
// start, so that exports copied from an earlier run still reach it.
const devRedisAddr = "127.0.0.1:6390"

func (a *app) runDev(ctx context.Context, redisAddr, upstreamAddr, apiAddr string) error {
	// The API's address first: a second dev stops here, before anything
	// else starts (and prints).
	apiLn, err := net.Listen("tcp", apiAddr)
	if err != nil {
		return fmt.Errorf("--api-addr %s: %w (another wxdomain dev running? stop it, or pick another address with --api-addr)", apiAddr, err)
	}
	defer apiLn.Close()
	mr := miniredis.NewMiniRedis()
	switch {
	case redisAddr != "":
		if err := mr.StartAddr(redisAddr); err != nil {
			return fmt.Errorf("--redis-addr %s: %w", redisAddr, err)
		}
	case mr.StartAddr(devRedisAddr) != nil:
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("in-process Redis: %w", err)
		}
		fmt.Fprintf(a.stderr, "wxdomain dev: %s is taken; the in-process Redis listens on %s (new exports below)\n", devRedisAddr, mr.Addr())
	}
	defer mr.Close()

	sb := wechattest.New(wechattest.Config{Strict: true})
	for _, p := range devPlatforms {
		sb.PutPlatform(wechattest.Platform{AppID: p.appid, Secret: p.secret, Released: true})
	}
	ln, err := net.Listen("tcp", upstreamAddr)
	if err != nil {
		return fmt.Errorf("--upstream-addr %s: %w", upstreamAddr, err)
	}
	upstreamURL := "http://" + ln.Addr().String()
	srvErr := make(chan error, 1)
	sctx, stopServer := context.WithCancel(ctx)
	defer stopServer()
	go func() { srvErr <- serve(sctx, ln, sb.Handler(), config.Default()) }()

	dir, err := os.MkdirTemp("", "wxdomain-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	platformsFile := filepath.Join(dir, "platforms.yaml")
	yaml := "# written by `wxdomain dev`; sandbox-only secrets\nplatforms:\n"
	for _, p := range devPlatforms {
		yaml += fmt.Sprintf("  - appid: %s\n    secret: %q\n    rate: 5\n", p.appid, p.secret)
	}
	if err := os.WriteFile(platformsFile, []byte(yaml), 0o600); err != nil {
		return err
	}

	redisURL := "redis://" + mr.Addr() + "/0"
	cfg, err := a.config()
	if err != nil {
		return err
	}
	cfg.RedisURL, cfg.WeChatBaseURL, cfg.PlatformsFile = redisURL, upstreamURL, platformsFile
	cfg.RetryBase, cfg.RetryMax = 200*time.Millisecond, 5*time.Second
	platforms, err := config.LoadPlatforms(platformsFile)
	if err != nil {
		return err
	}
	log, err := a.logger(cfg)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	reg, m := a.newMetrics(rdb)
	f, err := newFleet(rdb, cfg, a.durability(cfg), platforms, m, log)
	if err != nil {
		return err
	}
	for _, p := range devPlatforms {
		if err := f.tickets.Set(ctx, p.appid, "dev-ticket"); err != nil {
			return err
		}
	}
	wctx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	workerDone := make(chan error, 1)
	go func() {
		workerDone <- f.run(wctx, serverConfig(cfg))
	}()

	apiToken := oneTimeToken()
	handler, err := a.apiHandler(rdb, cfg, platforms, []string{apiToken}, reg, f.preflight, f.up, log)
	if err != nil {
		return err
	}
	apiErr := make(chan error, 1)
	go func() { apiErr <- serve(sctx, apiLn, handler, cfg) }()
	apiURL := "http://" + apiLn.Addr().String()

	client := tasks.NewClient(rdb, tasks.ClientConfig{
		Prefix: cfg.KeyPrefix, Queue: cfg.Queue, ResultTTL: cfg.ResultTTL, PollInterval: 100 * time.Millisecond,
		Rules: tasks.Rules{MaxDomains: cfg.MaxDomains, KnownPlatform: platforms.Has},
	})
	defer client.Close()
	sample := tasks.JumpDomainChange{Platform: devPlatforms[0].appid, Action: tasks.ActionAdd, Domains: []string{"www.example.com", "m.example.com"}}
	fmt.Fprintf(a.stdout, "wxdomain dev: sample change: add %v to %s\n", sample.Domains, sample.Platform)
	rec, err := client.Enqueue(ctx, sample, tasks.EnqueueOptions{})
	if err != nil {
		return err
	}
	wait, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	rec, err = client.Wait(wait, rec.TaskID)
	cancelWait()
	if err != nil {
		return fmt.Errorf("sample change did not finish: %w", err)
	}
	b, _ := json.MarshalIndent(rec, "", "  ")
	fmt.Fprintf(a.stdout, "%s\n\n", b)
	fmt.Fprintf(a.stdout, `wxdomain dev is running (Ctrl-C stops it).
  HTTP API:             %s   (token below)
  console:              %s/ui/   (platforms, domains, rollouts; any user name, the token as password)
  monitoring UI:        %s/monitoring/   (queues; same login)
  metrics:              %s/metrics   (with the token)
  Redis (in-process):   %s
  sandbox WeChat API:   %s   (admin API: %s/sandbox/)
  demo platforms:       %s, %s  (tickets stored)

Use the API or the CLI from another terminal:
  export WXDOMAIN_API=%s
  export WXDOMAIN_API_TOKEN=%s
  curl -s -H "Authorization: Bearer $WXDOMAIN_API_TOKEN" -d '{"platform":"%s","action":"add","domains":["shop.example.com"]}' $WXDOMAIN_API/v1/changes
  export WXDOMAIN_REDIS_URL=%s
  export WXDOMAIN_PLATFORMS_FILE=%s
  export WXDOMAIN_WECHAT_BASE_URL=%s
  go run ./cmd/wxdomain enqueue --platform %s --action get --wait

The sample's record warns in "preflight": example.com serves no verification
file (WXDOMAIN_PREFLIGHT=warn calls anyway; enforce would not). What a domain
must serve, and a check that changes nothing:
  go run ./cmd/wxdomain confirmfile --platform %s
  go run ./cmd/wxdomain domains check --platform %s --domains www.example.com
`, apiURL, apiURL, apiURL, apiURL, redisURL, upstreamURL, upstreamURL, devPlatforms[0].appid, devPlatforms[1].appid,
		apiURL, apiToken, devPlatforms[0].appid, redisURL, platformsFile, upstreamURL, devPlatforms[1].appid, devPlatforms[0].appid, devPlatforms[0].appid)

	select {
	case <-ctx.Done():
	case err := <-srvErr:
		return fmt.Errorf("sandbox upstream stopped: %w", err)
	case err := <-apiErr:
		return fmt.Errorf("HTTP API stopped: %w", err)
	case err := <-workerDone:
		return fmt.Errorf("worker stopped: %w", err)
	}
	stopWorker()
	if err := <-workerDone; err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, "wxdomain dev stopped")
	return nil
}
