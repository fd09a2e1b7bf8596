// Package worker executes jump-domain changes: it takes tasks from asynq,
// calls WeChat, decides what each outcome means and records it.
package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/metrics"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/tasks"
)

// Upstream is the part of WeChat's API the worker calls.
type Upstream interface {
	ModifyJumpDomain(ctx context.Context, token string, ch wechat.JumpDomainChange) (wechat.JumpDomains, error)
}

// Tokens hands out component tokens and drops one that WeChat refused.
type Tokens interface {
	Token(ctx context.Context, appid string) (string, error)
	Invalidate(ctx context.Context, appid, failed string) error
}

// Config tunes retries.
type Config struct {
	RetryBase   time.Duration // first backoff ceiling; default 2s
	RetryMax    time.Duration // backoff ceiling; default 10m
	MaxAttempts int           // attempts before giving up; default 12
	Policy      Policy        // errcode classification; default DefaultPolicy()
	// OperatorPause is how long a platform that needs an operator waits
	// before its changes try again (an operator's resume ends it sooner, a
	// new ticket too when the ticket was the problem); default 10m.
	OperatorPause time.Duration
	// Rate returns a platform's call rate; nil means no limits.
	Rate func(appid string) limit.Rate
	// MaxWait is how long a task may wait in the handler for its call
	// slot; a longer wait hands it back to asynq. Default 1s.
	MaxWait time.Duration
	// MaxDefer bounds how long a change may be deferred in all (rate
	// limits and pauses use no attempts); default 48h.
	MaxDefer time.Duration
	// Lead: a task deferred to its reserved call slot comes back this long
	// before it, to absorb the queue's polling; default 300ms.
	Lead time.Duration
	// Metrics, if set, counts outcomes, calls, waits, deferrals and pauses.
	Metrics *metrics.Metrics
	// MaxDomains is the platform's domain limit ensure mode plans against;
	// default 200.
	MaxDomains int
	// BulkQueue is the queue of bulk work: under the global limit, it
	// never takes a slot a single change could have had.
	BulkQueue string
	// Preflight, when set, checks the domains a change would add for the
	// platform's verification file before WeChat is called; nil: off.
	Preflight Preflighter
	// PreflightDefault is the mode of changes that name none; default warn.
	PreflightDefault tasks.PreflightMode
	// Concurrency bounds the changes working at once (from their start
	// to their record), apart from those waiting for their call slot;
	// 0 for no bound (the asynq server's own).
	Concurrency int
}

// RetryError asks asynq to run the task again after Delay (read by
// RetryDelay). The handler picks the delay so that the record can show when
// the next attempt is due.
type RetryError struct {
	Delay time.Duration
	Err   error
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("retry in %s: %v", e.Delay.Round(time.Millisecond), e.Err)
}
func (e *RetryError) Unwrap() error { return e.Err }

// DeferError hands a task back to asynq to run at Until without counting a
// failed attempt (see IsFailure).
type DeferError struct {
	Until  time.Time
	Reason string
}

func (e *DeferError) Error() string {
	return fmt.Sprintf("deferred until %s: %s", e.Until.UTC().Format(time.RFC3339), e.Reason)
}

// IsFailure is asynq's Config.IsFailure: a deferral is not a failure, so it
// uses up none of the task's retries.
func IsFailure(err error) bool {
	var d *DeferError
	return !errors.As(err, &d)
}

// Handler processes tasks.TypeJumpDomain tasks. Running it twice for the
// same task is safe: a task whose record is final is not executed again.
type Handler struct {
	store    *tasks.Store
	tokens   Tokens
	upstream Upstream
	pauses   *pause.Store
	limiter  *limit.Limiter
	cfg      Config
	log      *zap.Logger
	// working holds a place per change working (Config.Concurrency).
	working *places
	// stopping is closed when the worker stops: changes that wait (for
	// their call slot, for a place of work) go back to the queue at once
	// instead of starting work that the shutdown would cut.
	stopping chan struct{}
	stopOnce sync.Once
}

// Stop tells the handler that the worker is stopping.
func (h *Handler) Stop() { h.stopOnce.Do(func() { close(h.stopping) }) }

// errStopping hands a waiting change back to the queue, at once and
// without an attempt, when the worker stops.
var errStopping = &DeferError{Reason: "the worker is stopping; another runs it"}

// NewHandler returns a handler. limiter may be nil (no rate limits).
func NewHandler(store *tasks.Store, tokens Tokens, upstream Upstream, pauses *pause.Store, limiter *limit.Limiter, cfg Config, log *zap.Logger) *Handler {
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 2 * time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 10 * time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 12
	}
	if cfg.Policy.RetryCodes == nil && cfg.Policy.TokenCodes == nil {
		cfg.Policy = DefaultPolicy()
	}
	if cfg.OperatorPause <= 0 {
		cfg.OperatorPause = 10 * time.Minute
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = time.Second
	}
	if cfg.MaxDefer <= 0 {
		cfg.MaxDefer = 48 * time.Hour
	}
	if cfg.MaxDomains <= 0 {
		cfg.MaxDomains = tasks.DefaultMaxDomains
	}
	if cfg.Lead <= 0 {
		cfg.Lead = 300 * time.Millisecond
	}
	if cfg.Rate == nil {
		cfg.Rate = func(string) limit.Rate { return limit.Rate{} }
	}
	if cfg.PreflightDefault == "" {
		cfg.PreflightDefault = tasks.PreflightWarn
	}
	h := &Handler{store: store, tokens: tokens, upstream: upstream, pauses: pauses, limiter: limiter, cfg: cfg, log: log, stopping: make(chan struct{})}
	if cfg.Concurrency > 0 {
		h.working = newPlaces(cfg.Concurrency)
	}
	return h
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	err := h.process(ctx, t)
	if errors.Is(err, tasks.ErrUnconfirmed) {
		// A final record Redis replicas did not confirm (a failover under
		// way): the task stays with asynq and runs again shortly, without
		// using a retry; it finds its record final if the write survived,
		// and confirms it then.
		return &DeferError{Until: time.Now().Add(unconfirmedRetry), Reason: err.Error()}
	}
	return err
}

