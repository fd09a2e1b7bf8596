package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/internal/limit"
)

// Status is where a change stands. The final ones never change again.
type Status string

// The statuses of a task record.
const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusRetrying  Status = "retrying"
	StatusSucceeded Status = "succeeded"
	// StatusPartial: WeChat answered errcode 0 but listed domains that failed
	// verification; those were not applied.
	StatusPartial  Status = "partial"
	StatusFailed   Status = "failed"
	StatusCanceled Status = "canceled"
)

// Final reports whether s is an end state.
func (s Status) Final() bool {
	switch s {
	case StatusSucceeded, StatusPartial, StatusFailed, StatusCanceled:
		return true
	}
	return false
}

// DefaultResultTTL is how long a record stays readable after its last change.
const DefaultResultTTL = 168 * time.Hour

// Record is the outcome of one change, kept for callers to poll.
type Record struct {
	TaskID   string   `json:"task_id"`
	Platform string   `json:"platform"`
	Action   Action   `json:"action"`
	Domains  []string `json:"domains"`
	Publish  bool     `json:"publish"`
	Queue    string   `json:"queue"`
	Status   Status   `json:"status"`
	// Attempts counts the runs that called WeChat.
	Attempts int `json:"attempts"`
	// ErrCode and ErrMsg are WeChat's answer to the last call, when there was one.
	ErrCode *int   `json:"errcode,omitempty"`
	ErrMsg  string `json:"errmsg,omitempty"`
	// TestingDomains and PublishedDomains are the lists WeChat reported after
	// the change. PublishedDomains is absent when WeChat left it out (a
	// platform never released).
	TestingDomains   *[]string `json:"testing_domains,omitempty"`
	PublishedDomains *[]string `json:"published_domains,omitempty"`
	InvalidDomains   []string  `json:"invalid_domains,omitempty"`
	// Error says in plain words why the change failed or is being retried.
	Error         string     `json:"error,omitempty"`
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	FinishedAt    *time.Time `json:"finished_at,omitempty"`
	RolloutID     string     `json:"rollout_id,omitempty"`
	Ensure        bool       `json:"ensure,omitempty"`
	// Note says what happened when it is not obvious (ensure mode found
	// nothing to change).
	Note string `json:"note,omitempty"`
	// CancelRequested is set when a cancel reached a running task; the
	// worker finishes the record as canceled when it notices.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// PreflightMode is the change's preflight mode as given ("" for the
	// worker's default).
	PreflightMode PreflightMode `json:"preflight_mode,omitempty"`
	// Preflight maps each domain checked for the platform's verification
	// file to "ok" or what is wrong with it; absent when nothing was
	// checked (get, delete, off).
	Preflight map[string]string `json:"preflight,omitempty"`
	// ReservedSlot is the moment the rate limiter reserved for the change's
	// call while it waits outside the workers.
	ReservedSlot *time.Time `json:"reserved_slot,omitempty"`

	// Events is the change's timeline, bounded (MaxEvents).
	Events []Event `json:"events,omitempty"`

	// Replayed is true when Enqueue found an earlier submission with the
	// same idempotency key and returned its record.
	Replayed bool `json:"-"`

	// stored is the record's JSON as last read or written by the store:
	// an update from it needs no read first (see Store.FinishFrom).
	stored []byte
}

// stamp dates a new record: created, updated and its first event at
// the same moment (the record a task's payload can rebuild, QueuedRecord).
func (r *Record) stamp(now time.Time) {
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	r.UpdatedAt = r.CreatedAt
	if len(r.Events) == 0 {
		r.addEvent(r.event(r.CreatedAt))
	}
}

// Change is the change the record describes.
func (r *Record) Change() JumpDomainChange {
	return JumpDomainChange{Platform: r.Platform, Action: r.Action, Domains: r.Domains, Publish: r.Publish, RolloutID: r.RolloutID, Ensure: r.Ensure, Preflight: r.PreflightMode}
}

// The values of a record's preflight field: PreflightOK, or a reason that
// starts with PreflightMissing (the domain does not serve the file) or
// PreflightNotChecked (the file could not be had; warn mode went on).
const (
	PreflightOK         = "ok"
	PreflightMissing    = "verification file missing: "
	PreflightNotChecked = "not checked: "
)

