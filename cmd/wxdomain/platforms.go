package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"io"
	"os"
	"os/user"
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
	"github.com/wxdomain/wxdomain/tasks"
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
				// The shape GET /v1/platforms answers: {"platforms": [...]}.
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(platform.List{Platforms: report})
			}
			return printPlatforms(a.stdout, report, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print JSON instead of a table: {"platforms": [...]}, as GET /v1/platforms answers`)
	cmd.AddCommand(a.resumeCommand())
	return cmd
}

func (a *app) resumeCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "resume APPID [--json]",
		Short: "End a platform's pause now (any kind: quota, frequency, IP whitelist, secret, ticket) and run its waiting changes",
		Long: `Ends whatever pause the platform is in, for the whole fleet, and runs its
waiting changes at once. Use it once the cause is fixed: the server's IP is
whitelisted, the secret corrected, the quota cleared with clear_quota. A pause
you do not end yourself ends at its time (shown by 'wxdomain platforms'); a
new ticket ends only the pauses a ticket cures.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			appid := args[0]
			p, err := a.platformProducer(cmd.Context(), appid)
			if err != nil {
				return err
			}
			defer p.Close()
			res, err := p.client.Resume(cmd.Context(), appid)
			if err != nil {
				return err
			}
			a.auditResume(appid, res)
			if asJSON {
				return a.printJSON(struct {
					Platform string `json:"platform"`
					tasks.ResumeResult
				}{appid, res})
			}
			if res.EndedPause == nil {
				fmt.Fprintf(a.stdout, "platform %s was not paused; %d waiting changes run now\n", appid, res.ResumedChanges)
				return nil
			}
			fmt.Fprintf(a.stdout, "ended the pause of %s (%s, until %s: %s); %d waiting changes run now\n",
				appid, res.EndedPause.Kind, res.EndedPause.Until.Local().Format(time.DateTime), res.EndedPause.Reason, res.ResumedChanges)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// auditResume logs an operator's resume, once, with who asked.
func (a *app) auditResume(appid string, res tasks.ResumeResult) {
	cfg, err := a.config()
	if err != nil {
		return
	}
	log, err := a.logger(cfg)
	if err != nil {
		return
	}
	who := "cli"
	if u, err := user.Current(); err == nil {
		who += " user " + u.Username
	}
	if h, err := os.Hostname(); err == nil {
		who += " on " + h
	}
	fields := []zap.Field{zap.String("platform", appid), zap.String("requested_by", who), zap.Int("resumed_changes", res.ResumedChanges)}
	if p := res.EndedPause; p != nil {
		fields = append(fields, zap.String("pause_kind", string(p.Kind)), zap.Time("pause_until", p.Until), zap.String("pause_reason", p.Reason))
	}
	log.Info("platform resumed by an operator", fields...)
	_ = log.Sync()
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
		if p := s.Pause; p != nil {
			ends := "or on resume"
			if p.EndsWithTicket {
				ends = "or on a new ticket or resume"
			}
			cond = fmt.Sprintf("paused (%s) until %s %s: %s", p.Kind, p.Until.Local().Format(time.DateTime), ends, p.Reason)
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