// unconfirmedRetry is how soon a change whose final record was not
// confirmed runs again.
const unconfirmedRetry = 2 * time.Second

func (h *Handler) process(ctx context.Context, t *asynq.Task) error {
	id := t.ResultWriter().TaskID()
	if !tasks.ValidTaskID(id) {
		// The id would name the record's key: a task wxdomain did not
		// produce, with an id of its own making, is not run.
		h.log.Error("dropping a task whose id is not in wxdomain's form", zap.String("task_id", tasks.Truncate(id)))
		return fmt.Errorf("task id is not in wxdomain's form: %w", asynq.SkipRetry)
	}
	queue, _ := asynq.GetQueueName(ctx)
	change, queuedAt, err := tasks.ParseTask(t.Payload())
	if err == nil {
		// Producers validate, but a bare asynq producer may not: nothing
		// unchecked reaches a Redis key or WeChat.
		err = change.ValidateWith(tasks.Rules{MaxDomains: h.cfg.MaxDomains})
		if err == nil && change.RolloutID != "" && !tasks.ValidRolloutID(change.RolloutID) {
			err = fmt.Errorf("rollout_id %q is not a rollout id", tasks.Truncate(change.RolloutID))
		}
	}
	if err != nil {
		h.log.Error("dropping a malformed task", zap.String("task_id", id), zap.Error(err))
		bad := tasks.JumpDomainChange{Platform: change.Platform, Action: change.Action, RolloutID: change.RolloutID}
		if !tasks.ValidAppID(bad.Platform) {
			bad.Platform = ""
		}
		if !tasks.ValidRolloutID(bad.RolloutID) || bad.Platform == "" {
			bad.RolloutID = "" // only a well-formed rollout platform is moved to failed
		}
		_, rerr := h.updateOrCreate(ctx, id, queue, bad, func(r *tasks.Record) error {
			r.Status, r.Error = tasks.StatusFailed, "the task's payload is not a valid change: "+err.Error()
			return nil
		})
		if rerr != nil && !errors.Is(rerr, tasks.ErrFinal) {
			return rerr
		}
		return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}

	// A rollout change of a canceled or retried rollout is stopped as it
	// starts (begin), in the same step, or as it would wait.
	if paused, err := h.checkPause(ctx, id, queue, change); paused || err != nil {
		return err
	}
	// Before the change takes a call slot: one that cannot pass costs
	// nothing.
	pf, stop, err := h.preflightChange(ctx, id, queue, change)
	if stop {
		return err
	}
	bulk := change.RolloutID != "" || (h.cfg.BulkQueue != "" && queue == h.cfg.BulkQueue)
	waited, deferred, err := h.awaitSlot(ctx, id, queue, change, bulk)
	if deferred || err != nil {
		return err
	}
	slotAt := time.Now()
	if h.working != nil {
		blocked, err := h.working.take(ctx, h.stopping, bulk)
		if err != nil {
			return err
		}
		defer h.working.give()
		if blocked && (h.limiter == nil || time.Since(slotAt) <= slotTolerance) {
			// A place came while its slot still holds: no need to ask the
			// limiter again. The pause check below still runs.
			waited = max(waited, time.Nanosecond)
		} else if blocked {
			// Its slot may have gone by while it waited for a place: it
			// takes it again (its own, if still within the tolerance, or
			// a new one), or its call would bunch with the next slot's.
			w, deferred, err := h.awaitSlot(ctx, id, queue, change, bulk)
			if deferred || err != nil {
				return err
			}
			waited = max(waited, w, time.Nanosecond)
		}
	}
	if waited > 0 {
		// The platform may have been paused while this task waited.
		if paused, err := h.checkPause(ctx, id, queue, change); paused || err != nil {
			return err
		}
	}
	var queued *tasks.Record
	if plausibleQueuedAt(queuedAt, time.Now()) {
		queued = tasks.QueuedRecord(id, change, queue, queuedAt)
	}
	rec, stopped, err := h.begin(ctx, id, queue, change, queued, pf)
	switch {
	case stopped:
		return err
	case errors.Is(err, tasks.ErrFinal):
		return nil // already done by an earlier run (at-least-once delivery)
	case err != nil:
		return err // Redis trouble: asynq retries
	case rec.Status == tasks.StatusCanceled:
		return h.release(ctx, id, change.Platform)
	case rec.Status == tasks.StatusFailed:
		return errors.Join(h.release(ctx, id, change.Platform), fmt.Errorf("%s: %w", rec.Error, asynq.SkipRetry))
	}

	res, note, pf, c, err := h.call(ctx, id, change, pf)
	return h.finish(ctx, rec, res, note, pf, c, err)
}

// plausibleQueuedAt: the payload's queued_at, from whoever queued the task,
// shapes a record only when it could be a record's time (a task written
// by a bare producer with a time of its own making, in the future or
// older than any record lives, starts the usual way: read, or create now).
func plausibleQueuedAt(at, now time.Time) bool {
	return !at.IsZero() && !at.After(now.Add(time.Minute)) && now.Sub(at) <= tasks.DefaultResultTTL
}

