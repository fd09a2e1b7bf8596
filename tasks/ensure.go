package tasks

import (
	"fmt"
	"slices"
	"strings"
)

// EnsureDone is PlanEnsure's note for a platform already in the desired
// state: nothing is to be called.
const EnsureDone = "already in the desired state"

// PlanError refuses an ensure-mode change that cannot reach its desired
// state without breaking a rule (the domain limit); nothing is called.
type PlanError struct {
	// Reason says which rule, e.g. "adding 3 domains would make 201, over
	// the limit of 200".
	Reason string
	// Adding, Would and Limit are the numbers of a domain-limit refusal.
	Adding, Would, Limit int
}

func (e *PlanError) Error() string { return e.Reason }

// PlanEnsure turns an ensure-mode change into the one call that reaches
// its desired state from a platform's current lists (testing, and
// published, which counts only when the change publishes; nil: WeChat left
// it out), without reading or calling anything itself:
//
//   - note is EnsureDone when the platform is in the desired state already:
//     call is then not to be made;
//   - err is a *PlanError when the call would break the domain limit
//     (maxDomains; DefaultMaxDomains when not positive);
//   - else call is the change to make: only the domains not there yet for
//     an add, only those there for a delete, the whole list for a set.
//
// The call names c's platform, publish flag and preflight mode, and is not
// an ensure change itself.
func PlanEnsure(c JumpDomainChange, testing, published []string, maxDomains int) (call JumpDomainChange, note string, err error) {
	if maxDomains <= 0 {
		maxDomains = DefaultMaxDomains
	}
	lists := [][]string{testing}
	if c.Publish {
		lists = append(lists, published)
	}
	inAll := func(d string) bool {
		for _, l := range lists {
			if !slices.Contains(l, d) {
				return false
			}
		}
		return true
	}
	inAny := func(d string) bool {
		for _, l := range lists {
			if slices.Contains(l, d) {
				return true
			}
		}
		return false
	}
	call = JumpDomainChange{Platform: c.Platform, Action: c.Action, Publish: c.Publish, RolloutID: c.RolloutID, Preflight: c.Preflight}
	switch c.Action {
	case ActionAdd:
		for _, d := range c.Domains {
			if !inAll(d) {
				call.Domains = append(call.Domains, d)
			}
		}
		if len(call.Domains) == 0 {
			return call, EnsureDone, nil
		}
		for _, l := range lists {
			n := len(l)
			for _, d := range call.Domains {
				if !slices.Contains(l, d) {
					n++
				}
			}
			if n > maxDomains {
				return call, "", &PlanError{
					Reason: fmt.Sprintf("adding %d domains would make %d, over the limit of %d", len(call.Domains), n, maxDomains),
					Adding: len(call.Domains), Would: n, Limit: maxDomains,
				}
			}
		}
	case ActionDelete:
		for _, d := range c.Domains {
			if inAny(d) {
				call.Domains = append(call.Domains, d)
			}
		}
		if len(call.Domains) == 0 {
			return call, EnsureDone, nil
		}
	case ActionSet:
		same := true
		for _, l := range lists {
			if len(l) != len(c.Domains) {
				same = false
			}
		}
		for _, d := range c.Domains {
			same = same && inAll(d)
		}
		if same {
			return call, EnsureDone, nil
		}
		call.Domains = c.Domains
	default:
		call.Domains = c.Domains
	}
	return call, "", nil
}

// CanceledBefore says why a change that had not finished was canceled
// before its next attempt ran: "canceled before it ran" when no attempt
// was made; else which attempt it was canceled before and what the last
// one did, from the record's errcode and error, e.g. "canceled before
// attempt 2; attempt 1 called WeChat and got errcode -1 (system busy),
// which changed nothing". An outcome the record cannot tell (no answer,
// an interrupted attempt) is said to be unknown.
func CanceledBefore(r *Record) string {
	if r.Attempts <= 0 {
		return "canceled before it ran"
	}
	if why, ok := strings.CutPrefix(r.Error, "waiting, "); ok {
		// Deferred (a pause, a rate limit): the error is why it waited,
		// not what an attempt did.
		return fmt.Sprintf("canceled before attempt %d, while it waited (%s)", r.Attempts+1, why)
	}
	return fmt.Sprintf("canceled before attempt %d; %s", r.Attempts+1, LastAttempt(r))
}

// LastAttempt says what the record's last attempt did, for a change that
// has made one (Attempts > 0) and not finished: "attempt 1 called WeChat
// and got errcode -1 (system busy), which changed nothing", or, when
// WeChat's answer is not known, that the change may or may not have
// taken effect.
func LastAttempt(r *Record) string {
	n := r.Attempts
	// The errcode is the last attempt's only if its error is that
	// answer's (an attempt without an answer leaves an earlier one's).
	if c := r.ErrCode; c != nil && *c != 0 && strings.Contains(r.Error, fmt.Sprintf("errcode %d", *c)) {
		if *c == -1 {
			return fmt.Sprintf("attempt %d called WeChat and got errcode -1 (system busy), which changed nothing", n)
		}
		what := fmt.Sprintf("errcode %d", *c)
		if r.ErrMsg != "" {
			what += " (" + Truncate(r.ErrMsg) + ")"
		}
		return fmt.Sprintf("attempt %d called WeChat and got %s, a refusal, which changed nothing", n, what)
	}
	why := strings.TrimSuffix(r.Error, "; it will run again")
	if why == "" {
		return fmt.Sprintf("attempt %d's outcome was not recorded, so the change may or may not have taken effect (check with a get)", n)
	}
	return fmt.Sprintf("attempt %d ended without an answer from WeChat (%s), so the change may or may not have taken effect (check with a get)", n, why)
}
