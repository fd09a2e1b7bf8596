// Package rollout applies one domain change across many platforms: it
// records the rollout, fans it out in the background into one task per
// platform (idempotently: task ids derive from rollout, attempt and appid),
// tracks per-platform outcomes with exact counts, and cancels or retries.
package rollout

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/tasks"
)

// TypeFanout is the task that fans a rollout attempt out; permanent.
const TypeFanout = "wxdomain:rollout_fanout"

// Rollout statuses.
const (
	StatusFanningOut = "fanning_out"
	StatusRunning    = "running"
	StatusDone       = "done"
	StatusCanceled   = "canceled"
	// StatusFailed: the fan-out could not queue every platform; those it
	// could not are failed, and Error says why.
	StatusFailed = "failed"
)

// Modes.
const (
	ModeApply  = "apply"
	ModeEnsure = "ensure"
	ModeDryRun = "dry_run"
)

// Spec is a rollout as requested.
type Spec struct {
	Name      string       `json:"name"`
	Action    tasks.Action `json:"action"`
	Domains   []string     `json:"domains"`
	Publish   bool         `json:"publish"`
	Platforms []string     `json:"-"`
	All       bool         `json:"-"`
	Ensure    bool         `json:"ensure"`
	DryRun    bool         `json:"dry_run"`
	// Preflight is the rollout's preflight mode ("": the workers' default).
	Preflight tasks.PreflightMode `json:"preflight,omitempty"`
	// IdempotencyKey makes creating the same rollout again return the
	// first one (Replayed); the same key with another spec is refused
	// with tasks.ErrIdempotencyConflict.
	IdempotencyKey string `json:"-"`
}

// Counts are the platforms per status.
type Counts struct {
	Queued    int `json:"queued"`
	Running   int `json:"running"`
	Retrying  int `json:"retrying"`
	Succeeded int `json:"succeeded"`
	Partial   int `json:"partial"`
	Failed    int `json:"failed"`
	Canceled  int `json:"canceled"`
	// PreflightFailed counts the platforms whose change found a domain
	// not serving the verification file (in any status; not part of the
	// total).
	PreflightFailed int `json:"preflight_failed"`
}

// Rollout is a rollout's state, as the API and the CLI show it.
type Rollout struct {
	ID      string       `json:"rollout_id"`
	Name    string       `json:"name"`
	Action  tasks.Action `json:"action"`
	Domains []string     `json:"domains"`
	Publish bool         `json:"publish"`
	Mode    string       `json:"mode"`
	// Preflight is the mode the rollout's changes name ("": the workers'
	// default).
	Preflight  tasks.PreflightMode `json:"preflight,omitempty"`
	Status     string              `json:"status"`
	Total      int                 `json:"total"`
	Attempt    int                 `json:"attempt"`
	Counts     Counts              `json:"counts"`
	CreatedAt  time.Time           `json:"created_at"`
	FinishedAt *time.Time          `json:"finished_at,omitempty"`
	// Error says why the fan-out failed (status failed).
	Error string `json:"error,omitempty"`
	// Plan lists what a dry run would call: for an ensure rollout whose
	// lists were read (EnsurePlan.ReadLists), only the calls that would
	// be made, each for the difference alone.
	Plan []tasks.JumpDomainChange `json:"plan,omitempty"`
	// EnsurePlan is an ensure dry run's plan, platform by platform, from
	// their current lists.
	EnsurePlan *EnsureSummary `json:"ensure_plan,omitempty"`
	// PreflightPlan is a dry run's preflight of every platform.
	PreflightPlan *PreflightSummary `json:"preflight_plan,omitempty"`
	// Replayed: an idempotency key's first rollout, returned again.
	Replayed bool `json:"replayed,omitempty"`
}

// ErrNotFound is returned for an unknown rollout id.
var ErrNotFound = errors.New("rollout not found")

// Config configures a Service.
type Config struct {
	Prefix    string
	BulkQueue string // rollout changes; default tasks.QueueBulk
	Queue     string // the fan-out task; default tasks.QueueDefault
	// Platforms lists the configured platforms (for "all").
	Platforms []string
	Rules     tasks.Rules
	// BatchSize is how many tasks a fan-out step enqueues; default 500.
	BatchSize int
	// Durability makes Create and Retry wait for Redis replicas before
	// they report success (see tasks.Durability).
	Durability tasks.Durability
	// TTL is how long a finished rollout stays readable; default
	// DefaultTTL.
	TTL time.Duration
	// Preflight, when set, checks every platform's domains in a dry run.
	Preflight Preflighter
	// PreflightDefault is the mode of a rollout that names none (the
	// workers' WXDOMAIN_PREFLIGHT); default warn.
	PreflightDefault tasks.PreflightMode
	// Lists, when set, reads a platform's current lists: an ensure dry
	// run reads every platform's (one get call each) to show what it would
	// call. nil: the ensure dry run says it could not, and shows the plain
	// plan.
	Lists ListsFunc
}