// PreflightFailed reports whether a domain of the change was found not to
// serve its verification file.
func (r *Record) PreflightFailed() bool {
	for _, v := range r.Preflight {
		if strings.HasPrefix(v, PreflightMissing) {
			return true
		}
	}
	return false
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// ErrTaskNotFound is returned for a task id with no record (never existed,
// or older than the result TTL).
var ErrTaskNotFound = errors.New("task not found")

// ErrFinal is returned by an update that tried to change a finished record.
var ErrFinal = errors.New("task already finished")

// Store keeps task records in Redis, one JSON string per task, expiring
// ResultTTL after their last change.
type Store struct {
	rdb      redis.UniversalClient
	prefix   string
	ttl      time.Duration
	now      func() time.Time
	onFinish func(*Record)
	dur      Durability
}

// WithDurability makes the store's final writes wait for Redis replicas
// (see Durability); a final record read back is confirmed too. It returns
// the store.
func (s *Store) WithDurability(d Durability) *Store {
	s.dur = d
	return s
}

// OnFinish sets a function called once for each record this store moves to
// a final status (for metrics). Set it before the store is used.
func (s *Store) OnFinish(fn func(*Record)) { s.onFinish = fn }

// NewStore returns a record store. prefix namespaces every key (default
// "wxdomain:"); ttl defaults to DefaultResultTTL.
func NewStore(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if ttl <= 0 {
		ttl = DefaultResultTTL
	}
	return &Store{rdb: rdb, prefix: prefix, ttl: ttl, now: time.Now}
}

// DefaultPrefix namespaces wxdomain's own Redis keys.
const DefaultPrefix = "wxdomain:"

func (s *Store) key(id string) string { return s.prefix + "record:" + id }

// Get reads a record.
func (s *Store) Get(ctx context.Context, id string) (*Record, error) {
	b, err := s.rdb.Get(ctx, s.key(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", id, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode record %s: %w", id, err)
	}
	r.stored = b
	return &r, nil
}

// GetMany reads records in one round trip: nil where there is none (or
// it cannot be decoded).
func (s *Store) GetMany(ctx context.Context, ids []string) ([]*Record, error) {
	out := make([]*Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.key(id)
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("read records: %w", err)
	}
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var r Record
		if json.Unmarshal([]byte(str), &r) == nil {
			r.stored = []byte(str)
			out[i] = &r
		}
	}
	return out, nil
}

// Create writes a new record unless one exists; it reports whether it wrote.
func (s *Store) Create(ctx context.Context, r *Record) (bool, error) {
	r.stamp(s.now().UTC())
	b, err := json.Marshal(r)
	if err != nil {
		return false, fmt.Errorf("encode record %s: %w", r.TaskID, err)
	}
	ok, err := s.rdb.SetNX(ctx, s.key(r.TaskID), b, s.ttl).Result()
	if err != nil {
		return false, fmt.Errorf("write record %s: %w", r.TaskID, err)
	}
	if ok {
		r.stored = b
	}
	return ok, nil
}

// ErrRolloutStopped is returned when a rollout's change is enqueued after
// its rollout was canceled, failed or retried (another attempt).
var ErrRolloutStopped = errors.New("the rollout was canceled or retried")

