package console

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/wxdomain/wxdomain/tasks"
)

// maxFormBody bounds a posted form: a few hundred domains and a long
// platform list fit many times over.
const maxFormBody = 1 << 20

// changeForm is the new change or rollout form, as typed: the text is
// kept as it was entered, so that the preview and the form shown again
// carry exactly what the operator wrote.
type changeForm struct {
	// Platforms is one appid, a list (commas, spaces or lines), or "all".
	Platforms string
	Action    string
	// Domains are separated by commas or lines.
	Domains   string
	Publish   bool
	Ensure    bool
	Preflight string
	// Name names a rollout (ignored for a single change).
	Name string
	// Key is the idempotency key made when the preview was shown.
	Key string
}

// readChangeForm reads the form from a request's query (GET, to fill the
// form in) or its posted body.
func readChangeForm(v url.Values) changeForm {
	return changeForm{
		Platforms: strings.TrimSpace(v.Get("platforms")),
		Action:    strings.TrimSpace(v.Get("action")),
		Domains:   v.Get("domains"),
		Publish:   checked(v.Get("publish")),
		Ensure:    checked(v.Get("ensure")),
		Preflight: strings.TrimSpace(v.Get("preflight")),
		Name:      strings.TrimSpace(v.Get("name")),
		Key:       strings.TrimSpace(v.Get("key")),
	}
}

// parsePost reads a posted form, bounded; the error is the operator's to
// read.
func parsePost(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("the form is larger than %d bytes", maxFormBody)
		}
		return nil, errors.New("the form could not be read: " + tasks.Truncate(err.Error()))
	}
	return r.PostForm, nil
}

func checked(v string) bool {
	switch strings.ToLower(v) {
	case "on", "1", "true", "yes":
		return true
	}
	return false
}

// platformList splits the platforms field; all reports the word "all".
func (f changeForm) platformList() (list []string, all bool) {
	seen := map[string]bool{}
	for _, p := range strings.FieldsFunc(f.Platforms, func(r rune) bool { return r == ',' || r == ';' || unicode.IsSpace(r) }) {
		if strings.EqualFold(p, "all") {
			all = true
			continue
		}
		if !seen[p] {
			seen[p] = true
			list = append(list, p)
		}
	}
	return list, all
}

// domainList splits the domains field at commas and line breaks; each
// entry is trimmed, empty ones dropped. Spaces inside an entry are kept,
// so that the validation names the entry as it was typed.
func (f changeForm) domainList() []string {
	return splitDomains(f.Domains)
}

// DomainsCSV is the domains field on one line, for the preview's hidden
// field.
func (f changeForm) DomainsCSV() string { return strings.Join(f.domainList(), ", ") }

func splitDomains(s string) []string {
	var out []string
	for _, d := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// change is the form as a single change (its platform the first listed).
func (f changeForm) change() tasks.JumpDomainChange {
	list, _ := f.platformList()
	c := tasks.JumpDomainChange{Action: tasks.Action(f.Action), Domains: f.domainList(), Publish: f.Publish, Ensure: f.Ensure, Preflight: tasks.PreflightMode(f.Preflight)}
	if len(list) > 0 {
		c.Platform = list[0]
	}
	return c
}

// newIdempotencyKey names one submission of the form: a preview makes
// it, and submitting twice (a double click, the back button) finds the
// first change or rollout instead of creating a second.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "console-" + hex.EncodeToString(b[:])
}

// formProblems are a validation's problems as the form shows them: every
// one in the API's words, and each beside its field.
type formProblems struct {
	All []string
	// More counts the problems the API did not list.
	More    int
	ByField map[string][]string
}

func (p *formProblems) add(field, msg string) {
	p.All = append(p.All, msg)
	if p.ByField == nil {
		p.ByField = map[string][]string{}
	}
	p.ByField[field] = append(p.ByField[field], msg)
}

// addValidation adds a *tasks.ValidationError's problems.
func (p *formProblems) addValidation(ve *tasks.ValidationError) {
	for _, pr := range ve.Problems {
		p.add(formField(pr.Field), pr.String())
	}
	p.More += ve.More
}

func (p *formProblems) empty() bool { return len(p.All) == 0 && p.More == 0 }

// formField maps a problem's field (platform, domains[3], ...) to the
// form's.
func formField(f string) string {
	switch {
	case f == "platform" || f == "platforms":
		return "platforms"
	case strings.HasPrefix(f, "domains"):
		return "domains"
	}
	return f
}

// formOption is a select's option.
type formOption struct {
	Value, Label string
	Selected     bool
}

func formOptions(selected string, pairs ...string) []formOption {
	out := make([]formOption, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, formOption{Value: pairs[i], Label: pairs[i+1], Selected: pairs[i] == selected})
	}
	return out
}

func (f changeForm) actionOptions() []formOption {
	return formOptions(f.Action,
		"add", "add: add the domains",
		"delete", "delete: remove the domains",
		"set", "set: replace the whole list with the domains",
		"get", "get: read the lists, change nothing")
}

func (f changeForm) preflightOptions() []formOption {
	return formOptions(f.Preflight,
		"", "default (the workers' WXDOMAIN_PREFLIGHT)",
		"enforce", "enforce: domains without the verification file are not sent",
		"warn", "warn: call anyway, record the findings",
		"off", "off: no check")
}
