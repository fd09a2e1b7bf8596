package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/wechattest"
)

func (a *app) fakeWeChatCommand() *cobra.Command {
	var (
		addr     string
		tokenTTL time.Duration
		strict   bool
		latency  time.Duration
		busy     float64
	)
	cmd := &cobra.Command{
		Use:   "fake-wechat [--addr 127.0.0.1:9090]",
		Short: "Run the stateful sandbox of WeChat's component API, for trying integrations without WeChat",
		Long: `Runs the sandbox upstream. Point workers at it with WXDOMAIN_WECHAT_BASE_URL.

Platforms from the platforms file (if set) are created released, with every
domain verified; their secrets are checked when the secret is resolvable.
Without --strict, any other appid is created on its first token request.
The admin API under /sandbox/ configures platforms, injects faults, revokes
tokens and lists calls; see the README.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb := wechattest.New(wechattest.Config{TokenTTL: tokenTTL, Strict: strict})
			if err := a.seedSandbox(sb); err != nil {
				return err
			}
			sb.SetLatency(latency)
			if busy > 0 {
				sb.SetDefaultFaults(wechattest.Faults{BusyRate: busy})
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("--addr %s: %w", addr, err)
			}
			fmt.Fprintf(a.stdout, "sandbox WeChat API listening on http://%s (admin API: http://%s/sandbox/)\n", ln.Addr(), ln.Addr())
			return serve(cmd.Context(), ln, sb.Handler(), config.Default())
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:9090", "address to listen on")
	f.DurationVar(&tokenTTL, "token-ttl", wechattest.DefaultTokenTTL, "lifetime of issued component tokens")
	f.BoolVar(&strict, "strict", false, "refuse appids that are not in the platforms file")
	f.DurationVar(&latency, "latency", 0, "latency added to every call")
	f.Float64Var(&busy, "busy-rate", 0, "probability (0 to 1) that a modify call answers -1 (system busy)")
	return cmd
}

// seedSandbox creates the platforms-file platforms in the sandbox.
func (a *app) seedSandbox(sb *wechattest.Sandbox) error {
	cfg, err := a.config()
	if err != nil || cfg.PlatformsFile == "" {
		return err
	}
	platforms, err := config.LoadPlatformsFrom(cfg.PlatformsFile, cfg.PlatformsFileFrom)
	if err != nil {
		return err
	}
	_ = platforms.ResolveSecrets(a.getenv) // unresolved secrets: any secret is accepted
	for _, p := range platforms.List {
		sb.PutPlatform(wechattest.Platform{AppID: p.AppID, Secret: p.Secret.Reveal(), Released: true})
	}
	return nil
}

// serve runs an HTTP server until ctx ends, then shuts it down gracefully.
// Its limits come from the settings: no connection is held by a slowly
// sent request, and no idle one is kept for long.
func serve(ctx context.Context, ln net.Listener, h http.Handler, cfg config.Config) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(10*time.Second, cfg.HTTPReadTimeout),
		ReadTimeout:       cfg.HTTPReadTimeout,
		WriteTimeout:      cfg.HTTPWriteTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    cfg.HTTPMaxHeaderBytes,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Long polls still open after the grace period: cut them.
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
