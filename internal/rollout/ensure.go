package rollout

import (
	"context"
	"fmt"
	"strings"

	"github.com/wxdomain/wxdomain/tasks"
)

// ListsFunc reads a platform's current jump-domain lists (a get: it
// changes nothing); published is nil when WeChat left it out.
type ListsFunc func(ctx context.Context, appid string) (testing, published []string, err error)

// What an ensure dry run found for a platform (EnsureStep.Result).
const (
	// EnsureNothing: the platform is in the desired state; no call.
	EnsureNothing = "nothing_to_do"
	// EnsureCall: the call in EnsureStep.Call would be made.
	EnsureCall = "call"
	// EnsureWouldFail: the change would fail without a call (Error: the
	// domain limit).
	EnsureWouldFail = "would_fail"
	// EnsureNotRead: the platform's lists could not be read (Error: why);
	// the worker will read them when it runs.
	EnsureNotRead = "not_read"
)

// EnsureStep is what an ensure rollout would do on one platform.
type EnsureStep struct {
	Platform string `json:"platform"`
	// Result is EnsureNothing, EnsureCall, EnsureWouldFail or EnsureNotRead.
	Result string `json:"result"`
	// Call is the call that would be made (nil: none, or not known).
	Call *tasks.JumpDomainChange `json:"call,omitempty"`
	// Note says why nothing is to be done.
	Note string `json:"note,omitempty"`
	// Error says why the change would fail, or why the lists could not
	// be read.
	Error string `json:"error,omitempty"`
}

// EnsureSummary is an ensure dry run's plan: each platform's lists read
// and the difference the rollout would apply.
type EnsureSummary struct {
	// ReadLists: the dry run read each platform's lists with one get call
	// (read-only, through the fleet's token and rate limits). False: it
	// could not (no WeChat access configured; Note says so), and the
	// rollout's Plan is the plain one.
	ReadLists bool   `json:"read_lists"`
	Note      string `json:"note"`
	Platforms int    `json:"platforms"`
	// The platforms by result.
	Calls       int `json:"calls"`
	NothingToDo int `json:"nothing_to_do"`
	WouldFail   int `json:"would_fail"`
	NotRead     int `json:"not_read"`
	// Steps are the platforms', in the rollout's order.
	Steps []EnsureStep `json:"steps,omitempty"`
}

// Notes of an ensure dry run.
const (
	ensureReadNote   = "read the current lists of each platform with one get call (read-only, on its rate limit)"
	ensureNoListNote = "the current lists were not read (this process has no WeChat access configured): the plan is the plain change for every platform; when it runs, each worker reads the platform's lists first and calls only for the difference, or not at all"
)

// Lines says the plan, a line per platform after a header, e.g.
// "wx…: would call add new.example.com".
func (s *EnsureSummary) Lines() []string {
	if !s.ReadLists {
		return []string{"ensure dry run: " + s.Note}
	}
	out := make([]string, 0, len(s.Steps)+2)
	out = append(out,
		fmt.Sprintf("ensure dry run: read the current lists of %d platforms with one get call each (read-only, on their rate limits)", s.Platforms),
		fmt.Sprintf("platforms: %d would call, %d nothing to do, %d would fail, %d lists not read", s.Calls, s.NothingToDo, s.WouldFail, s.NotRead))
	for _, st := range s.Steps {
		out = append(out, st.Platform+": "+st.Line())
	}
	return out
}

// Line says the step, without its platform.
func (st EnsureStep) Line() string {
	switch st.Result {
	case EnsureNothing:
		return "nothing to do (" + st.Note + ")"
	case EnsureCall:
		if st.Call == nil {
			return "would call"
		}
		l := "would call " + string(st.Call.Action)
		if len(st.Call.Domains) > 0 {
			l += " " + strings.Join(st.Call.Domains, ",")
		}
		if st.Call.Publish {
			l += " (testing and published)"
		}
		return l
	case EnsureWouldFail:
		return "would fail: " + st.Error
	case EnsureNotRead:
		return "could not read its lists: " + st.Error
	}
	return st.Result
}

// ensurePlan reads every platform's lists (at most planParallel at once)
// and plans its change as the worker would; plan is the calls that would
// be made. Without a Lists function it says so and plans the plain
// change everywhere.
func (s *Service) ensurePlan(ctx context.Context, change tasks.JumpDomainChange, platforms []string) (*EnsureSummary, []tasks.JumpDomainChange, error) {
	sum := &EnsureSummary{Platforms: len(platforms)}
	if s.cfg.Lists == nil {
		sum.Note = ensureNoListNote
		plan := make([]tasks.JumpDomainChange, len(platforms))
		for i, p := range platforms {
			plan[i] = change
			plan[i].Platform = p
		}
		return sum, plan, nil
	}
	sum.ReadLists, sum.Note = true, ensureReadNote
	sum.Steps = make([]EnsureStep, len(platforms))
	eachPlatform(platforms, func(i int, p string) {
		c := change
		c.Platform = p
		sum.Steps[i] = s.ensureStep(ctx, c)
	})
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	var plan []tasks.JumpDomainChange
	for _, st := range sum.Steps {
		switch st.Result {
		case EnsureCall:
			sum.Calls++
			plan = append(plan, *st.Call)
		case EnsureNothing:
			sum.NothingToDo++
		case EnsureWouldFail:
			sum.WouldFail++
		default:
			sum.NotRead++
		}
	}
	return sum, plan, nil
}

// ensureStep reads one platform's lists and plans its change.
func (s *Service) ensureStep(ctx context.Context, c tasks.JumpDomainChange) EnsureStep {
	st := EnsureStep{Platform: c.Platform}
	if err := ctx.Err(); err != nil {
		st.Result, st.Error = EnsureNotRead, err.Error()
		return st
	}
	testing, published, err := s.cfg.Lists(ctx, c.Platform)
	if err != nil {
		st.Result, st.Error = EnsureNotRead, err.Error()
		return st
	}
	call, note, err := tasks.PlanEnsure(c, testing, published, s.cfg.Rules.MaxDomains)
	switch {
	case err != nil:
		st.Result, st.Error = EnsureWouldFail, err.Error()
	case note != "":
		st.Result, st.Note = EnsureNothing, note
	default:
		st.Result, st.Call = EnsureCall, &call
	}
	return st
}
