package tasks

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/ticket"
)

// ClientConfig configures a Client. The zero value works with the defaults.
type ClientConfig struct {
	// Prefix namespaces wxdomain's Redis keys; default DefaultPrefix.
	Prefix string
	// Queue the changes go to; default QueueDefault.
	Queue string
	// ResultTTL is how long records stay readable; default DefaultResultTTL.
	ResultTTL time.Duration
	// Rules validate every change before it is enqueued.
	Rules Rules
	// PollInterval is the longest pause between two reads in Wait; default 1s.
	PollInterval time.Duration
	// Durability makes Enqueue, Cancel and the records' final writes wait
	// for Redis replicas (see Durability); off by default.
	Durability Durability
	// Retry, if set, makes Enqueue try again for that long when Redis did
	// not confirm the submission (ErrUnconfirmed) or did not answer (a
	// failover under way). Each try uses the same idempotency key, one
	// Enqueue makes up when none is given, so a retry never creates a
	// second change.
	Retry time.Duration
	// OnRetry, if set, is told of each failed try before the next.
	OnRetry func(err error, next time.Duration)
}

// EnqueueOptions are per-submission options.
type EnqueueOptions struct {
	// IdempotencyKey makes a repeated submission return the first one's
	// record; the same key with a different change is refused with
	// ErrIdempotencyConflict.
	IdempotencyKey string
	// Queue overrides the client's queue for this change.
	Queue string
	// ProcessAt schedules the change for later; zero means now.
	ProcessAt time.Time
	// TaskID sets the task id instead of a random one. Enqueueing the same
	// id again is harmless: a change already under way or finished is not
	// queued twice (rollouts derive ids from rollout and platform).
	TaskID string
}

// ErrIdempotencyConflict is returned when an idempotency key was first used
// for a different change.
var ErrIdempotencyConflict = errors.New("idempotency key already used for a different change")

// ErrInvalidTicket is returned by SetTicket for an empty or oversized ticket.
var ErrInvalidTicket = errors.New("ticket must be 1 to 1024 characters")

// ErrInvalidTicketTime is returned for a ticket creation time in the
// future: it would make every later push look older, and be ignored.
var ErrInvalidTicketTime = errors.New("a ticket's creation time must not be in the future; give WeChat's CreateTime (Unix seconds)")

// TicketClockSkew is how far in the future a ticket's creation time may be,
// for clocks that disagree.
const TicketClockSkew = 5 * time.Minute

// CheckTicketTime refuses a ticket creation time in the future (beyond
// TicketClockSkew); zero means none was given.
func CheckTicketTime(t time.Time) error {
	if !t.IsZero() && t.After(time.Now().Add(TicketClockSkew)) {
		return ErrInvalidTicketTime
	}
	return nil
}

// ErrInvalidIdempotencyKey is returned for an empty-after-trim or oversized key.
var ErrInvalidIdempotencyKey = errors.New("idempotency key must be 1 to 255 printable characters")

// Client enqueues changes and reads their records. It is safe for
// concurrent use.
type Client struct {
	rdb     redis.UniversalClient
	asynq   *asynq.Client
	inspect *asynq.Inspector
	store   *Store
	cfg     ClientConfig
}