// DefaultTTL keeps a finished rollout for 30 days.
const DefaultTTL = 30 * 24 * time.Hour

// fanoutGiveUp bounds the fan-out's retries of Redis trouble (or of its
// own timeout); after them the rollout fails with the reason instead of
// fanning out for ever.
const fanoutGiveUp = 10

// Service manages rollouts.
type Service struct {
	rdb     redis.UniversalClient
	client  *tasks.Client
	asynq   *asynq.Client
	cfg     Config
	now     func() time.Time
	fanning func(id string, attempt, done, total int) // test hook
	// sweepFrom is where the next sweep of the index starts.
	sweepFrom atomic.Int64
	// swept is when Create last swept (unix ns): a burst of creations
	// sweeps once.
	swept atomic.Int64
}

// New returns the rollout service over a tasks client on the same Redis.
func New(rdb redis.UniversalClient, client *tasks.Client, cfg Config) *Service {
	if cfg.BulkQueue == "" {
		cfg.BulkQueue = tasks.QueueBulk
	}
	if cfg.Queue == "" {
		cfg.Queue = tasks.QueueDefault
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 500
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.PreflightDefault == "" {
		cfg.PreflightDefault = tasks.PreflightWarn
	}
	return &Service{rdb: rdb, client: client, asynq: asynq.NewClientFromRedisClient(rdb), cfg: cfg, now: time.Now}
}

func (s *Service) key(id string) string       { return tasks.RolloutKey(s.cfg.Prefix, id) }
func (s *Service) stateKey(id string) string  { return tasks.RolloutStateKey(s.cfg.Prefix, id) }
func (s *Service) countsKey(id string) string { return tasks.RolloutCountsKey(s.cfg.Prefix, id) }
func (s *Service) indexKey() string           { return s.cfg.Prefix + "rollouts" }
func (s *Service) listKey(id string, a int) string {
	return tasks.RolloutListKey(s.cfg.Prefix, id, a)
}
func (s *Service) cursorKey(id string, a int) string {
	return tasks.RolloutCursorKey(s.cfg.Prefix, id, a)
}

// maxName bounds a rollout's name.
const maxName = 200

// TaskID is the id of a rollout's change for one platform in one attempt.
func TaskID(id string, attempt int, appid string) string {
	return tasks.RolloutTaskID(id, attempt, appid)
}

// Create validates and records a rollout and queues its fan-out; it
// returns at once. A dry run records nothing and returns the plan.
func (s *Service) Create(ctx context.Context, spec Spec) (*Rollout, error) {
	platforms := spec.Platforms
	if spec.All {
		if len(platforms) > 0 {
			return nil, errors.New("give a list of platforms or all, not both")
		}
		platforms = s.cfg.Platforms
	}
	platforms = dedupe(platforms)
	if len(platforms) == 0 {
		return nil, &tasks.ValidationError{Problems: []tasks.Problem{{Code: "missing_platforms", Field: "platforms", Reason: "list at least one platform, or all"}}}
	}
	// Every platform against the rules, then the change once.
	var problems tasks.Problems
	for _, p := range platforms {
		if pr, ok := tasks.CheckPlatform(p, s.cfg.Rules); !ok {
			pr.Field = "platforms"
			problems.Add(pr)
		}
	}
	if len(spec.Name) > maxName || strings.ContainsFunc(spec.Name, unicode.IsControl) || !utf8.ValidString(spec.Name) {
		problems.Add(tasks.Problem{Code: "invalid_name", Field: "name", Value: spec.Name, Reason: fmt.Sprintf("must be at most %d characters of text, without control characters", maxName)})
	}
	change := tasks.JumpDomainChange{Platform: platforms[0], Action: spec.Action, Domains: spec.Domains, Publish: spec.Publish, Ensure: spec.Ensure, Preflight: spec.Preflight}
	if !tasks.ValidAppID(change.Platform) {
		change.Platform = "wx0000000000000000" // its problem is reported above
	}
	var ve *tasks.ValidationError
	if err := change.ValidateWith(tasks.Rules{MaxDomains: s.cfg.Rules.MaxDomains}); errors.As(err, &ve) {
		problems.Merge(ve)
	}
	if err := problems.Err(); err != nil {
		return nil, err
	}
	r := &Rollout{
		ID: newID(), Name: spec.Name, Action: change.Action, Domains: change.Domains, Publish: spec.Publish,
		Mode: ModeApply, Status: StatusFanningOut, Total: len(platforms), CreatedAt: s.now().UTC(), Preflight: spec.Preflight,
	}
	if r.Domains == nil {
		r.Domains = []string{}
	}
	if spec.Ensure {
		r.Mode = ModeEnsure
	}
	if spec.DryRun {
		r.Mode, r.Status = ModeDryRun, StatusDone
		if spec.Ensure {
			sum, plan, err := s.ensurePlan(ctx, change, platforms)
			if err != nil {
				return nil, err
			}
			r.EnsurePlan, r.Plan = sum, plan
		} else {
			for _, p := range platforms {
				c := change
				c.Platform = p
				r.Plan = append(r.Plan, c)
			}
		}
		r.Counts.Queued = 0
		sum, err := s.preflightPlan(ctx, change, platforms)
		if err != nil {
			return nil, err
		}
		r.PreflightPlan = sum
		return r, nil
	}
	domains, _ := json.Marshal(r.Domains)
	fp := ""
	if spec.IdempotencyKey != "" {
		// The key names the rollout: a second creation finds the first.
		if !tasks.ValidIdempotencyKey(spec.IdempotencyKey) {
			return nil, tasks.ErrInvalidIdempotencyKey
		}
		r.ID = keyID(s.cfg.Prefix, spec.IdempotencyKey)
		fp = specFingerprint(r, platforms)
	}
	write := func(p redis.Pipeliner) error {
		p.HSet(ctx, s.key(r.ID), map[string]any{
			"name": r.Name, "action": string(r.Action), "domains": string(domains), "publish": strconv.FormatBool(r.Publish),
			"mode": r.Mode, "status": r.Status, "total": r.Total, "attempt": 0, "created_at": r.CreatedAt.Format(time.RFC3339Nano),
			"ttl_ms": s.cfg.TTL.Milliseconds(), "fingerprint": fp, "preflight": string(r.Preflight),
		})
		for _, chunk := range chunks(platforms, 1000) {
			args := make([]any, len(chunk))
			fields := make(map[string]any, len(chunk))
			for i, a := range chunk {
				args[i] = a
				fields[a] = string(tasks.StatusQueued)
			}
			p.RPush(ctx, s.listKey(r.ID, 0), args...)
			p.HSet(ctx, s.stateKey(r.ID), fields)
		}
		p.HSet(ctx, s.countsKey(r.ID), string(tasks.StatusQueued), r.Total)
		// The cursor exists from the start, so that the rollout's expiry
		// covers it (it is later written with KEEPTTL).
		p.Set(ctx, s.cursorKey(r.ID, 0), 0, 0)
		p.ZAdd(ctx, s.indexKey(), redis.Z{Score: float64(r.CreatedAt.UnixMilli()), Member: r.ID})
		return nil
	}
	var err error
	if fp == "" {
		_, err = s.rdb.TxPipelined(ctx, write)
	} else {
		// Created once: only while no rollout has the key's id.
		err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			had, err := tx.HGet(ctx, s.key(r.ID), "fingerprint").Result()
			switch {
			case err == nil:
				return &replay{fingerprint: had}
			case !errors.Is(err, redis.Nil):
				return err
			}
			_, err = tx.TxPipelined(ctx, write)
			return err
		}, s.key(r.ID))
		var rp *replay
		switch {
		case errors.Is(err, redis.TxFailedErr):
			// Another creation with the key won: it is the rollout.
			return s.replayed(ctx, r.ID, fp, fp)
		case errors.As(err, &rp):
			return s.replayed(ctx, r.ID, fp, rp.fingerprint)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("record rollout: %w", err)
	}
	r.Counts.Queued = r.Total
	if err := s.queueFanout(ctx, r.ID, 0); err != nil {
		return nil, err
	}
	if err := s.confirm(ctx, r.ID); err != nil {
		return nil, err
	}
	if now := s.now().UnixNano(); now-s.swept.Load() > int64(createSweepEvery) {
		s.swept.Store(now)
		s.sweep(ctx)
	}
	return r, nil
}

