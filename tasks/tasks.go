// Package tasks is the contract between producers and wxdomain workers: the
// task type, its payload and validation, the task records callers poll, and a
// client that enqueues, polls and cancels changes. Other Go services import it.
package tasks

import (
	"encoding/json"
	"fmt"
	"regexp"
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
}

// Rules are the limits a change is validated against.
type Rules struct {
	// MaxDomains defaults to DefaultMaxDomains.
	MaxDomains int
	// KnownPlatform, when set, refuses platforms it does not know.
	KnownPlatform func(appid string) bool
}

var appidPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate checks the change with the default rules and normalises its
// domains in place (lower case, punycode, duplicates removed).
func (c *JumpDomainChange) Validate() error { return c.ValidateWith(Rules{}) }

// ValidateWith is Validate with explicit rules. On error the change is left
// as it was; the error is a *ValidationError naming every problem.
func (c *JumpDomainChange) ValidateWith(r Rules) error {
	maxDomains := r.MaxDomains
	if maxDomains <= 0 {
		maxDomains = DefaultMaxDomains
	}
	var problems []Problem
	add := func(code, field, value, reason string) {
		problems = append(problems, Problem{Code: code, Field: field, Value: value, Reason: reason})
	}

	switch {
	case c.Platform == "":
		add(CodeInvalidPlatform, "platform", "", "is required (the component appid)")
	case !appidPattern.MatchString(c.Platform):
		add(CodeInvalidPlatform, "platform", truncate(c.Platform), "is not an appid (letters, digits, '_' and '-', at most 64)")
	case r.KnownPlatform != nil && !r.KnownPlatform(c.Platform):
		add(CodeUnknownPlatform, "platform", c.Platform, "is not in the platforms file")
	}

	if !c.Action.Valid() {
		add(CodeInvalidAction, "action", truncate(string(c.Action)), "must be one of get, set, add, delete")
	}

	var domains []string
	seen := make(map[string]bool, len(c.Domains))
	for i, d := range c.Domains {
		n, err := NormalizeDomain(d)
		if err != nil {
			add(CodeInvalidDomain, fmt.Sprintf("domains[%d]", i), truncate(d), err.Error())
			continue
		}
		if !seen[n] {
			seen[n] = true
			domains = append(domains, n)
		}
	}
	switch {
	case c.Action == ActionGet && len(c.Domains) > 0:
		add(CodeUnexpectedField, "domains", "", "must be empty for get")
	case c.Action.Valid() && c.Action != ActionGet && len(c.Domains) == 0:
		add(CodeMissingDomains, "domains", "", fmt.Sprintf("are required for %s", c.Action))
	case len(domains) > maxDomains:
		// The count is checked after removing duplicates, as WeChat counts.
		add(CodeTooManyDomains, "domains", "", fmt.Sprintf("has %d distinct domains; the limit is %d", len(domains), maxDomains))
	}

	if c.Ensure && c.Action == ActionGet {
		add(CodeInvalidAction, "ensure", "", "applies to set, add and delete, not get")
	}
	if len(problems) > 0 {
		// The most specific code first: API clients read the first one.
		sortProblems(problems)
		return &ValidationError{Problems: problems}
	}
	c.Domains = domains
	return nil
}

func sortProblems(ps []Problem) {
	rank := func(code string) int {
		switch code {
		case CodeInvalidPlatform, CodeUnknownPlatform:
			return 0
		case CodeInvalidAction:
			return 1
		case CodeTooManyDomains:
			return 2
		}
		return 3
	}
	// Stable insertion sort: a handful of problems at most per kind.
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && rank(ps[j].Code) < rank(ps[j-1].Code); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// truncate keeps hostile inputs from blowing up error messages.
func truncate(s string) string {
	const limit = 100
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}

// NewJumpDomainTask builds the asynq task for a validated change. Options
// given override the defaults (queue, timeout, retention, retry safety net).
func NewJumpDomainTask(c JumpDomainChange, opts ...asynq.Option) (*asynq.Task, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode change: %w", err)
	}
	defaults := []asynq.Option{
		asynq.Queue(QueueDefault),
		asynq.Timeout(DefaultTimeout),
		asynq.Retention(DefaultRetention),
		asynq.MaxRetry(asynqMaxRetry),
	}
	return asynq.NewTask(TypeJumpDomain, payload, append(defaults, opts...)...), nil
}

// ParseJumpDomainChange decodes a task payload.
func ParseJumpDomainChange(payload []byte) (JumpDomainChange, error) {
	var c JumpDomainChange
	if err := json.Unmarshal(payload, &c); err != nil {
		return c, fmt.Errorf("decode %s payload: %w", TypeJumpDomain, err)
	}
	return c, nil
}