// NewClient returns a client over an existing Redis connection, which the
// caller keeps ownership of.
func NewClient(rdb redis.UniversalClient, cfg ClientConfig) *Client {
	if cfg.Queue == "" {
		cfg.Queue = QueueDefault
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.ResultTTL <= 0 {
		cfg.ResultTTL = DefaultResultTTL
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	carryRides(rdb)
	return &Client{
		rdb:     rdb,
		asynq:   asynq.NewClientFromRedisClient(rdb),
		inspect: asynq.NewInspectorFromRedisClient(rdb),
		store:   NewStore(rdb, cfg.Prefix, cfg.ResultTTL).WithDurability(cfg.Durability),
		cfg:     cfg,
	}
}

// Store is the record store the client reads.
func (c *Client) Store() *Store { return c.store }

type idempotencyEntry struct {
	TaskID      string `json:"task_id"`
	Fingerprint string `json:"fingerprint"`
}

// Enqueue validates the change, records it as queued and puts it on the
// queue. Nothing invalid reaches Redis: a *ValidationError is returned
// instead. With an idempotency key, a repeated identical submission returns
// the first record (Replayed set) and repairs a submission that was cut
// short between writing the record and enqueueing.
func (c *Client) Enqueue(ctx context.Context, change JumpDomainChange, opts EnqueueOptions) (*Record, error) {
	if c.cfg.Retry <= 0 {
		return c.enqueueAcked(ctx, change, opts)
	}
	if opts.IdempotencyKey == "" && opts.TaskID == "" {
		opts.IdempotencyKey = "retry:" + newTaskID()
	}
	deadline := time.Now().Add(c.cfg.Retry)
	delay := 100 * time.Millisecond
	for {
		rec, err := c.enqueueAcked(ctx, change, opts)
		if err == nil || !Retryable(err) || time.Now().Add(delay).After(deadline) {
			return rec, err
		}
		if c.cfg.OnRetry != nil {
			c.cfg.OnRetry(err, delay)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// Retryable tells whether a failed submission may succeed if made again
// with the same idempotency key: Redis did not confirm it, or did not
// answer for the moment.
func Retryable(err error) bool {
	return errors.Is(err, ErrUnconfirmed) || RedisUnavailable(err)
}

func (c *Client) enqueueAcked(ctx context.Context, change JumpDomainChange, opts EnqueueOptions) (*Record, error) {
	rec, err := c.enqueue(ctx, change, opts)
	if err != nil {
		return nil, err
	}
	if err := c.ack(ctx, rec, opts.IdempotencyKey); err != nil {
		return nil, err
	}
	return rec, nil
}

// ack confirms a submission on Redis replicas (Durability): its record,
// its task while the record is queued, and its idempotency key.
func (c *Client) ack(ctx context.Context, rec *Record, idemKey string) error {
	rb := readBack{
		exist:  []string{AsynqTaskKey(rec.Queue, rec.TaskID)},
		values: []string{c.store.key(rec.TaskID)},
	}
	if idemKey != "" {
		rb.exist = append(rb.exist, c.idemKey(idemKey))
	}
	rb.ok = func(exist []bool, values []string) bool {
		var r Record
		if json.Unmarshal([]byte(values[0]), &r) != nil {
			return false
		}
		if idemKey != "" && !exist[1] {
			return false
		}
		// A task that ran is gone from asynq; its record says so.
		return exist[0] || r.Status != StatusQueued
	}
	return c.cfg.Durability.confirm(ctx, c.rdb, c.cfg.Prefix, "change "+rec.TaskID, rb)
}

func (c *Client) idemKey(k string) string { return c.cfg.Prefix + "idem:" + hashKey(k) }

func (c *Client) enqueue(ctx context.Context, change JumpDomainChange, opts EnqueueOptions) (*Record, error) {
	if err := change.ValidateWith(c.cfg.Rules); err != nil {
		return nil, err
	}
	queue := opts.Queue
	if queue == "" {
		queue = c.cfg.Queue
	}
	taskID := newTaskID()
	if opts.TaskID != "" {
		if !ValidTaskID(opts.TaskID) {
			return nil, fmt.Errorf("task id %q: want 32 lower-case hex digits or a rollout change's id (use an idempotency key to name a submission)", Truncate(opts.TaskID))
		}
		return c.enqueueOnce(ctx, opts.TaskID, change, queue, opts)
	}
	if opts.IdempotencyKey != "" {
		if !ValidIdempotencyKey(opts.IdempotencyKey) {
			return nil, ErrInvalidIdempotencyKey
		}
		entry := idempotencyEntry{TaskID: taskID, Fingerprint: fingerprint(change, queue)}
		b, _ := json.Marshal(entry)
		key := c.idemKey(opts.IdempotencyKey)
		ok, err := c.rdb.SetNX(ctx, key, b, c.cfg.ResultTTL).Result()
		if err != nil {
			return nil, fmt.Errorf("store idempotency key: %w", err)
		}
		if !ok {
			return c.replay(ctx, key, entry, change, queue, opts)
		}
	}
	rec := NewRecord(taskID, change, queue)
	if opts.IdempotencyKey != "" {
		// In order: a repeated submission repairs from the record.
		if _, err := c.store.Create(ctx, rec); err != nil {
			return nil, err
		}
		if err := c.enqueueTask(ctx, rec, opts); err != nil {
			return nil, err
		}
		return rec, nil
	}
	// Record and task go in one round trip, the record first: the record
	// rides along with asynq's own command for the task (see ride).
	rec.stamp(c.store.now().UTC())
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode record %s: %w", taskID, err)
	}
	r := &ride{key: c.store.key(taskID), value: b, ttl: c.store.ttl}
	enqErr := c.enqueueTask(context.WithValue(ctx, rideKey{}, r), rec, opts)
	_, createErr := r.outcome()
	if enqErr != nil {
		// Nobody can repair this submission, so don't leave a queued
		// record behind that no worker will ever run (whether or not the
		// write's answer came back; the id is new, so nothing else is
		// deleted, and a task that landed after all has its record
		// written from the payload by the worker).
		_ = c.store.Delete(context.WithoutCancel(ctx), taskID)
		return nil, enqErr
	}
	if createErr != nil {
		// Not written with the task (or not sent): written now; a worker
		// that took the task meanwhile wrote it from the payload.
		_, createErr = c.store.Create(context.WithoutCancel(ctx), rec)
	}
	if createErr != nil {
		// The task is queued; the worker writes the record when it runs.
		return nil, fmt.Errorf("change %s queued, but its record could not be written yet: %w", taskID, createErr)
	}
	rec.stored = b
	return rec, nil
}

// ride is a record write that goes in the same round trip as the next
// command sent under its context: asynq's own command that queues the
// task (or, the first time a process queues to a queue, asynq's SADD of
// the queue's name, just before it: the record still goes first). Redis
// runs the two from one read, for the price of one round trip; asynq's
// command is sent as asynq made it.
type ride struct {
	key   string
	value []byte
	ttl   time.Duration
	mu    sync.Mutex
	taken bool
	set   *redis.BoolCmd
}

type rideKey struct{}

// outcome reports whether the record was written with the task; an error
// when it was not sent, or failed.
func (r *ride) outcome() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.set == nil {
		return false, errors.New("the record was not sent with the task")
	}
	ok, err := r.set.Result()
	if err == nil && !ok {
		err = errors.New("a record with this id exists")
	}
	return ok, err
}

// take hands the ride to the first command that can carry it.
func (r *ride) take() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.taken {
		return false
	}
	r.taken = true
	return true
}

// rides carries rides on a client's commands (installed once per client).
type rides struct{ rdb redis.UniversalClient }

var ridden sync.Map // the clients rides are installed on

func carryRides(rdb redis.UniversalClient) {
	if _, done := ridden.LoadOrStore(rdb, true); !done {
		rdb.AddHook(rides{rdb})
	}
}

func (rides) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h rides) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r, ok := ctx.Value(rideKey{}).(*ride)
		if !ok || !r.take() {
			return next(ctx, cmd)
		}
		var set *redis.BoolCmd
		_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			set = p.SetNX(ctx, r.key, r.value, r.ttl)
			return p.Process(ctx, cmd)
		})
		r.mu.Lock()
		r.set = set
		r.mu.Unlock()
		if cerr := cmd.Err(); cerr != nil || err == nil {
			return cerr
		}
		return nil // the record's own failure is the ride's (outcome)
	}
}
func (rides) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// EnqueueRollout queues the changes of a rollout attempt (the fan-out's
// batch): each is validated (its error, if any, is returned in place and
// nothing is queued for it), then the records of the valid ones are created
// in one step, only while the attempt is the rollout's and it is not
// canceled (else ErrRolloutStopped and nothing is queued), then their
// tasks queued. Running it again for the same changes queues nothing twice.
func (c *Client) EnqueueRollout(ctx context.Context, rollout string, attempt int, changes []JumpDomainChange, queue string) ([]error, error) {
	problems := make([]error, len(changes))
	var recs []*Record
	for i := range changes {
		ch := changes[i]
		ch.RolloutID = rollout
		if err := ch.ValidateWith(c.cfg.Rules); err != nil {
			problems[i] = err
			continue
		}
		recs = append(recs, NewRecord(RolloutTaskID(rollout, attempt, ch.Platform), ch, queue))
	}
	if len(recs) == 0 {
		return problems, nil
	}
	if _, err := c.store.createForRollout(ctx, rollout, attempt, recs); err != nil {
		return nil, err
	}
	// A record there already is queued again: a fan-out that stopped
	// between a record and its task repairs it (asynq refuses a second
	// task with the same id; a change that ran finds its record final).
	// The batch's tasks go a few at a time: each is a round trip of its
	// own (asynq queues one task per call).
	if err := eachAtOnce(ctx, len(recs), fanoutParallel, func(ctx context.Context, i int) error {
		return c.enqueueTask(ctx, recs[i], EnqueueOptions{})
	}); err != nil {
		return nil, err
	}
	return problems, nil
}

