package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
)

// Kind is what the worker does about an outcome.
type Kind int

// The kinds of outcome.
const (
	// KindRetry: try again later with backoff, counting an attempt.
	KindRetry Kind = iota + 1
	// KindRefreshToken: drop the token that failed, fetch a new one, call again at once.
	KindRefreshToken
	// KindFail: fail for good; retrying cannot help.
	KindFail
	// KindCanceled: the attempt's context ended (cancel, shutdown or timeout).
	KindCanceled
	// KindPause: the platform needs an operator; its changes wait, without
	// using attempts, for the configured period or until a new ticket.
	KindPause
	// KindWait: capacity is short for a moment (no call slot for a next
	// call, the token API busy); the change comes back after Decision.Wait
	// without using an attempt.
	KindWait
)

func (k Kind) String() string {
	switch k {
	case KindRetry:
		return "retry"
	case KindRefreshToken:
		return "refresh_token"
	case KindFail:
		return "fail"
	case KindCanceled:
		return "canceled"
	case KindPause:
		return "pause"
	case KindWait:
		return "wait"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Policy says which upstream errcodes are retried and which mean the token
// was refused; every other errcode fails the change for good. It is
// configuration, so a newly observed code needs no release.
type Policy struct {
	RetryCodes []int
	TokenCodes []int
	// MinuteCodes pause the platform until the next minute; DayCodes until
	// the next 00:00 China time. Neither uses an attempt.
	MinuteCodes []int
	DayCodes    []int
	// TokenAPIRetryCodes are the token API's errcodes worth retrying; any
	// other refusal to issue a token (61004 IP not whitelisted, 61005/61006
	// ticket expired/invalid, 45009 quota, a wrong secret) pauses the
	// platform.
	TokenAPIRetryCodes []int
	// The token API's refusals by cause, which decides what ends the
	// pause: a new ticket ends only a TicketCodes pause; IPCodes and
	// CredentialCodes pauses (like any other refusal) need time or an
	// operator's resume.
	TicketCodes     []int
	IPCodes         []int
	CredentialCodes []int
}

// DefaultPolicy follows shared/docs/wechat-api.md.
func DefaultPolicy() Policy {
	return Policy{
		RetryCodes:         []int{-1},
		TokenCodes:         []int{40001, 40014, 42001},
		TokenAPIRetryCodes: []int{-1},
		MinuteCodes:        []int{45011},
		DayCodes:           []int{45009},
		TicketCodes:        []int{61005, 61006},
		IPCodes:            []int{61004},
		// 40125 invalid appsecret, 40013 invalid appid, 41002/41004 missing.
		CredentialCodes: []int{40125, 40013, 41002, 41004},
	}
}

// ResumeAt says when a paused platform's changes try again.
type ResumeAt int

// When pauses end.
const (
	// ResumeAfterOperatorPause: after Config.OperatorPause (or sooner: a
	// new ticket for the ticket kinds, an operator's resume for all).
	ResumeAfterOperatorPause ResumeAt = iota
	// ResumeNextMinute: 45011, the per-minute frequency limit.
	ResumeNextMinute
	// ResumeNextChinaDay: 45009, the daily quota, resets at 00:00 UTC+8.
	ResumeNextChinaDay
)

// Decision is the verdict on one outcome.
type Decision struct {
	Kind Kind
	// Resume and Pause are set for KindPause: when it ends by itself, and
	// what else ends it.
	Resume ResumeAt
	Pause  pause.Kind
	// Wait is set for KindWait.
	Wait time.Duration
	// Ticket, for the pauses about a ticket, is when the ticket that was
	// refused was received (zero: none was stored): a pause is not started
	// if another ticket was stored since.
	Ticket *time.Time
	// Reason is a plain-words explanation for the task record.
	Reason string
	// APIErr is set when WeChat answered with an errcode.
	APIErr *wechat.APIError
}

// Classify is the one place that decides what an error means.
func (p Policy) Classify(err error) Decision {
	var (
		apiErr   *wechat.APIError
		fetchErr *token.FetchError
		tErr     *wechat.TransportError
		busy     *token.BusyError
		slot     *SlotError
	)
	switch {
	case err == nil:
		return Decision{}
	case errors.As(err, &busy):
		// Before the transport case: an unreachable token API is one too.
		return Decision{Kind: KindWait, Wait: busy.RetryIn, Reason: "WeChat could not issue a component token now: " + busy.Error()}
	case errors.As(err, &slot):
		return Decision{Kind: KindWait, Wait: slot.Wait, Reason: slot.Error()}
	case errors.As(err, &tErr):
		// Before the context check: the HTTP client's own timeout also
		// wraps context.DeadlineExceeded, and it is WeChat being slow.
		return Decision{Kind: KindRetry, Reason: "could not reach WeChat: " + tErr.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Decision{Kind: KindCanceled, Reason: "the attempt was interrupted: " + err.Error()}
	case errors.As(err, new(*PlanError)):
		return Decision{Kind: KindFail, Reason: err.Error()}
	case errors.Is(err, token.ErrUnknownPlatform):
		return Decision{Kind: KindFail, Reason: "the platform is not in the workers' platforms file, so there is no secret to get a token with"}
	case errors.As(err, &fetchErr):
		return p.classifyTokenFetch(fetchErr)
	case errors.As(err, &apiErr):
		return p.classifyAPI(apiErr)
	}
	// Redis and anything unforeseen: retried, never swallowed.
	return Decision{Kind: KindRetry, Reason: "internal error: " + err.Error()}
}

func (p Policy) classifyAPI(e *wechat.APIError) Decision {
	d := Decision{APIErr: e}
	switch {
	case slices.Contains(p.RetryCodes, e.Code):
		d.Kind = KindRetry
	case slices.Contains(p.TokenCodes, e.Code):
		d.Kind = KindRefreshToken
	case slices.Contains(p.MinuteCodes, e.Code):
		d.Kind, d.Resume, d.Pause = KindPause, ResumeNextMinute, pause.KindMinuteLimit
	case slices.Contains(p.DayCodes, e.Code):
		d.Kind, d.Resume, d.Pause = KindPause, ResumeNextChinaDay, pause.KindDailyQuota
	default:
		d.Kind = KindFail
	}
	d.Reason = explain(e)
	return d
}

// A token that cannot be had for a reason only an operator or time can fix
// pauses the platform: its changes wait instead of burning attempts and
// quota.
func (p Policy) classifyTokenFetch(e *token.FetchError) Decision {
	var apiErr *wechat.APIError
	if errors.Is(e, ticket.ErrNoTicket) {
		return Decision{Kind: KindPause, Pause: pause.KindNoTicket, Ticket: &time.Time{}, Reason: fmt.Sprintf("no component_verify_ticket stored for platform %s: WeChat pushes one every 10 minutes to the authorization-event URL, or store one with `wxdomain ticket set %s TICKET`", e.AppID, e.AppID)}
	}
	if !errors.As(e, &apiErr) {
		return Decision{Kind: KindRetry, Reason: e.Error()}
	}
	d := Decision{Kind: KindPause, APIErr: apiErr, Reason: "WeChat refused to issue a component token: " + explain(apiErr)}
	switch code := apiErr.Code; {
	case slices.Contains(p.TokenAPIRetryCodes, code):
		return Decision{Kind: KindRetry, APIErr: apiErr, Reason: "WeChat could not issue a component token now: " + explain(apiErr)}
	case slices.Contains(p.DayCodes, code):
		d.Resume, d.Pause = ResumeNextChinaDay, pause.KindDailyQuota
	case slices.Contains(p.MinuteCodes, code):
		d.Resume, d.Pause = ResumeNextMinute, pause.KindMinuteLimit
	case slices.Contains(p.TicketCodes, code):
		d.Pause, d.Ticket = pause.KindTicketRefused, &e.TicketReceivedAt
	case slices.Contains(p.IPCodes, code):
		d.Pause = pause.KindIPNotWhitelisted
	case slices.Contains(p.CredentialCodes, code):
		d.Pause = pause.KindCredentialsRefused
	default:
		d.Pause = pause.KindTokenRefused
	}
	return d
}

// explain turns an errcode into words an operator can act on, keeping
// WeChat's own errmsg.
func explain(e *wechat.APIError) string {
	return fmt.Sprintf("%s (errcode %d: %s)", Meaning(e.Code), e.Code, e.Msg)
}

// Meaning says what an errcode of WeChat means for an operator (the one
// table the worker classifies by, for pages that group failures).
func Meaning(code int) string {
	var what string
	switch code {
	case -1:
		what = "WeChat is busy"
	case 61028:
		what = "the third-party platform is not released, so its published configuration cannot be changed"
	case 65316:
		what = "the platform has reached its jump-domain limit; delete unused domains first"
	case 9410016:
		what = "WeChat refused invalid domain(s)"
	case 40052:
		what = "WeChat refused the action"
	case 40001, 40014, 42001:
		what = "WeChat refused the component token"
	case 61004:
		what = "this server's IP address is not on the platform's whitelist (operator needed)"
	case 61005, 61006:
		what = "the component_verify_ticket is expired or invalid (operator needed: check ticket pushes)"
	case 45009:
		what = "the daily API quota is used up; it resets at 00:00 China time"
	case 45011:
		what = "the per-minute frequency limit was hit"
	case 40125:
		what = "the platform's app secret is wrong (operator needed)"
	case 40013:
		what = "WeChat does not know this appid (operator needed: check the platforms file)"
	default:
		what = "WeChat refused the change"
	}
	return what
}
