package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/token"
)

func (a *app) platformsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "platforms [--json]",
		Short: "List the configured platforms with their token, ticket and pause state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, platforms, err := a.configAndPlatforms()
			if err != nil {
				return err
			}
			rdb, err := openRedis(ctx, cfg)
			if err != nil {
				return err
			}
			defer rdb.Close()
			report, err := platformReporter(rdb, cfg, platforms)(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(report)
			}
			return printPlatforms(a.stdout, report, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func printPlatforms(w io.Writer, report []platform.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PLATFORM\tTOKEN\tFETCHED\tFETCHES TODAY\tTICKET\tCONDITION")
	for _, s := range report {
		tok, fetched := "none", "-"
		if !s.Token.FetchedAt.IsZero() {
			fetched = ago(now, s.Token.FetchedAt)
			tok = "expired " + ago(now, s.Token.ExpiresAt)
			if s.Token.Valid {
				tok = fmt.Sprintf("valid until %s (%s left)", s.Token.ExpiresAt.Local().Format("15:04:05"), strings.TrimSuffix(s.Token.ExpiresAt.Sub(now).Round(time.Minute).String(), "0s"))
			}
		}
		ticket := "none stored"
		if s.Ticket.Stored {
			ticket = "received " + ago(now, s.Ticket.ReceivedAt)
		}
		cond := "ok"
		if s.Pause != nil {
			cond = fmt.Sprintf("paused until %s: %s", s.Pause.Until.Local().Format("15:04:05"), s.Pause.Reason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", s.AppID, tok, fetched, s.Token.FetchesToday, ticket, cond)
	}
	return tw.Flush()
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		return "in " + (-d).String()
	}
	return d.String() + " ago"
}

// platformReporter reads the configured platforms' state: what `platforms`
// prints and GET /v1/platforms answers.
func platformReporter(rdb redis.UniversalClient, cfg config.Config, platforms *config.Platforms) func(context.Context) ([]platform.Status, error) {
	tickets := ticket.NewStore(rdb, cfg.KeyPrefix)
	src := platform.Sources{
		Tokens:  token.NewSource(rdb, nil, tickets, token.SourceConfig{Prefix: cfg.KeyPrefix}, zap.NewNop()),
		Tickets: tickets,
		Pauses:  pause.NewStore(rdb, cfg.KeyPrefix),
	}
	list := make([]platform.Configured, len(platforms.List))
	for i, p := range platforms.List {
		list[i] = platform.Configured{AppID: p.AppID, Rate: p.Rate}
	}
	return func(ctx context.Context) ([]platform.Status, error) {
		return platform.Report(ctx, src, list)
	}
}