// rolloutStopped ends a rollout change that must not run: its rollout was
// canceled, or retried since (a change of an earlier attempt never runs
// beside the new attempt's).
func (h *Handler) rolloutStopped(ctx context.Context, id, queue string, change tasks.JumpDomainChange) (bool, error) {
	st, owner, err := h.store.RolloutPlatform(ctx, change.RolloutID, change.Platform)
	if err != nil {
		return false, err
	}
	_, attempt, _, ok := tasks.ParseRolloutTaskID(id)
	switch {
	case ok && attempt < owner:
		// Its record no longer moves the platform, which belongs to the
		// new attempt (the state follows only the current attempt).
		_, err := h.updateOrCreate(ctx, id, queue, change, func(r *tasks.Record) error {
			r.Status, r.Error = tasks.StatusCanceled, fmt.Sprintf("superseded: rollout %s was retried (attempt %d)", change.RolloutID, owner)
			return nil
		})
		if err != nil && !errors.Is(err, tasks.ErrFinal) {
			return true, err
		}
		return true, h.release(ctx, id, change.Platform)
	case st == "canceled":
		// Canceled only while the rollout still is: a retry that came
		// first may have left this platform to this very change.
		cancel := func(r *tasks.Record) error {
			r.Status, r.Error = tasks.StatusCanceled, "its rollout was canceled"
			return nil
		}
		_, err := h.store.UpdateIfRollout(ctx, id, "canceled", cancel)
		if errors.Is(err, tasks.ErrTaskNotFound) {
			if _, err = h.store.Create(ctx, tasks.NewRecord(id, change, queue)); err == nil {
				_, err = h.store.UpdateIfRollout(ctx, id, "canceled", cancel)
			}
		}
		switch {
		case errors.Is(err, tasks.ErrRolloutChanged):
			return false, nil
		case err != nil && !errors.Is(err, tasks.ErrFinal):
			return true, err
		}
		return true, h.release(ctx, id, change.Platform)
	}
	return false, nil
}

// checkPause defers the change if its platform is paused.
func (h *Handler) checkPause(ctx context.Context, id, queue string, change tasks.JumpDomainChange) (bool, error) {
	p, paused, err := h.pauses.Get(ctx, change.Platform)
	if err != nil || !paused {
		return false, err
	}
	return true, h.deferTask(ctx, id, queue, change, deferral{until: p.Until, reason: "platform paused: " + p.Reason, resumable: true})
}

// slotTolerance is how late a task may use its reserved slot; a task that
// comes back later (workers busy) reserves a new one, or it would bunch
// with the calls of the slots after it.
const slotTolerance = 50 * time.Millisecond

// asynqGranularity: asynq schedules a retry to the whole second and its
// forwarder compares with the current second, so a deferred task can come
// back up to a second early.
const asynqGranularity = time.Second

// sleepMax is the longest a task sleeps in the handler for its slot: a
// deferred task comes back up to asynq's granularity early and must then
// sleep, not be deferred again (which would poll).
func (h *Handler) sleepMax() time.Duration { return max(h.cfg.MaxWait, h.cfg.Lead+asynqGranularity) }

// awaitSlot takes the change's call slot from the fleet-wide limiter and
// returns how long it slept for it. A slot within sleepMax is slept for; a
// later one stays reserved, under the task's id, while the task goes back
// to asynq until just before it (deferred: true), holding no worker slot
// and using no attempt. The task finds its slot again when it comes back,
// so a long backlog is deferred once per task, not polled.
func (h *Handler) awaitSlot(ctx context.Context, id, queue string, change tasks.JumpDomainChange, bulk bool) (waited time.Duration, deferred bool, err error) {
	return h.awaitSlotTry(ctx, id, queue, change, bulk, 0)
}

// maxLateTries bounds how often a task woken too late takes its slot again.
const maxLateTries = 3

func (h *Handler) awaitSlotTry(ctx context.Context, id, queue string, change tasks.JumpDomainChange, bulk bool, try int) (waited time.Duration, deferred bool, err error) {
	if h.limiter == nil {
		return 0, false, nil
	}
	rate := h.cfg.Rate(change.Platform)
	res, err := h.limiter.Reserve(ctx, limit.Request{
		Platform: change.Platform, Holder: id, Rate: rate, MaxAhead: h.cfg.MaxDefer,
		Bulk: bulk, Horizon: h.sleepMax(), Tolerance: slotTolerance,
	})
	if err != nil {
		return 0, false, err
	}
	switch {
	case res.Queued:
		// Bulk work behind the global backlog: back when its turn nears.
		return 0, true, h.deferTask(ctx, id, queue, change, deferral{
			until:  time.Now().Add(res.Wait - h.cfg.Lead),
			reason: fmt.Sprintf("rate limit: bulk work waits its turn (about %s)", res.Wait.Round(time.Second)),
		})
	case !res.OK: // the backlog is longer than a change may wait in all
		return 0, true, h.deferTask(ctx, id, queue, change, deferral{
			until: time.Now().Add(res.Wait / 2), earliest: time.Now().Add(res.Wait),
			reason: fmt.Sprintf("rate limit: platform %s has a backlog of %s at %g calls/s", change.Platform, res.Wait.Round(time.Second), rate.PerSecond),
		})
	}
	if change.Ensure {
		// Two calls (a get, then the change): the second's slot is
		// reserved now too, right behind the first, so that the change
		// need not come back for it (and read the lists again).
		if _, err := h.limiter.Reserve(ctx, limit.Request{
			Platform: change.Platform, Holder: callHolder(id, 1), Rate: rate, MaxAhead: h.cfg.MaxDefer, Tolerance: slotTolerance,
		}); err != nil {
			return 0, false, err
		}
	}
	wait := res.Wait
	if wait > h.sleepMax() {
		slot := time.Now().Add(wait)
		return 0, true, h.deferTask(ctx, id, queue, change, deferral{
			until:  slot.Add(-h.cfg.Lead),
			slot:   &slot,
			reason: fmt.Sprintf("rate limit: call slot of platform %s (%g calls/s) reserved for %s", change.Platform, rate.PerSecond, slot.UTC().Format(time.RFC3339Nano)),
		})
	}
	slot := time.Now().Add(wait)
	if err := h.sleep(ctx, wait); err != nil {
		return 0, false, err
	}
	if late := time.Since(slot); late > lateTolerance(rate) && try < maxLateTries {
		// Woken late (a loaded host): the slot may have gone by, and a
		// call now would bunch with the next slot's. The limiter says,
		// on Redis's clock: still its own (call now), or a new one.
		w, deferred, err := h.awaitSlotTry(ctx, id, queue, change, bulk, try+1)
		return wait + w, deferred, err
	}
	h.cfg.Metrics.LimiterWait(wait)
	return wait, false, nil
}

