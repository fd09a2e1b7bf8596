// Package tasks is the contract between producers and wxdomain workers: the
// task type, its payload and validation, the task records callers poll, and a
// client that enqueues, polls and cancels changes. Other Go services import it.
package tasks

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
)

// TypeJumpDomain is the asynq task type of a jump-domain change. It is
// permanent: tasks already queued must keep working whatever Go types are
// renamed.
const TypeJumpDomain = "wxdomain:jump_domain"

// Queues the workers listen on. Bulk work (rollouts) goes to the bulk
// queue, which workers serve only when the default queue is empty, so a
// single change starts promptly however much bulk work waits.
const (
	QueueDefault = "wxdomain"
	QueueBulk    = "wxdomain_bulk"
)

// Defaults a producer applies when it enqueues.
const (
	// DefaultTimeout bounds one attempt: token fetch plus one upstream call
	// plus one token-refresh retry, each bounded by the HTTP client's timeout.
	DefaultTimeout = 2 * time.Minute
	// DefaultRetention keeps a finished task visible in the asynq UI for a
	// while; the task record outlives it (see ResultTTL).
	DefaultRetention = time.Hour
	// asynqMaxRetry is a safety net only: the worker counts attempts in the
	// task record and gives up by its own configuration (at most 100), well
	// before this; asynq also counts runs that failed before reaching WeChat
	// (Redis trouble), which must not archive a task with a live record.
	asynqMaxRetry = 1000
)

// Action is what a change does to a platform's jump domains.
type Action string

// The actions of modify_wxa_jump_domain.
const (
	ActionGet    Action = "get"
	ActionSet    Action = "set"
	ActionAdd    Action = "add"
	ActionDelete Action = "delete"
)

// Valid reports whether a is one of the four actions WeChat knows.
func (a Action) Valid() bool {
	switch a {
	case ActionGet, ActionSet, ActionAdd, ActionDelete:
		return true
	}
	return false
}

// JumpDomainChange is the payload of a TypeJumpDomain task.
type JumpDomainChange struct {
	// Platform is the third-party platform's component appid.
	Platform string `json:"platform"`
	Action   Action `json:"action"`
	// Domains are bare host names. Required for set, add and delete; empty
	// for get. Note: set with the full list replaces the platform's list.
	Domains []string `json:"domains,omitempty"`
	// Publish also changes the published (全网发布) configuration, not only
	// the testing one (is_modify_published_together).
	Publish   bool   `json:"publish"`
	RolloutID string `json:"rollout_id,omitempty"`
	// Ensure reads the current lists first and calls only for the
	// difference; nothing is called on a platform already in the desired
	// state, and an add that would exceed the limit fails without a call.
	Ensure bool `json:"ensure,omitempty"`
	// Preflight says whether the worker first checks that each domain
	// to add serves the platform's verification file (see PreflightMode);
	// empty: the worker's default (WXDOMAIN_PREFLIGHT).
	Preflight PreflightMode `json:"preflight,omitempty"`
}

// PreflightMode is what the worker does with a domain that does not serve
// its platform's verification file, before calling WeChat.
type PreflightMode string

// The preflight modes.
const (
	// PreflightEnforce: failing domains are not sent; a change none of
	// whose domains pass fails without a call.
	PreflightEnforce PreflightMode = "enforce"
	// PreflightWarn: the call is made; the record carries the findings.
	PreflightWarn PreflightMode = "warn"
	// PreflightOff: no check.
	PreflightOff PreflightMode = "off"
)

// Valid reports whether m is a mode, or empty (the default).
func (m PreflightMode) Valid() bool {
	switch m {
	case "", PreflightEnforce, PreflightWarn, PreflightOff:
		return true
	}
	return false
}

// Or is m, or def when m is empty.
func (m PreflightMode) Or(def PreflightMode) PreflightMode {
	if m == "" {
		return def
	}
	return m
}

// Rules are the limits a change is validated against.
type Rules struct {
	// MaxDomains defaults to DefaultMaxDomains.
	MaxDomains int
	// KnownPlatform, when set, refuses platforms it does not know.
	KnownPlatform func(appid string) bool
}

// Validate checks the change with the default rules and normalises its
// domains in place (lower case, punycode, duplicates removed).
func (c *JumpDomainChange) Validate() error { return c.ValidateWith(Rules{}) }