// replay is a rollout already created under an idempotency key.
type replay struct{ fingerprint string }

func (*replay) Error() string { return "rollout exists" }

// replayed returns the rollout an idempotency key created first, after
// making sure its fan-out is queued and it is confirmed (the first
// creation may have stopped short of either); another spec under the same
// key is a conflict.
func (s *Service) replayed(ctx context.Context, id, want, had string) (*Rollout, error) {
	if had != want {
		return nil, fmt.Errorf("%w (rollout %s)", tasks.ErrIdempotencyConflict, id)
	}
	r, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.Status == StatusFanningOut {
		if err := s.queueFanout(ctx, id, r.Attempt); err != nil {
			return nil, err
		}
	}
	if err := s.confirm(ctx, id); err != nil {
		return nil, err
	}
	r.Replayed = true
	return r, nil
}

// keyID is the rollout id an idempotency key names.
func keyID(prefix, key string) string {
	sum := sha256.Sum256([]byte(prefix + "rollout:" + key))
	return hex.EncodeToString(sum[:8])
}

// specFingerprint tells two creations apart: same key, another rollout.
func specFingerprint(r *Rollout, platforms []string) string {
	b, _ := json.Marshal(struct {
		Name      string
		Action    tasks.Action
		Domains   []string
		Publish   bool
		Mode      string
		Platforms []string
		// Absent when not given, so that keys of rollouts made before
		// preflight modes existed still replay.
		Preflight tasks.PreflightMode `json:",omitempty"`
	}{r.Name, r.Action, r.Domains, r.Publish, r.Mode, platforms, r.Preflight})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// createSweepEvery: creations sweep the index at most this often (List
// sweeps every time).
const createSweepEvery = 10 * time.Second

// sweep drops from the index the rollouts that expired. Only a rollout
// created more than TTL ago can have, so only those are looked at.
func (s *Service) sweep(ctx context.Context) {
	// Rollouts still running past the TTL stay in the index; the sweep
	// moves on past them, and starts over once it reached the end.
	const batch = 200
	offset := s.sweepFrom.Load()
	old, err := s.rdb.ZRangeByScore(ctx, s.indexKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(s.now().Add(-s.cfg.TTL).UnixMilli(), 10), Offset: offset, Count: batch,
	}).Result()
	if err != nil {
		return // the next sweep tries again
	}
	defer func() {
		if len(old) < batch {
			s.sweepFrom.Store(0)
		}
	}()
	exists := make([]*redis.IntCmd, len(old))
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range old {
			exists[i] = p.Exists(ctx, s.key(id))
		}
		return nil
	})
	var gone []any
	for i, id := range old {
		if exists[i].Err() == nil && exists[i].Val() == 0 {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 {
		_ = s.rdb.ZRem(ctx, s.indexKey(), gone...).Err()
	}
	s.sweepFrom.Add(int64(len(old) - len(gone)))
}

type fanoutPayload struct {
	RolloutID string `json:"rollout_id"`
	Attempt   int    `json:"attempt"`
}

func (s *Service) queueFanout(ctx context.Context, id string, attempt int) error {
	b, _ := json.Marshal(fanoutPayload{RolloutID: id, Attempt: attempt})
	t := asynq.NewTask(TypeFanout, b, asynq.Queue(s.cfg.Queue), asynq.TaskID("fanout_"+id+"_"+strconv.Itoa(attempt)),
		asynq.MaxRetry(1000), asynq.Timeout(30*time.Minute))
	if _, err := s.asynq.EnqueueContext(ctx, t); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("queue the fan-out of rollout %s: %w", id, err)
	}
	return nil
}

