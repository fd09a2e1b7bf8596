package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wxdomain/wxdomain/tasks"
)

func (a *app) printRecord(rec *tasks.Record) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rec)
}

// waitAndPrint waits up to timeout for the record to be final and prints
// it; the exit status says how it ended (exitNotAllSucceeded for a change
// that did not succeed). A timeout still prints the current record, says
// so on stderr, and ends with exitTimedOut.
func (a *app) waitAndPrint(ctx context.Context, c *tasks.Client, id string, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rec, err := c.Wait(wctx, id)
	if rec == nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		// The wait ended before even one read: the record still exists.
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		rec, err = c.Get(rctx, id)
		rcancel()
		if err == nil && !rec.Status.Final() {
			err = context.DeadlineExceeded
		}
	}
	switch {
	case rec != nil && err == nil:
		if perr := a.printRecord(rec); perr != nil {
			return perr
		}
		return statusCode(rec.Status)
	case rec != nil && errors.Is(err, context.DeadlineExceeded):
		if perr := a.printRecord(rec); perr != nil {
			return perr
		}
		fmt.Fprintf(a.stderr, "wxdomain: still %s after waiting %s; poll with `wxdomain status %s --wait`\n", rec.Status, timeout, id)
		return &exitStatus{code: exitTimedOut}
	}
	return err
}

func (a *app) enqueueCommand() *cobra.Command {
	var (
		change        tasks.JumpDomainChange
		action        string
		domains       string
		key           string
		preflightMode string
		wait          bool
		timeout       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "enqueue --platform APPID --action get|set|add|delete [--domains a.com,b.com] [--publish] [--key KEY] [--wait]",
		Short: "Submit a jump-domain change and print its task record as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			change.Action = tasks.Action(action)
			change.Preflight = tasks.PreflightMode(preflightMode)
			for _, d := range strings.Split(domains, ",") {
				if d = strings.TrimSpace(d); d != "" {
					change.Domains = append(change.Domains, d)
				}
			}
			p, err := a.producer(ctx, true, func(r tasks.Rules) error {
				return describe(change.ValidateWith(r))
			})
			if err != nil {
				return err
			}
			defer p.Close()
			// Redis not confirming the submission, or not answering (a
			// failover), is tried again within --timeout under one
			// idempotency key: never a second change.
			client := p.retrying(timeout, func(err error, next time.Duration) {
				fmt.Fprintf(a.stderr, "wxdomain: %v; trying again in %s\n", err, next)
			})
			defer client.Close()
			rec, err := client.Enqueue(ctx, change, tasks.EnqueueOptions{IdempotencyKey: key})
			if err != nil {
				return describe(err)
			}
			if !wait {
				return a.printRecord(rec)
			}
			return a.waitAndPrint(ctx, p.client, rec.TaskID, timeout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&change.Platform, "platform", "", "the platform's component appid (required)")
	f.StringVar(&action, "action", "", "get, set, add or delete (required)")
	f.StringVar(&domains, "domains", "", "comma-separated host names (required for set, add, delete)")
	f.BoolVar(&change.Publish, "publish", false, "also change the published configuration (is_modify_published_together)")
	f.StringVar(&key, "key", "", "idempotency key: the same key and change return the first task")
	f.StringVar(&preflightMode, "preflight", "", "enforce, warn or off: check each domain to add for the platform's verification file first (default: the workers' WXDOMAIN_PREFLIGHT, warn)")
	f.BoolVar(&wait, "wait", false, "wait for the final record")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to keep trying while Redis does not confirm the submission (a failover), and how long --wait waits")
	_ = cmd.MarkFlagRequired("platform")
	_ = cmd.MarkFlagRequired("action")
	return cmd
}

// describe spells out a validation error one problem per line.
func describe(err error) error {
	if err == nil {
		return nil
	}
	var ve *tasks.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	lines := make([]string, len(ve.Problems))
	for i, p := range ve.Problems {
		lines[i] = "  - " + p.String()
	}
	return usage("invalid change, nothing was enqueued:\n%s", strings.Join(lines, "\n"))
}

func (a *app) statusCommand() *cobra.Command {
	var (
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status TASK_ID",
		Short: "Print a change's task record as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, err := a.producer(ctx, false, nil)
			if err != nil {
				return err
			}
			defer p.Close()
			if wait {
				return a.waitAndPrint(ctx, p.client, args[0], timeout)
			}
			rec, err := p.client.Get(ctx, args[0])
			if err != nil {
				return err
			}
			return a.printRecord(rec)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the final record")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

func (a *app) cancelCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel TASK_ID",
		Short: "Cancel a change that has not finished and print its record",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, err := a.producer(ctx, false, nil)
			if err != nil {
				return err
			}
			defer p.Close()
			rec, err := p.client.Cancel(ctx, args[0])
			if errors.Is(err, tasks.ErrFinal) {
				_ = a.printRecord(rec)
				return fmt.Errorf("task %s already finished (%s); nothing to cancel", args[0], rec.Status)
			}
			if err != nil {
				return err
			}
			return a.printRecord(rec)
		},
	}
}