// lateTolerance is how late past its slot a task may call without asking
// the limiter again. It is the limiter's own tolerance (slotTolerance), not
// a lane's quarter interval: on a loaded host most wake-ups are a few ms
// late, and asking again each time would give up good slots in a crowd.
func lateTolerance(limit.Rate) time.Duration { return slotTolerance }

// sleep waits, unless the task's context ends or the worker stops (the
// task then goes back to the queue, keeping its slot).
func (h *Handler) sleep(ctx context.Context, d time.Duration) error {
	return sleepOr(ctx, h.stopping, d)
}

// SlotError: a second call of a change (the change after an ensure-mode
// get, the call again after a refused token) found no slot within the time
// a task may sleep; the change goes back to the queue without using an
// attempt.
type SlotError struct {
	Platform string
	Wait     time.Duration
}

func (e *SlotError) Error() string {
	return fmt.Sprintf("rate limit: no call slot of platform %s within %s for the change's next call", e.Platform, e.Wait.Round(time.Millisecond))
}

// maxCalls bounds a change's upstream calls: in ensure mode a get and
// the change, each made once more after a refused token.
const maxCalls = 4

// callHolder holds the slot of a change's call n (from 0): the task's id
// for the first, id#2 and on for the next (an ensure-mode change reserves
// id#2 beside its first), so that each can be given back.
func callHolder(id string, n int) string {
	if n == 0 {
		return id
	}
	return id + "#" + strconv.Itoa(n+1)
}

// callHolders are the holders a change may have slots under.
func callHolders(id string) []string {
	hs := make([]string, maxCalls)
	for n := range hs {
		hs[n] = callHolder(id, n)
	}
	return hs
}

// nextSlot takes a slot for a call after the change's first (the holder's
// own, reserved earlier, or a new one): every upstream call takes its own
// slot, or two calls would go out on one.
func (h *Handler) nextSlot(ctx context.Context, appid, holder string) error {
	if h.limiter == nil {
		return nil
	}
	res, err := h.limiter.Reserve(ctx, limit.Request{
		Platform: appid, Holder: holder, Rate: h.cfg.Rate(appid), MaxAhead: h.sleepMax(), Tolerance: slotTolerance,
	})
	if err != nil {
		return err
	}
	if !res.OK || res.Wait > h.sleepMax() {
		return &SlotError{Platform: appid, Wait: res.Wait}
	}
	if err := sleepCtx(ctx, res.Wait); err != nil {
		return err
	}
	h.cfg.Metrics.LimiterWait(res.Wait)
	return nil
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error { return sleepOr(ctx, nil, d) }

// sleepOr waits d, or until ctx ends (its error) or stop closes
// (errStopping; a nil stop never does).
func sleepOr(ctx context.Context, stop <-chan struct{}, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return errStopping
	case <-t.C:
		return nil
	}
}

// release gives back the call slot a change holds (it was canceled, paused
// or failed before its call), so that later changes need not wait behind it.
func (h *Handler) release(ctx context.Context, id, appid string) error {
	if h.limiter == nil || !tasks.ValidAppID(appid) {
		return nil
	}
	return h.limiter.Release(ctx, appid, callHolders(id)...)
}