// createIfRollout: KEYS rollout, then the records; ARGV attempt, TTL ms,
// then each record's JSON. The records are created (those not there yet)
// only while the attempt is the rollout's and it is neither canceled nor
// failed: -1 if not; else a 1 (created) or 0 (there already) per record.
var createIfRollout = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'canceled' or st == 'failed' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return -1 end
local out = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[2]) then out[#out + 1] = 1 else out[#out + 1] = 0 end
end
return out`)

// createForRollout creates the records of a rollout attempt's changes in
// one step, unless the attempt is no longer current or the rollout was
// canceled (ErrRolloutStopped, and nothing is created). It reports which
// it created.
func (s *Store) createForRollout(ctx context.Context, rollout string, attempt int, recs []*Record) ([]bool, error) {
	now := s.now().UTC()
	keys := make([]string, 0, len(recs)+1)
	args := make([]any, 0, len(recs)+2)
	keys = append(keys, RolloutKey(s.prefix, rollout))
	args = append(args, attempt, s.ttl.Milliseconds())
	for _, r := range recs {
		r.stamp(now)
		b, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode record %s: %w", r.TaskID, err)
		}
		keys = append(keys, s.key(r.TaskID))
		args = append(args, b)
	}
	res, err := createIfRollout.Run(ctx, s.rdb, keys, args...).Result()
	if err != nil {
		return nil, fmt.Errorf("write the records of rollout %s: %w", rollout, err)
	}
	list, ok := res.([]any)
	if !ok {
		return nil, ErrRolloutStopped
	}
	created := make([]bool, len(recs))
	for i := range created {
		n, _ := list[i].(int64)
		created[i] = n == 1
		if created[i] {
			recs[i].stored, _ = json.Marshal(recs[i])
		}
	}
	return created, nil
}

// Delete removes a record; used only to undo a submission that never reached the queue.
func (s *Store) Delete(ctx context.Context, id string) error {
	return s.rdb.Del(ctx, s.key(id)).Err()
}

// Update applies fn to the record atomically: it reads the record, applies
// fn and writes the result only if the record did not change meanwhile
// (compare-and-set in one script, which hands back the record as it is
// when it changed, and is retried with it), moving the record's rollout
// platform in the same step. A final record is never changed: fn is not
// called and the current record is returned with ErrFinal. fn may return
// an error to abort without writing.
func (s *Store) Update(ctx context.Context, id string, fn func(*Record) error) (*Record, error) {
	return s.update(ctx, id, updateFrom{}, fn)
}

// FinishFrom is Update starting from a record this store read or wrote
// (Get, Create, Start, an earlier update): when the record is still that,
// the update is one script call, no read first. pacing, if set, is the
// limiter's feedback of the change's call (limit.Limiter.Answered), given
// in the same step as the write: only if the record is written.
func (s *Store) FinishFrom(ctx context.Context, rec *Record, pacing *limit.FeedbackArgs, fn func(*Record) error) (*Record, error) {
	return s.update(ctx, rec.TaskID, updateFrom{expect: rec.stored, pacing: pacing}, fn)
}

// ErrRolloutChanged is returned by UpdateIfRollout when the record's
// rollout is no longer in the status the update depends on.
var ErrRolloutChanged = errors.New("the rollout's status changed")

// UpdateIfRollout is Update, done only while the record's rollout is in a
// status (canceled, say), in the same step; else ErrRolloutChanged.
func (s *Store) UpdateIfRollout(ctx context.Context, id, rolloutStatus string, fn func(*Record) error) (*Record, error) {
	return s.update(ctx, id, updateFrom{rolloutStatus: rolloutStatus}, fn)
}

// ErrRolloutStopping is returned by Start for a rollout change whose
// rollout was canceled, or retried since by another attempt that owns
// its platform now: nothing was written.
var ErrRolloutStopping = errors.New("its rollout was canceled or retried")

// Start is the update a worker makes as a change starts. queued is the
// record as its producer wrote it, rebuilt from the task (QueuedRecord;
// nil if the task does not tell): while the record is still that, the
// update is one script call, and a record missing (its producer's write
// not landed yet, or expired) is written from it. A rollout change's
// update is refused with ErrRolloutStopping, in the same step, when its
// rollout was canceled or its platform belongs to a later attempt.
// queued is the store's from then on (fn may be applied to it).
func (s *Store) Start(ctx context.Context, id string, queued *Record, fn func(*Record) error) (*Record, error) {
	u := updateFrom{guard: true}
	if queued != nil {
		b, err := json.Marshal(queued)
		if err != nil {
			return nil, fmt.Errorf("encode record %s: %w", id, err)
		}
		u.expect, u.create, u.have = b, true, queued
	}
	return s.update(ctx, id, u, fn)
}

// updateFrom is where an update starts.
type updateFrom struct {
	// expect is the record as it is believed to stand; nil: read it.
	expect []byte
	// create: a missing record is written from expect.
	create bool
	// rolloutStatus, if set, is the status the record's rollout must
	// have (ErrRolloutChanged).
	rolloutStatus string
	// guard refuses the update of a stopped rollout's change
	// (ErrRolloutStopping).
	guard bool
	// pacing, if set, is the limiter's feedback given with the write.
	pacing *limit.FeedbackArgs
	// have, if set, is expect decoded, the store's to change (no decoding).
	have *Record
}

func (s *Store) update(ctx context.Context, id string, u updateFrom, fn func(*Record) error) (*Record, error) {
	key := s.key(id)
	b := u.expect
	if b == nil {
		var err error
		b, err = s.rdb.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, id)
		}
		if err != nil {
			return nil, fmt.Errorf("update record %s: %w", id, err)
		}
		u.create = false
	}
	for i := 0; i < 50; i++ {
		var r Record
		if i == 0 && u.have != nil {
			r = *u.have
		} else if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("decode record %s: %w", id, err)
		}
		r.stored = b
		if r.Status.Final() {
			// Final already (as read, or as believed: the script says
			// otherwise below): confirmed before anyone relies on it (a
			// change run again after its final write was not confirmed).
			if u.expect != nil && i == 0 {
				cur, err := s.rdb.Get(ctx, key).Bytes()
				switch {
				case errors.Is(err, redis.Nil):
					return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, id)
				case err != nil:
					return nil, fmt.Errorf("update record %s: %w", id, err)
				case string(cur) != string(b):
					b, u.create = cur, false
					continue
				}
			}
			final := string(b)
			if err := s.dur.confirm(ctx, s.rdb, s.prefix, "the record of "+id, readBack{values: []string{key}, ok: func(_ []bool, v []string) bool { return v[0] == final }}); err != nil {
				return &r, err
			}
			return &r, ErrFinal
		}
		before := r.event(time.Time{})
		if err := fn(&r); err != nil {
			return &r, err
		}
		now := s.now().UTC()
		r.UpdatedAt = now
		if ev := r.event(now); !ev.same(before) {
			r.addEvent(ev)
		}
		finished := r.Status.Final() && r.FinishedAt == nil
		if finished {
			r.FinishedAt = &now
		}
		if r.Status != StatusRetrying {
			r.NextAttemptAt = nil
		}
		nb, err := json.Marshal(&r)
		if err != nil {
			return &r, fmt.Errorf("encode record %s: %w", id, err)
		}
		keys := []string{key, key, key, key, key} // unused outside rollouts
		appid, attempt := "", ""
		if r.RolloutID != "" {
			keys = []string{key, RolloutStateKey(s.prefix, r.RolloutID), RolloutCountsKey(s.prefix, r.RolloutID), RolloutKey(s.prefix, r.RolloutID), key}
			appid = r.Platform
			if _, a, _, ok := ParseRolloutTaskID(id); ok {
				attempt = strconv.Itoa(a) // moves its platform only while its attempt is current
			}
		}
		// The platform's lists as WeChat last reported them, kept in the
		// same step (the console's inventory reads them).
		lists := ""
		if (r.Status == StatusSucceeded || r.Status == StatusPartial) && r.TestingDomains != nil && ValidAppID(r.Platform) {
			keys[4] = PlatformListsKey(s.prefix, r.Platform)
			lb, _ := json.Marshal(PlatformLists{Testing: *r.TestingDomains, Published: r.PublishedDomains, ReadAt: now, TaskID: id})
			lists = string(lb)
		}
		guard := ""
		if u.guard && appid != "" {
			guard = "1" // the owner is compared only for an id naming its attempt
		}
		args := []any{b, nb, s.ttl.Milliseconds(), appid, string(r.Status), now.Format(time.RFC3339Nano), attempt, u.rolloutStatus, flag(r.PreflightFailed()), lists, flag(u.create), guard}
		if u.pacing != nil {
			keys = append(keys, u.pacing.Keys[:]...)
			args = append(args, u.pacing.Args[:]...)
		}
		res, err := casRecord.Run(ctx, s.rdb, keys, args...).Result()
		if err != nil {
			return &r, fmt.Errorf("update record %s: %w", id, err)
		}
		switch v := res.(type) {
		case string:
			// Changed since it was read: the script handed it back.
			b, u.create = []byte(v), false
			continue
		case int64:
			switch v {
			case -1:
				return nil, ErrRolloutChanged
			case -2:
				return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, id)
			case -3:
				return nil, ErrRolloutStopping
			}
		}
		r.stored = nb
		if r.Status.Final() {
			if err := s.dur.confirm(ctx, s.rdb, s.prefix, "the record of "+id, readBack{values: []string{key}, ok: func(_ []bool, v []string) bool { return v[0] == string(nb) }}); err != nil {
				return &r, err
			}
		}
		if finished && s.onFinish != nil {
			s.onFinish(&r)
		}
		return &r, nil
	}
	return nil, fmt.Errorf("update record %s: too much contention", id)
}