// ValidateWith is Validate with explicit rules. On error the change is left
// as it was; the error is a *ValidationError naming the problems (at most
// MaxProblems of them, each value cut to 64 bytes, whatever the input).
func (c *JumpDomainChange) ValidateWith(r Rules) error {
	maxDomains := r.MaxDomains
	if maxDomains <= 0 {
		maxDomains = DefaultMaxDomains
	}
	var problems Problems
	if p, ok := CheckPlatform(c.Platform, r); !ok {
		problems.Add(p)
	}
	if !c.Action.Valid() {
		problems.Add(Problem{Code: CodeInvalidAction, Field: "action", Value: string(c.Action), Reason: "must be one of get, set, add, delete"})
	}

	var domains []string
	switch {
	case c.Action == ActionGet && len(c.Domains) > 0:
		problems.Add(Problem{Code: CodeUnexpectedField, Field: "domains", Reason: "must be empty for get"})
	case c.Action.Valid() && c.Action != ActionGet && len(c.Domains) == 0:
		problems.Add(Problem{Code: CodeMissingDomains, Field: "domains", Reason: fmt.Sprintf("are required for %s", c.Action)})
	default:
		var bad Problems
		domains, bad = normalizeAll(c.Domains)
		// The count is checked first, as WeChat counts: distinct after
		// normalising, a domain that is not valid counting as itself. A list
		// over the limit is one problem, however many of its domains are bad.
		if n := len(domains) + bad.Len(); n > maxDomains {
			problems.Add(Problem{Code: CodeTooManyDomains, Field: "domains", Reason: fmt.Sprintf("has %d distinct domains; the limit is %d", n, maxDomains)})
		} else {
			problems.merge(bad)
		}
	}

	if !c.Preflight.Valid() {
		problems.Add(Problem{Code: CodeInvalidPreflight, Field: "preflight", Value: string(c.Preflight), Reason: "must be one of enforce, warn, off (or empty for the worker's default)"})
	}
	if c.Ensure && c.Action == ActionGet {
		problems.Add(Problem{Code: CodeInvalidAction, Field: "ensure", Reason: "applies to set, add and delete, not get"})
	}
	if err := problems.Err(); err != nil {
		return err
	}
	c.Domains = domains
	return nil
}

// CheckPlatform checks an appid's form, then that the rules know it.
func CheckPlatform(appid string, r Rules) (Problem, bool) {
	switch {
	case appid == "":
		return Problem{Code: CodeInvalidPlatform, Field: "platform", Reason: "is required (the component appid)"}, false
	case !ValidAppID(appid):
		return Problem{Code: CodeInvalidPlatform, Field: "platform", Value: appid, Reason: `is not a component appid ("wx" and 16 lower-case hex digits)`}, false
	case r.KnownPlatform != nil && !r.KnownPlatform(appid):
		return Problem{Code: CodeUnknownPlatform, Field: "platform", Value: appid, Reason: "is not in the platforms file"}, false
	}
	return Problem{}, true
}

// normalizeAll normalises domains, dropping duplicates; the problems of
// the invalid ones (each distinct one counted once) come apart.
func normalizeAll(in []string) ([]string, Problems) {
	var (
		out  []string
		bad  Problems
		seen = make(map[string]bool, len(in))
	)
	for i, d := range in {
		n, err := NormalizeDomain(d)
		if err != nil {
			n = "\x00" + strings.ToLower(d) // its own entry, never a valid domain
		}
		if seen[n] {
			continue
		}
		seen[n] = true
		if err != nil {
			bad.Add(Problem{Code: CodeInvalidDomain, Field: fmt.Sprintf("domains[%d]", i), Value: d, Reason: err.Error()})
			continue
		}
		out = append(out, n)
	}
	return out, bad
}

// NewJumpDomainTask builds the asynq task for a validated change. Options
// given override the defaults (queue, timeout, retention, retry safety net).
func NewJumpDomainTask(c JumpDomainChange, opts ...asynq.Option) (*asynq.Task, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode change: %w", err)
	}
	return asynq.NewTask(TypeJumpDomain, payload, append(taskDefaults(), opts...)...), nil
}

func taskDefaults() []asynq.Option {
	return []asynq.Option{
		asynq.Queue(QueueDefault),
		asynq.Timeout(DefaultTimeout),
		asynq.Retention(DefaultRetention),
		asynq.MaxRetry(asynqMaxRetry),
	}
}

// taskPayload is the payload of a task wxdomain queues: the change, and
// when its record was written, from which a worker rebuilds the record as
// its producer wrote it (QueuedRecord) and starts it in one step.
type taskPayload struct {
	JumpDomainChange
	QueuedAt *time.Time `json:"queued_at,omitempty"`
}

// newRecordTask is the task of a record about to be queued.
func newRecordTask(rec *Record, opts ...asynq.Option) (*asynq.Task, error) {
	p := taskPayload{JumpDomainChange: rec.Change()}
	if !rec.CreatedAt.IsZero() {
		at := rec.CreatedAt
		p.QueuedAt = &at
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode change: %w", err)
	}
	return asynq.NewTask(TypeJumpDomain, payload, append(taskDefaults(), opts...)...), nil
}

// ParseTask decodes a task payload: the change, and when its record was
// written (zero when the producer did not say).
func ParseTask(payload []byte) (JumpDomainChange, time.Time, error) {
	var p taskPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return p.JumpDomainChange, time.Time{}, fmt.Errorf("decode %s payload: %w", TypeJumpDomain, err)
	}
	var at time.Time
	if p.QueuedAt != nil {
		at = p.QueuedAt.UTC()
	}
	return p.JumpDomainChange, at, nil
}

// QueuedRecord is the record of a validated change as its producer wrote
// it at the time the task says (ParseTask).
func QueuedRecord(id string, change JumpDomainChange, queue string, at time.Time) *Record {
	r := NewRecord(id, change, queue)
	r.stamp(at)
	return r
}

// ParseJumpDomainChange decodes a task payload.
func ParseJumpDomainChange(payload []byte) (JumpDomainChange, error) {
	var c JumpDomainChange
	if err := json.Unmarshal(payload, &c); err != nil {
		return c, fmt.Errorf("decode %s payload: %w", TypeJumpDomain, err)
	}
	return c, nil
}
