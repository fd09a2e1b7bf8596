package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

// rolloutsConn is a rollout service with its connections.
type rolloutsConn struct {
	svc   *rollout.Service
	close func()
}

func (a *app) rollouts(ctx context.Context) (*rolloutsConn, error) {
	cfg, platforms, err := a.configAndPlatforms()
	if err != nil {
		return nil, err
	}
	_ = platforms.ResolveSecrets(a.getenv) // a dry run's preflight may need a token
	rdb, err := openRedis(ctx, cfg)
	if err != nil {
		return nil, err
	}
	up, err := newUpstream(rdb, cfg, platforms, nil, zap.NewNop())
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	svc, client := rolloutService(rdb, cfg, a.durability(cfg), platforms, newPreflight(rdb, cfg, platforms, up, nil), up)
	return &rolloutsConn{svc: svc, close: func() {
		_ = svc.Close()
		_ = client.Close()
		_ = rdb.Close()
	}}, nil
}

func (a *app) rolloutCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{Use: "rollout", Short: "Apply one change across many platforms and follow it"}
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	print := func(r *rollout.Rollout) error {
		if asJSON {
			return a.printJSON(r)
		}
		printRollout(a.stdout, r)
		return nil
	}
	withRollouts := func(run func(ctx context.Context, c *rolloutsConn, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := a.rollouts(cmd.Context())
			if err != nil {
				return err
			}
			defer c.close()
			return run(cmd.Context(), c, args)
		}
	}

	var (
		spec            rollout.Spec
		action, domains string
		platforms       string
		preflightMode   string
		wait            bool
		timeout         time.Duration
	)
	create := &cobra.Command{
		Use:   "create --action add --domains a.com --platforms wx1,wx2|--all [--publish] [--ensure] [--dry-run] [--wait]",
		Short: "Create a rollout; it fans out in the background",
		Args:  cobra.NoArgs,
		RunE: withRollouts(func(ctx context.Context, c *rolloutsConn, _ []string) error {
			spec.Action = tasks.Action(action)
			spec.Preflight = tasks.PreflightMode(preflightMode)
			spec.Domains = splitList(domains)
			spec.Platforms = splitList(platforms)
			// Redis not confirming the creation, or not answering (a
			// failover), is tried again within --timeout under one key
			// (made up if none was given): never a second rollout.
			if spec.IdempotencyKey == "" && !spec.DryRun {
				spec.IdempotencyKey = "retry:" + newRandomKey()
			}
			r, err := createRetrying(ctx, c.svc, spec, timeout, func(err error, next time.Duration) {
				fmt.Fprintf(a.stderr, "wxdomain: %v; trying again in %s\n", err, next)
			})
			if err != nil {
				return describe(err)
			}
			if !wait || r.Mode == rollout.ModeDryRun {
				return print(r)
			}
			if !asJSON {
				// The id first: `rollout failures ID` needs it.
				fmt.Fprintf(a.stdout, "rollout %s created; following it (Ctrl-C stops following, not the rollout)\n", r.ID)
			}
			return a.watchRollout(ctx, c.svc, r.ID, asJSON, 0)
		}),
	}
	f := create.Flags()
	f.StringVar(&spec.Name, "name", "", "a name to recognise the rollout by")
	f.StringVar(&action, "action", "", "get, set, add or delete (required); get reads every platform's lists")
	f.StringVar(&domains, "domains", "", "comma-separated host names")
	f.StringVar(&platforms, "platforms", "", "comma-separated appids")
	f.BoolVar(&spec.All, "all", false, "every platform in the platforms file")
	f.BoolVar(&spec.Publish, "publish", false, "also change the published configuration")
	f.BoolVar(&spec.Ensure, "ensure", false, "read each platform's list first and call only for the difference")
	f.BoolVar(&spec.DryRun, "dry-run", false, "validate and show what would be called; call nothing")
	f.StringVar(&preflightMode, "preflight", "", "enforce, warn or off: check each domain's verification file first (default: the workers' WXDOMAIN_PREFLIGHT, warn)")
	f.BoolVar(&wait, "wait", false, "follow the rollout until it is done")
	f.StringVar(&spec.IdempotencyKey, "key", "", "idempotency key: the same key and rollout return the first rollout")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to keep trying while Redis does not confirm the creation (a failover)")
	_ = create.MarkFlagRequired("action")

	var (
		watch        bool
		watchTimeout time.Duration
	)
	status := &cobra.Command{
		Use:   "status ROLLOUT_ID [--watch [--timeout D]]",
		Short: "Show a rollout's progress; --watch follows it (a progress bar on a terminal)",
		Args:  cobra.ExactArgs(1),
		RunE: withRollouts(func(ctx context.Context, c *rolloutsConn, args []string) error {
			if watch {
				return a.watchRollout(ctx, c.svc, args[0], asJSON, watchTimeout)
			}
			r, err := c.svc.Get(ctx, args[0])
			if err != nil {
				return err
			}
			return print(r)
		}),
	}
	status.Flags().BoolVar(&watch, "watch", false, "follow until the rollout is done (exit 0: every platform succeeded, 3: some failed, were partial or canceled)")
	status.Flags().DurationVar(&watchTimeout, "timeout", 0, "with --watch: stop following after this long (exit 4); 0 follows to the end")

	list := &cobra.Command{
		Use: "list", Short: "Recent rollouts, newest first", Args: cobra.NoArgs,
		RunE: withRollouts(func(ctx context.Context, c *rolloutsConn, _ []string) error {
			rs, err := c.svc.List(ctx, 50)
			if err != nil {
				return err
			}
			if asJSON {
				return a.printJSON(rs)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ROLLOUT\tNAME\tACTION\tSTATUS\tDONE\tFAILED\tCREATED")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\n", r.ID, r.Name, r.Action, r.Status, finished(r), r.Total, r.Counts.Failed, r.CreatedAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		}),
	}
	cancel := &cobra.Command{
		Use: "cancel ROLLOUT_ID", Short: "Stop what has not run; running changes finish", Args: cobra.ExactArgs(1),
		RunE: withRollouts(func(ctx context.Context, c *rolloutsConn, args []string) error {
			before, err := c.svc.Get(ctx, args[0])
			if err != nil {
				return err
			}
			if before.Status == rollout.StatusCanceled || before.FinishedAt != nil {
				// Consistent with `cancel` of a finished change: nothing
				// was done, and the command says so.
				_ = print(before)
				return fmt.Errorf("rollout %s is already %s; nothing to cancel", before.ID, before.Status)
			}
			r, err := c.svc.Cancel(ctx, args[0])
			if err != nil {
				return err
			}
			if err := print(r); err != nil {
				return err
			}
			if !asJSON {
				fmt.Fprintf(a.stderr, "wxdomain: rollout %s canceled: %d platforms will not run; %d running finish\n", r.ID, r.Counts.Canceled-before.Counts.Canceled, r.Counts.Running)
			}
			return nil
		}),
	}
	retry := &cobra.Command{
		Use: "retry ROLLOUT_ID", Short: "Run the failed and canceled platforms again, as a new attempt", Args: cobra.ExactArgs(1),
		RunE: withRollouts(func(ctx context.Context, c *rolloutsConn, args []string) error {
			before, err := c.svc.Get(ctx, args[0])
			if err != nil {
				return err
			}
			r, err := c.svc.Retry(ctx, args[0])
			if err != nil {
				return err
			}
			if r.Attempt == before.Attempt && before.Status != rollout.StatusFanningOut {
				_ = print(r)
				return fmt.Errorf("rollout %s: nothing to retry (no platform failed or was canceled)", r.ID)
			}
			if err := print(r); err != nil {
				return err
			}
			if !asJSON {
				fmt.Fprintf(a.stderr, "wxdomain: rollout %s: attempt %d runs its failed and canceled platforms again\n", r.ID, r.Attempt)
			}
			return nil
		}),
	}
	var asCSV bool
	failures := &cobra.Command{
		Use: "failures ROLLOUT_ID [--csv]", Short: "The failed and canceled platforms (what retry runs again) with errcode and reason, and those whose domains failed their preflight", Args: cobra.ExactArgs(1),
		RunE: withRollouts(func(ctx context.Context, c *rolloutsConn, args []string) error {
			all, err := c.svc.Failures(ctx, args[0])
			if err != nil {
				return err
			}
			switch {
			case asJSON:
				return a.printJSON(all)
			case asCSV:
				return rollout.WriteFailuresCSV(a.stdout, all)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PLATFORM\tSTATUS\tERRCODE\tREASON\tPREFLIGHT")
			for _, o := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.Platform, o.Status, o.ErrCodeText(), o.Error, o.PreflightFindings())
			}
			return tw.Flush()
		}),
	}
	failures.Flags().BoolVar(&asCSV, "csv", false, "print CSV")
	failures.PreRunE = func(*cobra.Command, []string) error {
		if asCSV && asJSON {
			return usage("--csv and --json: choose one")
		}
		return nil
	}
	cmd.AddCommand(create, status, list, cancel, retry, failures)
	return cmd
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// createRetrying creates a rollout, trying again for d while Redis does
// not confirm it or does not answer; the spec's idempotency key makes
// every try the same rollout.
func createRetrying(ctx context.Context, svc *rollout.Service, spec rollout.Spec, d time.Duration, onRetry func(error, time.Duration)) (*rollout.Rollout, error) {
	deadline := time.Now().Add(d)
	delay := 100 * time.Millisecond
	for {
		r, err := svc.Create(ctx, spec)
		if err == nil || !tasks.Retryable(err) || time.Now().Add(delay).After(deadline) {
			return r, err
		}
		onRetry(err, delay)
		select {
		case <-ctx.Done():
			return nil, errors.Join(err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func newRandomKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

func finished(r *rollout.Rollout) int {
	c := r.Counts
	return c.Succeeded + c.Partial + c.Failed + c.Canceled
}

func printRollout(w io.Writer, r *rollout.Rollout) {
	name := ""
	if r.Name != "" {
		name = " (" + r.Name + ")"
	}
	fmt.Fprintf(w, "rollout %s%s: %s %s, %s, %s\n", r.ID, name, r.Action, strings.Join(r.Domains, ","), r.Mode, r.Status)
	if r.Mode == rollout.ModeDryRun {
		for _, c := range r.Plan {
			fmt.Fprintf(w, "  would call %s %s on %s\n", c.Action, strings.Join(c.Domains, ","), c.Platform)
		}
		if r.EnsurePlan != nil {
			for _, l := range r.EnsurePlan.Lines() {
				fmt.Fprintln(w, "  "+l)
			}
		}
		if r.PreflightPlan != nil {
			for _, l := range r.PreflightPlan.Lines() {
				fmt.Fprintln(w, "  "+l)
			}
		}
		return
	}
	fmt.Fprintln(w, "  "+countsLine(r))
	if r.Counts.PreflightFailed > 0 {
		fmt.Fprintf(w, "  preflight: %d platforms have a domain without its verification file (`wxdomain rollout failures %s` lists them)\n", r.Counts.PreflightFailed, r.ID)
	}
}

func countsLine(r *rollout.Rollout) string {
	c := r.Counts
	return fmt.Sprintf("%d/%d done: succeeded %d, partial %d, failed %d, canceled %d; queued %d, running %d, retrying %d",
		finished(r), r.Total, c.Succeeded, c.Partial, c.Failed, c.Canceled, c.Queued, c.Running, c.Retrying)
}

// watchRollout follows a rollout until it is done: a live bar on a
// terminal (fitted to its width), a line per change otherwise, JSON lines
// with --json. It ends with exitNotAllSucceeded when a platform failed,
// was partial or was canceled, and exitTimedOut when timeout (0: none)
// passes first.
func (a *app) watchRollout(ctx context.Context, svc *rollout.Service, id string, asJSON bool, timeout time.Duration) error {
	width, tty := terminalWidth(a.stdout)
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	last := ""
	for {
		r, err := svc.Get(ctx, id)
		if err != nil {
			return err
		}
		line := countsLine(r)
		switch {
		case asJSON && line != last:
			b, _ := json.Marshal(r)
			fmt.Fprintln(a.stdout, string(b))
		case tty && !asJSON:
			// \r and erase: one line, redrawn in place, never wider than
			// the terminal (a wrapped line leaves a new line per redraw).
			fmt.Fprintf(a.stdout, "\r\x1b[K%s", progressLine(r, width))
		case line != last:
			fmt.Fprintf(a.stdout, "%s %s\n", time.Now().Format(time.TimeOnly), line)
		}
		last = line
		if r.FinishedAt != nil {
			if tty && !asJSON {
				fmt.Fprintf(a.stdout, "\nrollout %s %s\n", r.ID, r.Status)
			}
			if c := r.Counts; c.Failed+c.Partial+c.Canceled > 0 {
				if !asJSON {
					fmt.Fprintf(a.stderr, "wxdomain: rollout %s: %d failed, %d partial, %d canceled; `wxdomain rollout failures %s` lists them\n", r.ID, c.Failed, c.Partial, c.Canceled, r.ID)
				}
				return &exitStatus{code: exitNotAllSucceeded}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), fmt.Errorf("still %s; follow with `wxdomain rollout status %s --watch`", r.Status, id))
		case <-deadline:
			if tty && !asJSON {
				fmt.Fprintln(a.stdout)
			}
			fmt.Fprintf(a.stderr, "wxdomain: rollout %s still %s after waiting %s; follow with `wxdomain rollout status %s --watch`\n", id, r.Status, timeout, id)
			return &exitStatus{code: exitTimedOut}
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// progressLine is a rollout's progress in at most width-1 columns: the
// bar shrinks first, then the counts take their short form.
func progressLine(r *rollout.Rollout, width int) string {
	if width <= 0 {
		width = 80
	}
	room := width - 1
	c := r.Counts
	for _, line := range []string{
		countsLine(r),
		fmt.Sprintf("%d/%d done: ok %d, partial %d, failed %d, canceled %d; queued %d, running %d, retrying %d",
			finished(r), r.Total, c.Succeeded, c.Partial, c.Failed, c.Canceled, c.Queued, c.Running, c.Retrying),
		fmt.Sprintf("%d/%d ok %d part %d fail %d canc %d", finished(r), r.Total, c.Succeeded, c.Partial, c.Failed, c.Canceled),
	} {
		if barWidth := room - len(line) - 3; barWidth >= 10 {
			return bar(finished(r), r.Total, min(barWidth, 30)) + " " + line
		}
	}
	line := fmt.Sprintf("%d/%d ok %d part %d fail %d canc %d", finished(r), r.Total, c.Succeeded, c.Partial, c.Failed, c.Canceled)
	if len(line) > room {
		line = line[:max(room, 0)]
	}
	return line
}

func bar(done, total, width int) string {
	n := 0
	if total > 0 {
		n = done * width / total
	}
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}
