package tasks

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"

	"golang.org/x/net/idna"
)

// DefaultMaxDomains is WeChat's documented limit of jump domains per
// platform. One newer page says 300, so the limit is configurable.
const DefaultMaxDomains = 200

// Problem codes, stable strings that API clients can match on.
const (
	CodeInvalidDomain    = "invalid_domain"
	CodeTooManyDomains   = "too_many_domains"
	CodeUnknownPlatform  = "unknown_platform"
	CodeInvalidPlatform  = "invalid_platform"
	CodeInvalidAction    = "invalid_action"
	CodeMissingDomains   = "missing_domains"
	CodeUnexpectedField  = "unexpected_domains"
	CodeInvalidPreflight = "invalid_preflight"
)

// Problem is one reason a change was refused.
type Problem struct {
	Code   string `json:"code"`
	Field  string `json:"field"`
	Value  string `json:"value,omitempty"`
	Reason string `json:"reason"`
}

func (p Problem) String() string {
	if p.Value != "" {
		return fmt.Sprintf("%s %q: %s", p.Field, p.Value, p.Reason)
	}
	return fmt.Sprintf("%s: %s", p.Field, p.Reason)
}

// MaxProblems is how many problems a ValidationError lists; the rest are
// only counted, so that an error stays small whatever the input.
const MaxProblems = 20

// maxReason bounds a problem's reason, which may quote the input.
const maxReason = 200

// ValidationError lists the problems found in a change, so that a caller
// can fix them at once: the first MaxProblems, most specific first, and
// how many more there were.
type ValidationError struct {
	Problems []Problem
	// More counts the problems not listed.
	More int
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	msg := "invalid change: " + strings.Join(parts, "; ")
	if e.More > 0 {
		msg += fmt.Sprintf("; and %d more", e.More)
	}
	return msg
}

// Code is the code of the first problem; API errors report it.
func (e *ValidationError) Code() string {
	if len(e.Problems) == 0 {
		return CodeInvalidDomain
	}
	return e.Problems[0].Code
}

// Problems collects the problems of a request, keeping at most
// MaxProblems, with every echoed value and reason cut short.
type Problems struct {
	list []Problem
	more int
}

// Add records a problem.
func (ps *Problems) Add(p Problem) {
	p.Value = Truncate(p.Value)
	if len(p.Reason) > maxReason {
		p.Reason = p.Reason[:maxReason] + "…"
		p.Reason = strings.ToValidUTF8(p.Reason, "")
	}
	if len(ps.list) < MaxProblems {
		ps.list = append(ps.list, p)
		return
	}
	// Keep the most specific problems: a platform or action problem
	// displaces a domain one.
	worst := len(ps.list) - 1
	for i := range ps.list {
		if rank(ps.list[i].Code) > rank(ps.list[worst].Code) {
			worst = i
		}
	}
	if rank(p.Code) < rank(ps.list[worst].Code) {
		ps.list = append(ps.list[:worst], ps.list[worst+1:]...)
		ps.list = append(ps.list, p)
	}
	ps.more++
}

// Merge adds the problems of another validation.
func (ps *Problems) Merge(e *ValidationError) {
	for _, p := range e.Problems {
		ps.Add(p)
	}
	ps.more += e.More
}

func (ps *Problems) merge(o Problems) {
	for _, p := range o.list {
		ps.Add(p)
	}
	ps.more += o.more
}

// Len is how many problems were added.
func (ps *Problems) Len() int { return len(ps.list) + ps.more }

// Err returns the problems as a *ValidationError, or nil if there are none.
func (ps *Problems) Err() error {
	if len(ps.list) == 0 {
		return nil
	}
	// The most specific code first: API clients read the first one.
	slices.SortStableFunc(ps.list, func(a, b Problem) int { return rank(a.Code) - rank(b.Code) })
	return &ValidationError{Problems: ps.list, More: ps.more}
}

func rank(code string) int {
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

var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(true),
)

// NormalizeDomain turns a domain as a person writes it into the form WeChat
// expects: a lower-case ASCII host name (punycode for internationalised
// names). It returns a reason, in plain words, when the input is not a bare
// host name.
func NormalizeDomain(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("is empty")
	}
	if strings.TrimSpace(s) == "" || strings.ContainsFunc(s, isSpaceOrControl) {
		return "", fmt.Errorf("contains whitespace or control characters")
	}
	if i := strings.Index(s, "://"); i >= 0 {
		return "", fmt.Errorf("has a scheme (%s://): give the bare host name, like www.qq.com", Truncate(s[:i]))
	}
	if strings.ContainsAny(s, "?#") {
		return "", fmt.Errorf("has a query or fragment: give the bare host name")
	}
	if strings.Contains(s, "/") {
		return "", fmt.Errorf("has a path: give the bare host name")
	}
	if strings.Contains(s, "@") {
		return "", fmt.Errorf("has user information (@): give the bare host name")
	}
	if strings.Contains(s, "*") {
		return "", fmt.Errorf("wildcards are not allowed")
	}
	if isIPAddress(s) {
		return "", fmt.Errorf("is an IP address: WeChat accepts host names only")
	}
	if strings.Contains(s, ":") {
		return "", fmt.Errorf("has a port: give the host name without :port")
	}
	s = strings.TrimSuffix(s, ".")
	if !isASCII(s) || strings.Contains(strings.ToLower(s), "xn--") {
		if _, err := idnaProfile.ToUnicode(s); err != nil {
			return "", fmt.Errorf("is not a valid internationalised domain name: %v", err)
		}
		a, err := idnaProfile.ToASCII(s)
		if err != nil {
			return "", fmt.Errorf("is not a valid internationalised domain name: %v", err)
		}
		s = a
	}
	s = strings.ToLower(s)
	if len(s) > 253 {
		return "", fmt.Errorf("is %d characters long; the limit is 253", len(s))
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("has a single label: give a full domain name such as www.qq.com")
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", err
		}
	}
	if isAllDigits(labels[len(labels)-1]) {
		return "", fmt.Errorf("ends in a numeric label: looks like an IP address, not a host name")
	}
	return s, nil
}

func checkLabel(l string) error {
	switch {
	case l == "":
		return fmt.Errorf("has an empty label (two dots in a row, or a leading dot)")
	case len(l) > 63:
		return fmt.Errorf("has a label of %d characters (%.20s…); the limit is 63", len(l), l)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("has a label starting or ending with '-' (%s)", l)
	}
	for _, r := range l {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("contains %q: only letters, digits and '-' are allowed", r)
		}
	}
	return nil
}

func isIPAddress(s string) bool {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().IsValid() {
		return true
	}
	if i := strings.LastIndex(s, ":"); i > 0 {
		_, err := netip.ParseAddr(strings.Trim(s[:i], "[]"))
		return err == nil
	}
	return false
}

// isSpaceOrControl also catches invisible format characters (zero-width
// space, bidi marks), which IDNA mapping would silently drop.
func isSpaceOrControl(r rune) bool {
	return r <= ' ' || unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isAllDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