// begin marks the record running and counts the attempt, in one script
// call when the record is as its producer wrote it (queued, rebuilt from
// the task); it creates the record if the task was enqueued without one.
// A change of a canceled or retried rollout is stopped instead (stopped,
// with what asynq is to be told).
func (h *Handler) begin(ctx context.Context, id, queue string, change tasks.JumpDomainChange, queued *tasks.Record, pf *checked) (rec *tasks.Record, stopped bool, err error) {
	update := func(r *tasks.Record) error {
		switch {
		case r.CancelRequested:
			// Before this attempt: what earlier ones did is said too.
			r.Status, r.Error = tasks.StatusCanceled, tasks.CanceledBefore(r)
		case r.Attempts >= h.cfg.MaxAttempts:
			// Earlier runs never finished (worker killed, timed out).
			r.Status = tasks.StatusFailed
			r.Error = fmt.Sprintf("gave up after %d attempts; the last did not finish (worker stopped or attempt timed out)", r.Attempts)
		default:
			r.Status = tasks.StatusRunning
			r.ReservedSlot = nil
			r.Attempts++
			if pf != nil {
				r.Preflight = pf.reasons
			}
		}
		return nil
	}
	for try := 0; ; try++ {
		rec, err = h.store.Start(ctx, id, queued, update)
		switch {
		case errors.Is(err, tasks.ErrTaskNotFound) && queued == nil && try == 0:
			// Enqueued by a bare asynq producer, or its record expired.
			if _, err := h.store.Create(ctx, tasks.NewRecord(id, change, queue)); err != nil {
				return nil, false, err
			}
			continue
		case errors.Is(err, tasks.ErrRolloutStopping) && try < 3:
			if stop, err := h.rolloutStopped(ctx, id, queue, change); stop || err != nil {
				return nil, true, err
			}
			continue // its rollout moved on meanwhile (retried): look again
		}
		return rec, false, err
	}
}

// updateOrCreate updates a task's record, creating it first if the task
// was enqueued by a bare asynq producer or its record expired.
func (h *Handler) updateOrCreate(ctx context.Context, id, queue string, change tasks.JumpDomainChange, fn func(*tasks.Record) error) (*tasks.Record, error) {
	rec, err := h.store.Update(ctx, id, fn)
	if errors.Is(err, tasks.ErrTaskNotFound) {
		if _, err = h.store.Create(ctx, tasks.NewRecord(id, change, queue)); err != nil {
			return nil, err
		}
		rec, err = h.store.Update(ctx, id, fn)
	}
	return rec, err
}

// call makes the change's upstream calls; in ensure mode a get first,
// then the preflight of the domains it would add. pf is the preflight
// made before (plain changes); the one in force is returned.
func (h *Handler) call(ctx context.Context, id string, change tasks.JumpDomainChange, pf *checked) (wechat.JumpDomains, string, *checked, *calls, error) {
	req := wechat.JumpDomainChange{Action: string(change.Action), Domains: change.Domains, Publish: change.Publish}
	if pf != nil && pf.send != nil {
		req.Domains = pf.send
	}
	c := &calls{h: h, id: id, appid: change.Platform, late: !change.Ensure}
	tok, err := h.tokens.Token(ctx, change.Platform)
	if err != nil {
		return wechat.JumpDomains{}, "", pf, c, err
	}
	c.tok = tok
	if change.Ensure {
		cur, err := c.send(ctx, wechat.JumpDomainChange{Action: wechat.ActionGet})
		if err != nil {
			return cur, "", pf, c, err
		}
		var note string
		req, note, err = h.plan(change, cur)
		if err == nil && note == "" {
			pf, err = h.preflight(ctx, change.Platform, h.preflightMode(change), toAdd(req, cur, change.Publish), false)
			if err == nil && pf != nil && pf.dropped != nil {
				req.Domains = slices.DeleteFunc(req.Domains, func(d string) bool { return slices.Contains(pf.dropped, d) })
			}
		}
		if err != nil || note != "" {
			// No second call: its slot goes to others.
			if h.limiter != nil {
				err = errors.Join(err, h.limiter.Release(context.WithoutCancel(ctx), change.Platform, callHolder(id, 1)))
			}
			return cur, note, pf, c, err
		}
	}
	res, err := c.send(ctx, req)
	return res, "", pf, c, err
}

// calls makes one change's upstream calls: the first on the slot the task
// reserved, every later one on a slot of its own, so that no two calls go
// out on one slot.
type calls struct {
	h         *Handler
	id, appid string
	tok       string
	n         int
	// late: the pacing feedback of a call WeChat answered (errcode 0) is
	// not sent at once but with the record's final write (one command
	// fewer); answered names that call's holder.
	late     bool
	answered string
}

func (c *calls) one(ctx context.Context, req wechat.JumpDomainChange) (wechat.JumpDomains, error) {
	holder := callHolder(c.id, c.n)
	if c.n >= maxCalls {
		return wechat.JumpDomains{}, fmt.Errorf("a change makes at most %d calls", maxCalls)
	}
	if c.n > 0 {
		if err := c.h.nextSlot(ctx, c.appid, holder); err != nil {
			return wechat.JumpDomains{}, err
		}
	}
	c.n++
	res, err := c.h.modify(ctx, c.appid, holder, c.tok, req, c.late)
	if err == nil && c.late {
		c.answered = holder
	}
	return res, err
}

// send makes a call; a refused token is dropped (only if it is still the
// shared one), fetched anew, and the call made once more.
func (c *calls) send(ctx context.Context, req wechat.JumpDomainChange) (wechat.JumpDomains, error) {
	res, err := c.one(ctx, req)
	if c.h.cfg.Policy.Classify(err).Kind != KindRefreshToken {
		return res, err
	}
	if err := c.h.tokens.Invalidate(ctx, c.appid, c.tok); err != nil {
		return res, err
	}
	t, err := c.h.tokens.Token(ctx, c.appid)
	if err != nil {
		return res, err
	}
	c.tok = t
	return c.one(ctx, req)
}

// PlanError refuses an ensure-mode change that cannot reach its desired
// state without breaking a rule (the domain limit); nothing was changed.
type PlanError struct{ Reason string }

func (e *PlanError) Error() string { return e.Reason }