// ProcessTask runs a fan-out task: it enqueues the attempt's changes from
// where an earlier run stopped, batch by batch, until all are queued or the
// rollout is canceled. Running it again never queues a change twice. A
// platform that cannot be queued (no longer in the platforms file) fails
// alone, with the reason; Redis trouble is retried a bounded number of
// times, then the rollout fails with the reason.
func (s *Service) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p fanoutPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("decode fan-out: %v: %w", err, asynq.SkipRetry)
	}
	err := s.fanOut(ctx, p)
	if err == nil || errors.Is(err, asynq.SkipRetry) || errors.Is(ctx.Err(), context.Canceled) {
		return err // done, or shutting down: asynq runs it again
	}
	// Our own bound, far below asynq's: if recording the failure fails
	// too, asynq still runs the task again and the failure is retried.
	if retried, _ := asynq.GetRetryCount(ctx); retried >= fanoutGiveUp {
		why := fmt.Sprintf("the fan-out gave up after %d tries: %v", retried+1, err)
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if ferr := s.failUnqueued(wctx, p.RolloutID, p.Attempt, why); ferr != nil {
			return errors.Join(err, ferr)
		}
		return fmt.Errorf("%s: %w", why, asynq.SkipRetry)
	}
	return err
}

func (s *Service) fanOut(ctx context.Context, p fanoutPayload) error {
	r, err := s.definition(ctx, p.RolloutID)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("rollout %s is gone: %w", tasks.Truncate(p.RolloutID), asynq.SkipRetry)
	}
	if err != nil {
		return err
	}
	change := tasks.JumpDomainChange{Action: r.Action, Domains: r.Domains, Publish: r.Publish, RolloutID: r.ID, Ensure: r.Mode == ModeEnsure, Preflight: r.Preflight}
	for {
		next, err := s.nextBatch(ctx, r.ID, p.Attempt)
		if err != nil {
			return err
		}
		if next.attempt != p.Attempt {
			return nil // retried since: the new attempt's fan-out takes over
		}
		switch next.status {
		case StatusCanceled:
			return s.moveUnqueued(ctx, r.ID, p.Attempt, tasks.StatusCanceled, "its rollout was canceled before it ran")
		case StatusFailed:
			return nil
		}
		done, total, batch := next.done, next.total, next.platforms
		if done >= total {
			break
		}
		changes := make([]tasks.JumpDomainChange, len(batch))
		for i, appid := range batch {
			changes[i] = change
			changes[i].Platform = appid
		}
		queued := len(batch)
		problems, err := s.client.EnqueueRollout(ctx, r.ID, p.Attempt, changes, s.cfg.BulkQueue)
		switch {
		case errors.Is(err, tasks.ErrRolloutStopped):
			// Canceled or retried meanwhile: the cursor stays before this
			// batch, whose platforms are recorded as never queued.
			queued = 0
		case err != nil:
			return err
		}
		for i, perr := range problems {
			if perr != nil {
				if err := s.failPlatform(ctx, r.ID, TaskID(r.ID, p.Attempt, changes[i].Platform), changes[i], "could not be queued: "+perr.Error()); err != nil {
					return err
				}
			}
		}
		// KEEPTTL: the rollout may have finished, and its keys begun to
		// expire, while this batch was queued.
		if err := s.rdb.SetArgs(ctx, s.cursorKey(r.ID, p.Attempt), done+int64(queued), redis.SetArgs{KeepTTL: true}).Err(); err != nil {
			return err
		}
		if s.fanning != nil {
			s.fanning(r.ID, p.Attempt, int(done)+queued, int(total))
		}
	}
	// Changes may all have finished while the last batch was queued.
	return fannedOut.Run(ctx, s.rdb, []string{s.key(r.ID)}, p.Attempt).Err()
}