// fanoutParallel is how many of a batch's tasks are queued at once.
const fanoutParallel = 8

// eachAtOnce runs fn for 0..n-1, at most parallel at a time, and returns
// the first error (the rest are not started).
func eachAtOnce(ctx context.Context, n, parallel int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(parallel, n); w++ {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// enqueueOnce queues a change under a given id unless a record with that id
// shows it already ran or runs.
func (c *Client) enqueueOnce(ctx context.Context, id string, change JumpDomainChange, queue string, opts EnqueueOptions) (*Record, error) {
	rec := NewRecord(id, change, queue)
	var (
		created bool
		err     error
	)
	if rid, attempt, _, ok := ParseRolloutTaskID(id); ok && rid == change.RolloutID {
		// A rollout's change is created only while its attempt is the
		// rollout's and it is not canceled, in one step: a cancel or a
		// retry knows every change the fan-out will ever queue.
		var done []bool
		if done, err = c.store.createForRollout(ctx, rid, attempt, []*Record{rec}); err == nil {
			created = done[0]
		}
	} else {
		created, err = c.store.Create(ctx, rec)
	}
	if err != nil {
		return nil, err
	}
	if !created {
		if rec, err = c.store.Get(ctx, id); err != nil {
			return nil, err
		}
		rec.Replayed = true
		if rec.Status != StatusQueued {
			return rec, nil
		}
	}
	if err := c.enqueueTask(ctx, rec, opts); err != nil {
		return nil, err
	}
	return rec, nil
}

func (c *Client) replay(ctx context.Context, key string, want idempotencyEntry, change JumpDomainChange, queue string, opts EnqueueOptions) (*Record, error) {
	b, err := c.rdb.Get(ctx, key).Bytes()
	if err != nil {
		return nil, fmt.Errorf("read idempotency key: %w", err)
	}
	var got idempotencyEntry
	if err := json.Unmarshal(b, &got); err != nil {
		return nil, fmt.Errorf("decode idempotency key: %w", err)
	}
	if got.Fingerprint != want.Fingerprint {
		return nil, fmt.Errorf("%w (task %s)", ErrIdempotencyConflict, got.TaskID)
	}
	rec, err := c.store.Get(ctx, got.TaskID)
	if errors.Is(err, ErrTaskNotFound) {
		// The first submission stopped before writing its record.
		rec = NewRecord(got.TaskID, change, queue)
		if _, err := c.store.Create(ctx, rec); err != nil {
			return nil, err
		}
		rec, err = c.store.Get(ctx, got.TaskID)
	}
	if err != nil {
		return nil, err
	}
	if rec.Status == StatusQueued {
		// Possibly never enqueued: enqueueing again is harmless, asynq
		// refuses a second task with the same id.
		if err := c.enqueueTask(ctx, rec, opts); err != nil {
			return nil, err
		}
	}
	rec.Replayed = true
	return rec, nil
}

func (c *Client) enqueueTask(ctx context.Context, rec *Record, opts EnqueueOptions) error {
	aopts := []asynq.Option{asynq.TaskID(rec.TaskID), asynq.Queue(rec.Queue)}
	if !opts.ProcessAt.IsZero() {
		aopts = append(aopts, asynq.ProcessAt(opts.ProcessAt))
	}
	task, err := newRecordTask(rec, aopts...)
	if err != nil {
		return err
	}
	_, err = c.asynq.EnqueueContext(ctx, task)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("enqueue task %s: %w", rec.TaskID, err)
	}
	return nil
}

// NewRecord is the queued record of a change about to be enqueued.
func NewRecord(id string, change JumpDomainChange, queue string) *Record {
	return &Record{
		TaskID:        id,
		Platform:      change.Platform,
		Action:        change.Action,
		Domains:       append([]string{}, change.Domains...),
		Publish:       change.Publish,
		Queue:         queue,
		Status:        StatusQueued,
		RolloutID:     change.RolloutID,
		Ensure:        change.Ensure,
		PreflightMode: change.Preflight,
	}
}

// Get returns a task's record, or an error wrapping ErrTaskNotFound.
func (c *Client) Get(ctx context.Context, taskID string) (*Record, error) {
	if !ValidTaskID(taskID) {
		return nil, fmt.Errorf("%w: %q is not a task id", ErrTaskNotFound, Truncate(taskID))
	}
	return c.store.Get(ctx, taskID)
}

// Wait polls the record until it is final or ctx ends; on ctx's end it
// returns the last record read together with ctx's error. The record is
// read at least once, even when ctx has already ended, so that a short
// wait never hides a record that exists.
func (c *Client) Wait(ctx context.Context, taskID string) (*Record, error) {
	delay := 50 * time.Millisecond
	var last *Record
	for first := true; ; first = false {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if first {
			rctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), firstReadTimeout)
		}
		rec, err := c.Get(rctx, taskID)
		cancel()
		if err != nil && last != nil && ctx.Err() != nil {
			return last, ctx.Err() // the wait ended during a read
		}
		if err != nil {
			return rec, err
		}
		last = rec
		if rec.Status.Final() {
			return rec, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return rec, ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, c.cfg.PollInterval)
	}
}