// plan turns an ensure-mode change into the call that reaches the desired
// state from the current lists, or a note when there is nothing to do
// (tasks.PlanEnsure, which dry runs use too).
func (h *Handler) plan(change tasks.JumpDomainChange, cur wechat.JumpDomains) (wechat.JumpDomainChange, string, error) {
	call, note, err := tasks.PlanEnsure(change, cur.Testing, cur.Published, h.cfg.MaxDomains)
	req := wechat.JumpDomainChange{Action: string(call.Action), Domains: call.Domains, Publish: call.Publish}
	var pe *tasks.PlanError
	switch {
	case errors.As(err, &pe):
		return req, "", &PlanError{Reason: pe.Reason + "; nothing was changed"}
	case err != nil:
		return req, "", err
	case note != "":
		return req, note + "; nothing was changed", nil
	}
	return req, "", nil
}

// modify calls WeChat and tells the limiter whether WeChat was busy, so
// that the platform's pace adapts, and that the holder's slot is spent;
// with late, an answer (errcode 0) is told later, with the record's write
// (finish).
func (h *Handler) modify(ctx context.Context, appid, holder, tok string, req wechat.JumpDomainChange, late bool) (wechat.JumpDomains, error) {
	start := time.Now()
	res, err := h.upstream.ModifyJumpDomain(ctx, tok, req)
	var apiErr *wechat.APIError
	switch {
	case err == nil:
		h.cfg.Metrics.UpstreamCall(appid, 0, true, time.Since(start))
	case errors.As(err, &apiErr):
		h.cfg.Metrics.UpstreamCall(appid, apiErr.Code, true, time.Since(start))
	default:
		h.cfg.Metrics.UpstreamCall(appid, 0, false, time.Since(start))
	}
	if h.limiter == nil || (late && err == nil) {
		return res, err
	}
	outcome := limit.Answered
	switch {
	case errors.As(err, &apiErr) && apiErr.Code == -1:
		outcome = limit.Busy
	case err != nil && apiErr == nil:
		outcome = limit.NoAnswer
	}
	if outcome != limit.NoAnswer || holder != "" {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordWriteTimeout)
		defer cancel()
		if ferr := h.limiter.Feedback(fctx, appid, holder, outcome); ferr != nil {
			h.log.Debug("pacing feedback lost", zap.String("platform", appid), zap.Error(ferr))
		}
	}
	return res, err
}

// finish records the outcome and tells asynq what to do next.
func (h *Handler) finish(ctx context.Context, rec *tasks.Record, res wechat.JumpDomains, note string, pf *checked, c *calls, callErr error) error {
	log := h.log.With(zap.String("task_id", rec.TaskID), zap.String("platform", rec.Platform), zap.String("action", string(rec.Action)))
	var pe *PreflightError
	if errors.As(callErr, &pe) {
		// An ensure change whose domains to add all failed their preflight.
		return h.failPreflight(ctx, rec.TaskID, rec.Queue, rec.Change(), pe)
	}
	if callErr != nil {
		// Slots reserved for calls not made (the first, if no token came;
		// the change after a failed get) go to later changes; slots of
		// calls made are spent and stay.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordWriteTimeout)
		if err := h.release(rctx, rec.TaskID, rec.Platform); err != nil {
			log.Warn("unused call slots not given back; later changes of the platform may wait up to their time", zap.Error(err))
		}
		cancel()
	}
	if callErr != nil && ctx.Err() != nil {
		return h.interrupted(ctx, rec, callErr)
	}
	// WeChat has answered: record it even if the task's context ends now,
	// or the change would run again.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordWriteTimeout)
	defer cancel()
	if callErr == nil {
		var pacing *limit.FeedbackArgs
		if h.limiter != nil && c.answered != "" {
			// The answer's pacing feedback, in the record's own write.
			p := h.limiter.Answered(rec.Platform, c.answered)
			pacing = &p
		}
		_, retried, err := h.updateRetrying(ctx, rec, pacing, func(r *tasks.Record) error {
			applyAnswer(r, res)
			r.Note = note
			if pf != nil {
				r.Preflight = pf.reasons
				if len(pf.dropped) > 0 {
					r.Status = tasks.StatusPartial
					r.Error = strings.TrimSpace(fmt.Sprintf("%d of %d domains were not sent: they do not serve the platform's verification file (see preflight). %s", len(pf.dropped), len(pf.reasons), r.Error))
				}
			}
			return nil
		})
		if pacing != nil && errors.Is(err, tasks.ErrFinal) && !retried {
			// Not written: a run before this one finished it. The
			// feedback on its own (not after a write whose answer was
			// lost, which may have given it: it is not given twice).
			if ferr := h.limiter.Feedback(ctx, rec.Platform, c.answered, limit.Answered); ferr != nil {
				h.log.Debug("pacing feedback lost", zap.String("platform", rec.Platform), zap.Error(ferr))
			}
		}
		if err != nil && !errors.Is(err, tasks.ErrFinal) {
			return err
		}
		// No summary is written to asynq's task (ResultWriter): it cost a
		// Redis command per change, and the record says it all.
		log.Debug("change applied", zap.Int("invalid_domains", len(res.Invalid)))
		return nil
	}

	d := h.cfg.Policy.Classify(callErr)
	switch d.Kind {
	case KindCanceled:
		return h.interrupted(ctx, rec, callErr)
	case KindPause:
		return h.pausePlatform(ctx, rec, d, true)
	case KindWait:
		return h.deferTask(ctx, rec.TaskID, rec.Queue, rec.Change(), deferral{
			until: time.Now().Add(max(d.Wait, h.cfg.Lead)), reason: d.Reason, undoAttempt: true,
		})
	}
	var next time.Duration
	updated, _, err := h.updateRetrying(ctx, rec, nil, func(r *tasks.Record) error {
		r.Error = d.Reason
		if d.APIErr != nil {
			code := d.APIErr.Code
			r.ErrCode, r.ErrMsg = &code, d.APIErr.Msg
		}
		switch {
		case d.Kind == KindFail:
			r.Status = tasks.StatusFailed
		case r.CancelRequested:
			r.Status = tasks.StatusCanceled
			r.Error = "canceled after a failed attempt: " + d.Reason
		case r.Attempts >= h.cfg.MaxAttempts:
			r.Status = tasks.StatusFailed
			r.Error = fmt.Sprintf("gave up after %d attempts: %s", r.Attempts, d.Reason)
		default:
			next = h.backoff(r.Attempts)
			at := time.Now().Add(next).UTC()
			r.Status, r.NextAttemptAt = tasks.StatusRetrying, &at
		}
		return nil
	})
	if errors.Is(err, tasks.ErrFinal) || (err == nil && updated.Status == tasks.StatusCanceled) {
		return nil
	}
	if err != nil {
		return err
	}
	if next > 0 {
		log.Debug("change will be retried", zap.Duration("retry_in", next), zap.String("reason", d.Reason))
		return &RetryError{Delay: next, Err: errors.New(d.Reason)}
	}
	log.Warn("change failed", zap.String("reason", d.Reason))
	return fmt.Errorf("%s: %w", d.Reason, asynq.SkipRetry)
}