// definition reads what a fan-out needs of a rollout: its change.
func (s *Service) definition(ctx context.Context, id string) (*Rollout, error) {
	v, err := s.rdb.HMGet(ctx, s.key(id), "action", "domains", "publish", "mode", "preflight").Result()
	if err != nil {
		return nil, fmt.Errorf("read rollout %s: %w", id, err)
	}
	str := func(i int) string { x, _ := v[i].(string); return x }
	if str(0) == "" {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	r := &Rollout{ID: id, Action: tasks.Action(str(0)), Mode: str(3), Preflight: tasks.PreflightMode(str(4))}
	_ = json.Unmarshal([]byte(str(1)), &r.Domains)
	r.Publish, _ = strconv.ParseBool(str(2))
	return r, nil
}

// nextBatchScript reads where an attempt's fan-out stands, in one step:
// KEYS rollout, the attempt's list, its cursor; ARGV attempt, batch size.
// Returns {status, current attempt, done, total, platforms of the next
// batch...}; the platforms only while the attempt is current and its
// rollout neither canceled nor failed.
var nextBatchScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status') or ''
local a = redis.call('HGET', KEYS[1], 'attempt') or '0'
local done = tonumber(redis.call('GET', KEYS[3]) or '0')
local total = redis.call('LLEN', KEYS[2])
local out = {st, a, done, total}
if st ~= 'canceled' and st ~= 'failed' and a == ARGV[1] and done < total then
  for _, p in ipairs(redis.call('LRANGE', KEYS[2], done, done + tonumber(ARGV[2]) - 1)) do out[#out + 1] = p end
end
return out`)

// batchState is what nextBatchScript read.
type batchState struct {
	status      string
	attempt     int
	done, total int64
	platforms   []string
}

func (s *Service) nextBatch(ctx context.Context, id string, attempt int) (batchState, error) {
	res, err := nextBatchScript.Run(ctx, s.rdb, []string{s.key(id), s.listKey(id, attempt), s.cursorKey(id, attempt)}, attempt, s.cfg.BatchSize).Slice()
	if err != nil {
		return batchState{}, fmt.Errorf("read the fan-out of rollout %s: %w", id, err)
	}
	if len(res) < 4 {
		return batchState{}, fmt.Errorf("read the fan-out of rollout %s: %d values", id, len(res))
	}
	var b batchState
	b.status, _ = res[0].(string)
	a, _ := res[1].(string)
	b.attempt, _ = strconv.Atoi(a)
	b.done, _ = res[2].(int64)
	b.total, _ = res[3].(int64)
	for _, p := range res[4:] {
		if x, ok := p.(string); ok {
			b.platforms = append(b.platforms, x)
		}
	}
	return b, nil
}

// failPlatform records one platform's change as failed without queueing
// it, so that the rollout's failures show the reason.
func (s *Service) failPlatform(ctx context.Context, rolloutID, taskID string, c tasks.JumpDomainChange, why string) error {
	rec := tasks.NewRecord(taskID, c, s.cfg.BulkQueue)
	now := s.now().UTC()
	rec.Status, rec.Error, rec.FinishedAt = tasks.StatusFailed, why, &now
	if _, err := s.client.Store().Create(ctx, rec); err != nil {
		return err
	}
	_, attempt, _, _ := tasks.ParseRolloutTaskID(taskID)
	return tasks.MoveRolloutPlatform(ctx, s.rdb, s.cfg.Prefix, rolloutID, attempt, c.Platform, tasks.StatusFailed)
}

// failUnqueued ends a fan-out that cannot finish: the rollout fails with the
// reason, and the platforms not queued yet are failed.
func (s *Service) failUnqueued(ctx context.Context, id string, attempt int, why string) error {
	ok, err := markFailed.Run(ctx, s.rdb, []string{s.key(id)}, why, attempt).Int()
	if err != nil || ok == 0 {
		return err // canceled or gone meanwhile
	}
	return s.moveUnqueued(ctx, id, attempt, tasks.StatusFailed, why)
}

// errLeave aborts a record update that has nothing to do.
var errLeave = errors.New("left as it is")

// markFailed: a rollout fanning out an attempt (ARGV[2]) fails with a
// reason (ARGV[1]).
var markFailed = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'status') ~= 'fanning_out' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1])
return 1`)

// fannedOut: a fanning-out rollout becomes running, or done if its
// platforms all finished meanwhile; ARGV the attempt fanned out.
var fannedOut = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'status') ~= 'fanning_out' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then
  redis.call('HSET', KEYS[1], 'status', 'done')
