package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/tasks"
)

// Preflighter checks a platform's domains for its verification file.
type Preflighter interface {
	Run(ctx context.Context, appid string, domains []string, fresh bool) (preflight.Report, error)
}

// ConfirmFileUpstream is the part of WeChat's API that hands out a
// platform's verification file.
type ConfirmFileUpstream interface {
	DomainConfirmFile(ctx context.Context, token string) (wechat.ConfirmFile, error)
}

// ConfirmFileFetcher asks WeChat for platforms' verification files with
// the fleet's shared tokens, each call on a slot of the platform's rate
// limit (limiter may be nil), a refused token dropped and the call made
// once more, as every call is.
func ConfirmFileFetcher(tokens Tokens, up ConfirmFileUpstream, limiter *limit.Limiter, rate func(string) limit.Rate, policy Policy, maxWait time.Duration) preflight.FetchFunc {
	fetch := fleetCall(tokens, limiter, rate, policy, maxWait, "get_domain_confirmfile", up.DomainConfirmFile)
	return func(ctx context.Context, appid string) (string, string, error) {
		f, err := fetch(ctx, appid)
		if err != nil {
			if d := policy.Classify(err); d.Kind == KindFail {
				// Refused for good (an errcode with no remedy, an
				// upstream without the API): remembered for a while.
				return "", "", &preflight.UnavailableError{Reason: d.Reason, Err: err}
			}
			return "", "", err
		}
		return f.Name, f.Content, nil
	}
}

// checked is what the preflight of a change found.
type checked struct {
	// reasons is the record's preflight field: each domain checked, "ok"
	// or what is wrong.
	reasons map[string]string
	// send, when not nil, are the domains to send (enforce mode).
	send []string
	// dropped are the domains not sent (enforce mode).
	dropped []string
}

// PreflightError: in enforce mode, no domain of the change serves its
// verification file (or a set would drop one); nothing was sent.
type PreflightError struct {
	Reasons map[string]string
	Reason  string
}

func (e *PreflightError) Error() string { return e.Reason }

// preflightMode is the change's mode, or the worker's default; a change
// with nothing to add is never checked (get, delete).
func (h *Handler) preflightMode(change tasks.JumpDomainChange) tasks.PreflightMode {
	if h.cfg.Preflight == nil || (change.Action != tasks.ActionAdd && change.Action != tasks.ActionSet) {
		return tasks.PreflightOff
	}
	return change.Preflight.Or(h.cfg.PreflightDefault)
}

// preflight checks the domains a change would add, as the mode says.
// set is true for a plain set, which replaces the list: a domain left out
// of it would be removed, so in enforce mode a failing domain fails the
// whole change rather than being left out. A nil result: nothing checked.
func (h *Handler) preflight(ctx context.Context, appid string, mode tasks.PreflightMode, domains []string, set bool) (*checked, error) {
	if mode == tasks.PreflightOff || len(domains) == 0 {
		return nil, nil
	}
	rep, err := h.cfg.Preflight.Run(ctx, appid, domains, false)
	if err != nil {
		if ctx.Err() != nil || preflight.IsStoreError(err) || mode == tasks.PreflightEnforce {
			return nil, err
		}
		// warn: the check is advice; a file WeChat would not hand out
		// does not hold the change up.
		reasons := make(map[string]string, len(domains))
		for _, d := range domains {
			reasons[d] = tasks.PreflightNotChecked + err.Error()
		}
		return &checked{reasons: reasons}, nil
	}
	c := &checked{reasons: rep.Reasons()}
	failed := rep.Failed()
	if mode != tasks.PreflightEnforce || len(failed) == 0 {
		return c, nil
	}
	names := make([]string, len(failed))
	for i, f := range failed {
		names[i] = f.Domain + " (" + f.Detail + ")"
	}
	switch {
	case len(failed) == len(domains):
		return nil, &PreflightError{Reasons: c.reasons, Reason: fmt.Sprintf("verification file missing on %s; nothing was sent to WeChat (preflight enforce): serve the file from `wxdomain confirmfile --platform %s` at each domain's root", joinBounded(names), appid)}
	case set:
		return nil, &PreflightError{Reasons: c.reasons, Reason: fmt.Sprintf("verification file missing on %s; a set without them would remove them if configured, so nothing was sent to WeChat (preflight enforce; an ensure set leaves them out instead)", joinBounded(names))}
	}
	c.send = rep.Passed()
	for _, f := range failed {
		c.dropped = append(c.dropped, f.Domain)
	}
	return c, nil
}