// updateRetrying writes a record after WeChat answered, trying again
// while Redis does not answer (a failover), within ctx: the handler then
// returns once Redis is back, so that asynq's own move of the task (done,
// retry) lands too. asynq v0.26 makes that move once, under a context
// already canceled, and a move lost leaves the change shown running until
// asynq's recoverer takes it back, minutes later.
func (h *Handler) updateRetrying(ctx context.Context, from *tasks.Record, pacing *limit.FeedbackArgs, fn func(*tasks.Record) error) (rec *tasks.Record, retried bool, err error) {
	delay := 100 * time.Millisecond
	for {
		rec, err = h.store.FinishFrom(ctx, from, pacing, fn)
		if !tasks.RedisUnavailable(err) || ctx.Err() != nil {
			return rec, retried, err
		}
		retried = true
		if sleepCtx(ctx, delay) != nil {
			return rec, retried, err
		}
		delay = min(2*delay, time.Second)
	}
}

// pausePlatform makes the whole fleet hold the platform's changes; the one
// process that starts the pause logs it, once per pause. undoAttempt takes
// back the attempt this run counted (none was counted before begin).
func (h *Handler) pausePlatform(ctx context.Context, rec *tasks.Record, d Decision, undoAttempt bool) error {
	now := time.Now()
	p := pause.Pause{Kind: d.Pause, Reason: d.Reason}
	switch d.Resume {
	case ResumeNextMinute:
		p.Until = now.Truncate(time.Minute).Add(time.Minute)
	case ResumeNextChinaDay:
		p.Until = nextChinaMidnight(now)
	default:
		p.Until = now.Add(h.cfg.OperatorPause)
	}
	if d.APIErr != nil {
		p.ErrCode = d.APIErr.Code
	}
	var started bool
	var err error
	if d.Ticket != nil {
		started, err = h.pauses.SetForTicket(ctx, rec.Platform, p, *d.Ticket)
	} else {
		started, err = h.pauses.Set(ctx, rec.Platform, p)
	}
	if errors.Is(err, pause.ErrTicketChanged) {
		// The refusal was about a ticket replaced meanwhile: try the new one.
		return h.deferTask(ctx, rec.TaskID, rec.Queue, rec.Change(), deferral{
			until: now.Add(time.Second), reason: "a new component_verify_ticket arrived; trying it", undoAttempt: undoAttempt,
		})
	}
	if err != nil {
		return err
	}
	if started {
		h.cfg.Metrics.PauseStarted(rec.Platform, p.ErrCode)
		h.log.Warn("platform paused; its changes wait",
			zap.String("platform", rec.Platform), zap.String("kind", string(p.Kind)), zap.String("reason", p.Reason),
			zap.Int("errcode", p.ErrCode), zap.Time("until", p.Until), zap.Bool("ends_with_ticket", p.Kind.EndsWithTicket()))
	}
	// deferTask reads the pause in force again (another may have won).
	return h.deferTask(ctx, rec.TaskID, rec.Queue, rec.Change(), deferral{
		until: p.Until, reason: "platform paused: " + p.Reason, undoAttempt: undoAttempt, resumable: true,
	})
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// chinaTime is UTC+8, where WeChat's daily quotas reset at midnight.
var chinaTime = time.FixedZone("UTC+8", 8*3600)

func nextChinaMidnight(now time.Time) time.Time {
	c := now.In(chinaTime)
	return time.Date(c.Year(), c.Month(), c.Day()+1, 0, 0, 0, 0, chinaTime)
}

// deferral is a change handed back to asynq without using an attempt.
type deferral struct {
	until  time.Time
	reason string
	// undoAttempt takes back the attempt begin counted: the call never
	// went out, or WeChat said to come back later.
	undoAttempt bool
	// resumable: the change waits for a pause that Resume can lift early.
	resumable bool
	// slot is the call slot reserved for the change, kept across the deferral.
	slot *time.Time
	// earliest, when later than until, is the soonest the change could
	// run: past MaxDefer, it fails now.
	earliest time.Time
}

// kind names the deferral for metrics.
func (d deferral) kind() string {
	if d.resumable {
		return "pause"
	}
	return "rate_limit"
}

// recordWriteTimeout bounds record writes that must happen even though the
// task's context has ended.
const recordWriteTimeout = 20 * time.Second

// deferTask records that the change waits and hands it back to asynq to run
// at d.until; past MaxDefer in all, the change fails instead.
func (h *Handler) deferTask(ctx context.Context, id, queue string, change tasks.JumpDomainChange, d deferral) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordWriteTimeout)
	defer cancel()
	if change.RolloutID != "" {
		// A change of a canceled or retried rollout stops rather than waits.
		if stop, err := h.rolloutStopped(ctx, id, queue, change); stop || err != nil {
			return err
		}
	}
	if d.resumable {
		// A change waiting for a pause holds no call slot meanwhile.
		if err := h.release(ctx, id, change.Platform); err != nil {
			return err
		}
		// Remembered first, then the pause read again: a resume that ran
		// before this did not see the change, and a resume from now on
		// runs it (see pause.Store.Resume for one that finds it running).
		if err := h.pauses.AddDeferred(ctx, change.Platform, pause.Deferred{TaskID: id, Queue: queue}); err != nil {
			return err
		}
		p, paused, err := h.pauses.Read(ctx, change.Platform)
		switch {
		case err != nil:
			return err
		case !paused:
			d.until, d.reason, d.resumable = time.Now(), "the platform's pause just ended", false
		default:
			d.until, d.reason = p.Until, "platform paused: "+p.Reason
		}
	}
	until := d.until.UTC()
	rec, err := h.updateOrCreate(ctx, id, queue, change, func(r *tasks.Record) error {
		switch {
		case r.CancelRequested:
			r.Status, r.Error = tasks.StatusCanceled, "canceled while waiting: "+d.reason
			return nil
		case latest(until, d.earliest).Sub(r.CreatedAt) > h.cfg.MaxDefer:
			// Failed now rather than after waiting: it could not run in time.
			r.Status = tasks.StatusFailed
			r.Error = fmt.Sprintf("would wait until %s, longer than %s in all; %s", latest(until, d.earliest).UTC().Format(time.RFC3339), h.cfg.MaxDefer, d.reason)
			return nil
		}
		if d.undoAttempt && r.Attempts > 0 {
			r.Attempts--
		}
		r.Status = tasks.StatusRetrying
		r.Error = "waiting, " + d.reason
		r.NextAttemptAt = &until
		r.ReservedSlot = d.slot
		return nil
	})
	switch {
	case errors.Is(err, tasks.ErrFinal), err == nil && rec.Status == tasks.StatusCanceled:
		return h.release(ctx, id, change.Platform)
	case err != nil:
		return err
	case rec.Status == tasks.StatusFailed:
		h.log.Warn("change failed", zap.String("task_id", id), zap.String("platform", change.Platform), zap.String("reason", rec.Error))
		return errors.Join(h.release(ctx, id, change.Platform), fmt.Errorf("%s: %w", rec.Error, asynq.SkipRetry))
	}
	h.cfg.Metrics.Deferral(d.kind())
	return &DeferError{Until: d.until, Reason: d.reason}
}