// firstReadTimeout bounds Wait's first read, which does not end with the
// caller's context.
const firstReadTimeout = 5 * time.Second

// Cancel stops a change that has not finished. A queued or retrying change
// is removed from the queue and recorded as canceled at once. A running one
// is interrupted; if WeChat answered before the interruption, the record
// keeps that outcome. Cancel returns the record as it then stands, with
// ErrFinal when the change had already finished.
func (c *Client) Cancel(ctx context.Context, taskID string) (*Record, error) {
	rec, done, err := c.cancelIfWaiting(ctx, taskID)
	if done || err != nil {
		return rec, err
	}
	// Running: ask the worker to stop. It records canceled when the
	// context ends, unless WeChat answered first.
	if _, err := c.store.Update(ctx, taskID, func(r *Record) error {
		r.CancelRequested = true
		return nil
	}); err != nil && !errors.Is(err, ErrFinal) {
		return nil, err
	}
	if err := c.inspect.CancelProcessing(taskID); err != nil {
		return nil, fmt.Errorf("signal cancel of task %s: %w", taskID, err)
	}
	// The attempt may have ended just before the signal and put the task
	// back to wait for a retry: take it out of the queue then.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err = c.Get(ctx, taskID)
		if err != nil || rec.Status.Final() {
			return rec, err
		}
		if rec.Status != StatusRunning && c.inspect.DeleteTask(rec.Queue, taskID) == nil {
			if err := c.release(ctx, rec); err != nil {
				return nil, err
			}
			return c.markCanceled(ctx, taskID, CanceledBefore)
		}
		if time.Now().After(deadline) {
			return rec, nil // still winding down; the caller can poll
		}
		select {
		case <-ctx.Done():
			return rec, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// release gives back the call slot a canceled change held.
func (c *Client) release(ctx context.Context, rec *Record) error {
	if !ValidAppID(rec.Platform) {
		return nil
	}
	// The slot of an ensure-mode change's second call too (worker.secondHolder).
	return limit.Release(ctx, c.rdb, c.cfg.Prefix, rec.Platform, rec.TaskID, rec.TaskID+"#2")
}

// ErrRunning is returned by CancelWaiting for a change that is running.
var ErrRunning = errors.New("the change is running")

// CancelWaiting cancels a change only if it waits (queued, scheduled,
// retrying); a running one is left to finish, and ErrRunning returned.
// Rollouts cancel this way: "running changes finish".
func (c *Client) CancelWaiting(ctx context.Context, taskID string) (*Record, error) {
	rec, done, err := c.cancelIfWaiting(ctx, taskID)
	if done || err != nil {
		return rec, err
	}
	return rec, ErrRunning
}

// cancelIfWaiting cancels a change that is not running: done is false
// (and rec the record read) when asynq would not let go of its task, the
// change running. A final change is done, with ErrFinal.
func (c *Client) cancelIfWaiting(ctx context.Context, taskID string) (rec *Record, done bool, err error) {
	rec, err = c.Get(ctx, taskID)
	if err != nil {
		return nil, true, err
	}
	if rec.Status.Final() {
		return rec, true, ErrFinal
	}
	err = c.inspect.DeleteTask(rec.Queue, taskID)
	switch {
	case err == nil, errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		// Gone from the queue (or never reached it): nothing will run it.
		// If a worker picked it up meanwhile, it sees the canceled record
		// and stops before calling WeChat. The call slot it may hold goes
		// to the changes after it.
		if err := c.release(ctx, rec); err != nil {
			return nil, true, err
		}
		rec, err = c.markCanceled(ctx, taskID, CanceledBefore)
		return rec, true, err
	}
	return rec, false, nil
}

// markCanceled records a cancel; why says what happened, from the record
// as it stood (what its earlier attempts did).
func (c *Client) markCanceled(ctx context.Context, taskID string, why func(*Record) string) (*Record, error) {
	rec, err := c.store.Update(ctx, taskID, func(r *Record) error {
		r.Error = why(r)
		r.Status = StatusCanceled
		return nil
	})
	if errors.Is(err, ErrFinal) {
		return rec, ErrFinal
	}
	return rec, err
}

// Pause is why and until when a platform's changes wait.
type Pause = pause.Pause

// TicketResult is what storing a ticket did.
type TicketResult struct {
	// Stored is false when the stored ticket was created no earlier than
	// this one (a replayed or late push): nothing changed.
	Stored bool `json:"stored"`
	// CreatedAt is the creation time of the ticket now in force.
	CreatedAt time.Time `json:"created_at"`
	// EndedPause is the pause the new ticket ended (no ticket, a refused
	// ticket); KeptPause one it does not cure (quota, frequency, IP
	// whitelist, wrong secret), which ends at its time or by Resume.
	EndedPause *Pause `json:"ended_pause,omitempty"`
	KeptPause  *Pause `json:"kept_pause,omitempty"`
	// ResumedChanges counts the waiting changes run at once.
	ResumedChanges int `json:"resumed_changes"`
}

// SetTicket stores a platform's component_verify_ticket (for services that
// receive WeChat's pushes themselves). createdAt is WeChat's CreateTime of
// the push: a ticket created no later than the stored one changes nothing.
// A zero createdAt means now, and always stores. A stored ticket ends a
// pause it cures (no ticket, 61005, 61006) and runs the platform's waiting
// changes at once; other pauses stay.
func (c *Client) SetTicket(ctx context.Context, appid, value string, createdAt time.Time) (TicketResult, error) {
	if !ValidAppID(appid) {
		return TicketResult{}, fmt.Errorf("appid %q: want %s", Truncate(appid), AppIDForm)
	}
	if value == "" || len(value) > 1024 {
		return TicketResult{}, ErrInvalidTicket
	}
	if err := CheckTicketTime(createdAt); err != nil {
		return TicketResult{}, err
	}
	set, err := ticket.NewStore(c.rdb, c.cfg.Prefix).SetWithResult(ctx, appid, value, createdAt)
	if err != nil {
		return TicketResult{}, err
	}
	res := TicketResult{Stored: set.Stored, CreatedAt: set.InForce.UTC()}
	if !set.Same {
		return res, nil
	}
	// Stored now, or by an earlier delivery of the same push whose resume
	// may not have happened (WeChat retries a push answered with an error).
	r, err := pause.NewStore(c.rdb, c.cfg.Prefix).ResumeForTicket(ctx, c.inspect, appid)
	if err != nil {
		return res, err
	}
	res.EndedPause, res.KeptPause, res.ResumedChanges = r.Ended, r.Kept, r.Started
	return res, nil
}

// ResumeResult is what an operator's resume did.
type ResumeResult struct {
	// EndedPause is the pause that ended; nil if none was in force.
	EndedPause *Pause `json:"ended_pause"`
	// ResumedChanges counts the waiting changes run at once.
	ResumedChanges int `json:"resumed_changes"`
}

// Resume ends whatever pause a platform is in, at an operator's request
// (the IP is whitelisted now, the quota was cleared), and runs its waiting
// changes at once.
func (c *Client) Resume(ctx context.Context, appid string) (ResumeResult, error) {
	if !ValidAppID(appid) {
		return ResumeResult{}, fmt.Errorf("appid %q: want %s", Truncate(appid), AppIDForm)
	}
	r, err := pause.NewStore(c.rdb, c.cfg.Prefix).Resume(ctx, c.inspect, appid)
	if err != nil {
		return ResumeResult{}, err
	}
	return ResumeResult{EndedPause: r.Ended, ResumedChanges: r.Started}, nil
}

// Close releases the client's asynq handles; the Redis connection stays
// open for its owner.
func (c *Client) Close() error {
	return errors.Join(c.asynq.Close(), c.inspect.Close())
}

func newTaskID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidIdempotencyKey tells whether k is an idempotency key: 1 to 255
// printable characters.
func ValidIdempotencyKey(k string) bool {
	if len(k) == 0 || len(k) > 255 {
		return false
	}
	for _, r := range k {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func hashKey(k string) string {
	h := sha256.Sum256([]byte(k))
	return hex.EncodeToString(h[:])
}

func fingerprint(c JumpDomainChange, queue string) string {
	b, _ := json.Marshal(struct {
		C JumpDomainChange
		Q string
	}{c, queue})
	return hashKey(string(b))
}