else
  redis.call('HSET', KEYS[1], 'status', 'running')
end
return 1`)

// moveUnqueued records the platforms a stopped fan-out never queued as
// canceled (the rollout was canceled) or failed (the fan-out failed).
func (s *Service) moveUnqueued(ctx context.Context, id string, attempt int, status tasks.Status, why string) error {
	done, err := s.rdb.Get(ctx, s.cursorKey(id, attempt)).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	rest, err := s.rdb.LRange(ctx, s.listKey(id, attempt), done, -1).Result()
	if err != nil {
		return err
	}
	queued, err := tasks.MoveUnqueuedRolloutPlatforms(ctx, s.rdb, s.cfg.Prefix, id, attempt, rest, status)
	if err != nil {
		return err
	}
	// Records the fan-out wrote before it stopped: a change that has not
	// run is ended now (its task, if queued, then finds it final); one
	// that runs finishes.
	for _, appid := range queued {
		_, err := s.client.Store().Update(ctx, TaskID(id, attempt, appid), func(r *tasks.Record) error {
			if r.Status != tasks.StatusQueued {
				return errLeave
			}
			r.Status, r.Error = status, why
			return nil
		})
		if err != nil && !errors.Is(err, errLeave) && !errors.Is(err, tasks.ErrFinal) && !errors.Is(err, tasks.ErrTaskNotFound) {
			// The record cannot be read: the platform is recorded all the
			// same, or the rollout would never finish.
			if err := tasks.MoveRolloutPlatform(ctx, s.rdb, s.cfg.Prefix, id, attempt, appid, status); err != nil {
				return err
			}
		}
	}
	// KEEPTTL: the last move may have finished the rollout and begun its expiry.
	return s.rdb.SetArgs(ctx, s.cursorKey(id, attempt), done+int64(len(rest)), redis.SetArgs{KeepTTL: true}).Err()
}

// Get reads a rollout.
func (s *Service) Get(ctx context.Context, id string) (*Rollout, error) {
	if !tasks.ValidRolloutID(id) {
		return nil, fmt.Errorf("%w: %q is not a rollout id", ErrNotFound, tasks.Truncate(id))
	}
	var h, c map[string]string
	cmds, perr := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HGetAll(ctx, s.key(id))
		p.HGetAll(ctx, s.countsKey(id))
		p.SCard(ctx, tasks.RolloutPreflightKey(s.cfg.Prefix, id))
		return nil
	})
	if perr != nil {
		return nil, fmt.Errorf("read rollout %s: %w", id, perr)
	}
	h = cmds[0].(*redis.MapStringStringCmd).Val()
	c = cmds[1].(*redis.MapStringStringCmd).Val()
	if len(h) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	r := &Rollout{ID: id, Name: h["name"], Action: tasks.Action(h["action"]), Mode: h["mode"], Status: h["status"], Preflight: tasks.PreflightMode(h["preflight"])}
	_ = json.Unmarshal([]byte(h["domains"]), &r.Domains)
	r.Publish, _ = strconv.ParseBool(h["publish"])
	r.Total, _ = strconv.Atoi(h["total"])
	r.Attempt, _ = strconv.Atoi(h["attempt"])
	r.CreatedAt, _ = time.Parse(time.RFC3339Nano, h["created_at"])
	if f, err := time.Parse(time.RFC3339Nano, h["finished_at"]); err == nil {
		r.FinishedAt = &f
	}
	r.Error = h["error"]
	n := func(k tasks.Status) int { v, _ := strconv.Atoi(c[string(k)]); return v }
	r.Counts = Counts{
		Queued: n(tasks.StatusQueued), Running: n(tasks.StatusRunning), Retrying: n(tasks.StatusRetrying),
		Succeeded: n(tasks.StatusSucceeded), Partial: n(tasks.StatusPartial), Failed: n(tasks.StatusFailed), Canceled: n(tasks.StatusCanceled),
		PreflightFailed: int(cmds[2].(*redis.IntCmd).Val()),
	}
	return r, nil
}

// List returns the most recent rollouts first.
func (s *Service) List(ctx context.Context, limit int) ([]*Rollout, error) {
	ids, err := s.rdb.ZRevRange(ctx, s.indexKey(), 0, int64(limit)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	s.sweep(ctx)
	out := make([]*Rollout, 0, len(ids))
	for _, id := range ids {
		r, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			_ = s.rdb.ZRem(ctx, s.indexKey(), id).Err() // expired
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Outcome is one platform's part in a rollout.
type Outcome struct {
	Platform string       `json:"platform"`
	Status   tasks.Status `json:"status"`
	TaskID   string       `json:"task_id"`
	ErrCode  *int         `json:"errcode,omitempty"`
	ErrMsg   string       `json:"errmsg,omitempty"`
	Error    string       `json:"error,omitempty"`
	Note     string       `json:"note,omitempty"`
	// Preflight is the change's preflight field: each domain checked,
	// "ok" or what is wrong.
	Preflight map[string]string `json:"preflight,omitempty"`
}

// Tasks pages through a rollout's platforms, optionally of one status;
// pass the returned cursor back for the next page ("" when done).
func (s *Service) Tasks(ctx context.Context, id string, status tasks.Status, cursor string, count int) ([]Outcome, string, error) {
	r, err := s.Get(ctx, id)
	if err != nil {
		return nil, "", err
	}
	cur, _ := strconv.ParseUint(cursor, 10, 64)
	var out []Outcome
	for {
		kv, next, err := s.rdb.HScan(ctx, s.stateKey(id), cur, "*", int64(count)).Result()
		if err != nil {
			return nil, "", fmt.Errorf("list rollout %s: %w", id, err)
		}
		var appids []string
		var sts []tasks.Status
		for i := 0; i+1 < len(kv); i += 2 {
			st := tasks.Status(kv[i+1])
			if status != "" && st != status {
				continue
			}
			appids, sts = append(appids, kv[i]), append(sts, st)
		}
		page, err := s.outcomes(ctx, r, appids, sts)
		if err != nil {
			return nil, "", err
		}
		out = append(out, page...)
		cur = next
		if cur == 0 {
			return out, "", nil
		}
		if len(out) >= count {
			return out, strconv.FormatUint(cur, 10), nil
		}
	}
}

// outcomes reads platforms' parts in the rollout from their latest
// records: one read for the current attempt's, one more per earlier
// attempt for those it did not retry.
func (s *Service) outcomes(ctx context.Context, r *Rollout, appids []string, sts []tasks.Status) ([]Outcome, error) {
	out := make([]Outcome, len(appids))
	missing := make([]int, 0, len(appids))
	for i, a := range appids {
		out[i] = Outcome{Platform: a, Status: sts[i], TaskID: TaskID(r.ID, r.Attempt, a)}
		missing = append(missing, i)
	}
	for a := r.Attempt; a >= 0 && len(missing) > 0; a-- {
		ids := make([]string, len(missing))
		for j, i := range missing {
			ids[j] = TaskID(r.ID, a, appids[i])
		}
		recs, err := s.client.Store().GetMany(ctx, ids)
		if err != nil {
			return nil, err
		}
		left := missing[:0]
		for j, i := range missing {
			rec := recs[j]
			if rec == nil {
				left = append(left, i)
				continue
			}
			o := &out[i]
			o.TaskID, o.ErrCode, o.ErrMsg, o.Error, o.Note, o.Preflight = rec.TaskID, rec.ErrCode, rec.ErrMsg, rec.Error, rec.Note, rec.Preflight
		}
		missing = left
	}
	for i := range out {
		if out[i].Error == "" && out[i].Status == tasks.StatusFailed {
			out[i].Error = r.Error // never queued: the fan-out failed
		}
	}
	return out, nil
}

// PreflightFailures lists the platforms whose change found a domain not
// serving its verification file, whatever their status (in warn mode
// they were called anyway), sorted by appid.
func (s *Service) PreflightFailures(ctx context.Context, id string) ([]Outcome, error) {
	r, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	appids, err := s.rdb.SMembers(ctx, tasks.RolloutPreflightKey(s.cfg.Prefix, id)).Result()
	if err != nil {
		return nil, fmt.Errorf("list rollout %s preflight failures: %w", id, err)
	}
	sort.Strings(appids)
	sts := make([]tasks.Status, len(appids))
	if len(appids) > 0 {
		vals, err := s.rdb.HMGet(ctx, s.stateKey(id), appids...).Result()
		if err != nil {
			return nil, fmt.Errorf("list rollout %s: %w", id, err)
		}
		for i, v := range vals {
			st, _ := v.(string)
			sts[i] = tasks.Status(st)
		}
	}
	return s.outcomes(ctx, r, appids, sts)
}

// Cancel stops what has not run: the fan-out stops, queued and retrying
// changes are canceled; running ones finish.
func (s *Service) Cancel(ctx context.Context, id string) (*Rollout, error) {
	if !tasks.ValidRolloutID(id) {
		return nil, fmt.Errorf("%w: %q is not a rollout id", ErrNotFound, tasks.Truncate(id))
	}
	r, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.FinishedAt != nil {
		return r, nil
	}
	if err := s.rdb.HSet(ctx, s.key(id), "status", StatusCanceled).Err(); err != nil {
		return nil, err
	}
	var cur uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, s.stateKey(id), cur, "*", 500).Result()
		if err != nil {
			return nil, err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			st := tasks.Status(kv[i+1])
			if st != tasks.StatusQueued && st != tasks.StatusRetrying {
				continue
			}
			// Only what waits: a change already running finishes, and
			// its platform is not run again by a retry.
			_, err := s.client.CancelWaiting(ctx, TaskID(id, r.Attempt, kv[i]))
			switch {
			case errors.Is(err, tasks.ErrTaskNotFound):
				// Not fanned out yet: the fan-out records it when it stops.
			case err != nil && !errors.Is(err, tasks.ErrFinal) && !errors.Is(err, tasks.ErrRunning):
				return nil, err
			}
		}
		if cur = next; cur == 0 {
			break
		}
	}
	// If the fan-out already finished, nothing else will record the rest.
	if err := s.moveUnqueued(ctx, id, r.Attempt, tasks.StatusCanceled, "its rollout was canceled before it ran"); err != nil {
		return nil, err
	}
	return s.Get(ctx, id)
}

// Retry re-enqueues only the failed and canceled platforms, as a new
// attempt of the same rollout. Retrying a rollout still fanning out resumes
// its fan-out.
func (s *Service) Retry(ctx context.Context, id string) (*Rollout, error) {
	if !tasks.ValidRolloutID(id) {
		return nil, fmt.Errorf("%w: %q is not a rollout id", ErrNotFound, tasks.Truncate(id))
	}
	n, attempt, err := tasks.RetryRollout(ctx, s.rdb, s.cfg.Prefix, id)
	switch {
	case err != nil:
		return nil, err
	case n == tasks.RetryNoSuch:
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	case n == tasks.RetryNothing:
		return s.Get(ctx, id)
	}
	// A new attempt, or one whose fan-out was never queued (a retry cut
	// short): queueing it again is harmless, its task id is fixed.
	if err := s.queueFanout(ctx, id, attempt); err != nil {
		return nil, err
	}
	if err := s.confirm(ctx, id); err != nil {
		return nil, err
	}
	return s.Get(ctx, id)
}

// confirm waits for Redis replicas to have the rollout (see
// tasks.Durability): its record, and its fan-out's cursor.
func (s *Service) confirm(ctx context.Context, id string) error {
	return s.cfg.Durability.Confirm(ctx, s.rdb, s.cfg.Prefix, "rollout "+id, s.key(id), s.stateKey(id))
}

// Close releases the asynq client.
func (s *Service) Close() error { return s.asynq.Close() }

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func dedupe(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if x != "" && !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

func chunks(xs []string, n int) [][]string {
	var out [][]string
	for len(xs) > n {
		out = append(out, xs[:n])
		xs = xs[n:]
	}
	if len(xs) > 0 {
		out = append(out, xs)
	}
	return out
}