// joinBounded lists at most a few items, then how many more.
func joinBounded(items []string) string {
	const most = 5
	if len(items) <= most {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:most], ", "), len(items)-most)
}

// preflightChange runs the preflight of a plain (not ensure) add or set
// before the change takes a call slot. stop: the change ended here (it
// failed its preflight, or was handed back); err is then what to return.
func (h *Handler) preflightChange(ctx context.Context, id, queue string, change tasks.JumpDomainChange) (c *checked, stop bool, err error) {
	mode := h.preflightMode(change)
	if change.Ensure || mode == tasks.PreflightOff {
		return nil, false, nil
	}
	c, err = h.preflight(ctx, change.Platform, mode, change.Domains, change.Action == tasks.ActionSet)
	var pe *PreflightError
	switch {
	case err == nil:
		return c, false, nil
	case errors.As(err, &pe):
		return nil, true, h.failPreflight(ctx, id, queue, change, pe)
	case ctx.Err() != nil || preflight.IsStoreError(err):
		return nil, true, err // Redis trouble: asynq runs it again
	}
	// enforce, and the file could not be had: the change waits, as it
	// would for the call itself, and uses no attempt.
	d := h.cfg.Policy.Classify(err)
	rec := tasks.NewRecord(id, change, queue)
	var ue *preflight.UnavailableError
	switch {
	case errors.As(err, &ue):
		return nil, true, h.failPreflight(ctx, id, queue, change, &PreflightError{Reason: "preflight: could not get the platform's verification file: " + ue.Reason + "; nothing was sent to WeChat"})
	case d.Kind == KindFail:
		return nil, true, h.failPreflight(ctx, id, queue, change, &PreflightError{Reason: "preflight: could not get the platform's verification file: " + d.Reason + "; nothing was sent to WeChat"})
	case d.Kind == KindPause:
		return nil, true, h.pausePlatform(ctx, rec, d, false) // before begin: no attempt to take back
	}
	return nil, true, h.deferTask(ctx, id, queue, change, deferral{
		until: time.Now().Add(max(d.Wait, h.cfg.RetryBase)), reason: "preflight: could not get the platform's verification file: " + d.Reason,
	})
}

// failPreflight fails a change that did not pass its preflight, without
// a call, and gives back its call slots.
func (h *Handler) failPreflight(ctx context.Context, id, queue string, change tasks.JumpDomainChange, pe *PreflightError) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordWriteTimeout)
	defer cancel()
	if change.RolloutID != "" {
		// A change of a canceled or retried rollout stops rather than fails.
		if stop, err := h.rolloutStopped(wctx, id, queue, change); stop || err != nil {
			return err
		}
	}
	_, err := h.updateOrCreate(wctx, id, queue, change, func(r *tasks.Record) error {
		r.Status, r.Error = tasks.StatusFailed, pe.Reason
		if pe.Reasons != nil {
			r.Preflight = pe.Reasons
		}
		r.NextAttemptAt, r.ReservedSlot = nil, nil
		return nil
	})
	if err != nil && !errors.Is(err, tasks.ErrFinal) {
		return err
	}
	h.log.Debug("change failed its preflight", zap.String("task_id", id), zap.String("platform", change.Platform))
	return errors.Join(h.release(wctx, id, change.Platform), fmt.Errorf("%s: %w", pe.Reason, asynq.SkipRetry))
}

// toAdd lists the domains of an ensure-mode call that are not on the
// platform yet: those the preflight checks.
func toAdd(req wechat.JumpDomainChange, cur wechat.JumpDomains, publish bool) []string {
	var out []string
	for _, d := range req.Domains {
		if !slices.Contains(cur.Testing, d) || (publish && !slices.Contains(cur.Published, d)) {
			out = append(out, d)
		}
	}
	return out
}