// interrupted records a run whose context ended: a cancel request makes it
// canceled; a shutdown or timeout puts it back to be retried.
func (h *Handler) interrupted(ctx context.Context, rec *tasks.Record, cause error) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordWriteTimeout)
	defer cancel()
	_, err := h.store.Update(wctx, rec.TaskID, func(r *tasks.Record) error {
		if r.CancelRequested {
			r.Status = tasks.StatusCanceled
			r.Error = "canceled while running; the call to WeChat may or may not have taken effect (check with a get)"
			return nil
		}
		r.Status = tasks.StatusRetrying
		r.Error = "interrupted (" + cause.Error() + "); it will run again"
		return nil
	})
	if err != nil && !errors.Is(err, tasks.ErrFinal) {
		return errors.Join(cause, err)
	}
	return cause
}

func applyAnswer(r *tasks.Record, res wechat.JumpDomains) {
	zero := 0
	r.ErrCode, r.ErrMsg = &zero, res.ErrMsg
	testing := nonNil(res.Testing)
	r.TestingDomains = &testing
	r.PublishedDomains = nil
	if res.Published != nil {
		published := res.Published
		r.PublishedDomains = &published
	}
	r.InvalidDomains = res.Invalid
	r.Error = ""
	r.Status = tasks.StatusSucceeded
	if len(res.Invalid) > 0 {
		r.Status = tasks.StatusPartial
		r.Error = "WeChat accepted the call but did not apply domains that failed verification (see invalid_domains); each must serve the verification file at its root"
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// backoff is exponential with full jitter: uniform in [0, min(max, base·2^(n-1))].
func (h *Handler) backoff(attempt int) time.Duration {
	ceiling := h.cfg.RetryBase
	for i := 1; i < attempt && ceiling < h.cfg.RetryMax; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, h.cfg.RetryMax)
	return time.Duration(rand.Int64N(int64(ceiling)) + 1)
}

// RetryDelay is asynq's Config.RetryDelayFunc: the delay the handler chose,
// or backoff for errors that bypassed the handler (timeouts, lost leases).
func (h *Handler) RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var (
		re *RetryError
		de *DeferError
	)
	switch {
	case errors.As(err, &re):
		return re.Delay
	case errors.As(err, &de):
		return max(time.Until(de.Until), time.Millisecond)
	}
	return h.backoff(n + 1)
}
