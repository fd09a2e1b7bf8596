// Package wechattest is a stateful sandbox of WeChat's component API: the
// upstream that tests, `wxdomain dev` and `wxdomain fake-wechat` talk to.
//
// It keeps, per platform, the testing and published jump-domain lists,
// whether the platform was ever released, which domains passed verification,
// its component tokens (with expiry and the grace period WeChat gives the
// previous token), and it can inject "system busy" (-1), any other errcode,
// and latency. A platform may have the sandbox fetch each domain's
// verification file on add and set, as WeChat does. Every call is logged for
// assertions. Its rules follow shared/docs/wechat-api.md; an /sandbox/ admin
// API drives it from outside.
package wechattest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults that mirror WeChat.
const (
	DefaultTokenTTL   = 7200 * time.Second
	DefaultGrace      = 5 * time.Minute
	DefaultMaxDomains = 200
)

// Config tunes the sandbox. The zero value behaves like WeChat.
type Config struct {
	TokenTTL   time.Duration // lifetime of a component token; default 2h
	Grace      time.Duration // how long the previous token keeps working; default 5m
	MaxDomains int           // jump-domain limit (65316 beyond it); default 200
	// Strict refuses appids that were not added; otherwise a platform is
	// created (released, every domain verified) on its first token request.
	Strict bool
	Now    func() time.Time
	// FileClient fetches the verification files of platforms with
	// CheckFiles; default: 5s timeout, no proxy, no cookies. Whatever the
	// client, redirects are not followed: a 3xx fails the check.
	FileClient *http.Client
}

// Platform is a platform's configuration in the sandbox.
type Platform struct {
	AppID string `json:"appid"`
	// Secret, when set, must match component_appsecret; empty accepts any.
	Secret string `json:"secret,omitempty"`
	// Ticket, when set, must match component_verify_ticket; empty accepts
	// any non-empty ticket.
	Ticket   string `json:"ticket,omitempty"`
	Released bool   `json:"released"`
	// Verified lists the domains that pass verification; nil means all do.
	Verified []string `json:"verified,omitempty"`
	// CheckFiles makes add and set fetch https://DOMAIN/FILE_NAME for each
	// domain, as WeChat does; a domain whose file is not served (200, the
	// content of ConfirmFile) is invalid. With Verified, a domain needs both.
	CheckFiles bool     `json:"check_files,omitempty"`
	Testing    []string `json:"testing"`
	Published  []string `json:"published"`
}

// Faults injected into one platform's calls.
type Faults struct {
	// BusyRate is the probability that modify_wxa_jump_domain answers -1.
	BusyRate float64 `json:"busy_rate"`
	// Script lists errcodes answered, in order, by the next calls of
	// modify_wxa_jump_domain (0 lets a call through normally).
	Script []int `json:"script,omitempty"`
	// TokenErrCode, when set, is answered by api_component_token (61004,
	// 61005, 61006, 45009...).
	TokenErrCode int `json:"token_errcode,omitempty"`
	// TokenScript lists errcodes answered, in order, by the next calls of
	// api_component_token (0 lets a call through), e.g. [-1] for one busy
	// answer.
	TokenScript []int `json:"token_script,omitempty"`
	// Latency is added to every call of the platform.
	Latency time.Duration `json:"latency,omitempty"`
	// Transport lists, in order, how the next modify calls break before
	// any answer: "reset" (connection closed), "502" (an HTML error page),
	// "truncated" (half a JSON answer), "stall" (no answer for 20s). The
	// call is not applied. "" lets a call through.
	Transport []string `json:"transport,omitempty"`
}

// Call is one request the sandbox answered.
type Call struct {
	Time    time.Time `json:"time"`
	API     string    `json:"api"`
	AppID   string    `json:"appid,omitempty"`
	Action  string    `json:"action,omitempty"`
	Domains string    `json:"domains,omitempty"`
	Publish bool      `json:"publish,omitempty"`
	ErrCode int       `json:"errcode"`
	// FileChecks counts the verification files fetched for the call.
	FileChecks int `json:"file_checks,omitempty"`
}

type platform struct {
	Platform
	verified     map[string]bool // nil: all verified
	faults       Faults
	faultsSet    bool // else the sandbox-wide defaults apply
	tokenFetches int
	current      string // newest token
}

type token struct {
	appid   string
	expires time.Time
}

// Sandbox is the fake upstream. Use Handler to serve it.
type Sandbox struct {
	cfg Config

	mu        sync.Mutex
	platforms map[string]*platform
	tokens    map[string]*token
	calls     []Call
	latency   time.Duration // added to every call
	defaults  Faults        // for platforms without faults of their own
}

// New returns a sandbox with no platforms.
func New(cfg Config) *Sandbox {
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.MaxDomains <= 0 {
		cfg.MaxDomains = DefaultMaxDomains
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FileClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil // the check reaches the domain itself, as WeChat would
		cfg.FileClient = &http.Client{Timeout: 5 * time.Second, Transport: tr}
	}
	// A copy, so the caller's client keeps its own redirect policy.
	fc := *cfg.FileClient
	fc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cfg.FileClient = &fc
	return &Sandbox{cfg: cfg, platforms: map[string]*platform{}, tokens: map[string]*token{}}
}

// PutPlatform adds or replaces a platform (its tokens stay valid).
func (s *Sandbox) PutPlatform(p Platform) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.platforms[p.AppID]
	np := &platform{Platform: p}
	if p.Verified != nil {
		np.verified = make(map[string]bool, len(p.Verified))
		for _, d := range p.Verified {
			np.verified[d] = true
		}
	}
	if old != nil {
		np.faults, np.faultsSet, np.tokenFetches, np.current = old.faults, old.faultsSet, old.tokenFetches, old.current
	}
	s.platforms[p.AppID] = np
}

// Platform returns a snapshot of a platform's state.
func (s *Sandbox) Platform(appid string) (Platform, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.platforms[appid]
	if !ok {
		return Platform{}, false
	}
	out := p.Platform
	out.Testing = slices.Clone(p.Testing)
	out.Published = slices.Clone(p.Published)
	return out, true
}

// SetFaults replaces a platform's injected faults (creating it if needed).
func (s *Sandbox) SetFaults(appid string, f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.platformLocked(appid)
	p.faults, p.faultsSet = f, true
}

// SetDefaultFaults sets the faults of every platform that has none of its own.
func (s *Sandbox) SetDefaultFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.defaults = f
}

// faultsLocked returns the faults in force for a platform.
func (s *Sandbox) faultsLocked(p *platform) *Faults {
	if p.faultsSet {
		return &p.faults
	}
	return &s.defaults
}

// SetLatency adds d to every call.
func (s *Sandbox) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// RevokeTokens invalidates every token of the given platforms (all when none
// given), as WeChat does after a secret reset; callers get 40001.
func (s *Sandbox) RevokeTokens(appids ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for t, tok := range s.tokens {
		if len(appids) == 0 || slices.Contains(appids, tok.appid) {
			delete(s.tokens, t)
			n++
		}
	}
	return n
}

// TokenFetches is how many tokens a platform was issued.
func (s *Sandbox) TokenFetches(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.platforms[appid]; ok {
		return p.tokenFetches
	}
	return 0
}

// Calls returns the call log, oldest first.
func (s *Sandbox) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// ResetCalls empties the call log.
func (s *Sandbox) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// platformLocked returns the platform, creating a lenient one if needed.
func (s *Sandbox) platformLocked(appid string) *platform {
	p, ok := s.platforms[appid]
	if !ok {
		p = &platform{Platform: Platform{AppID: appid, Released: true}}
		s.platforms[appid] = p
	}
	return p
}

// Handler serves the WeChat API paths and the /sandbox/ admin API.
func (s *Sandbox) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cgi-bin/component/api_component_token", s.componentToken)
	mux.HandleFunc("POST /cgi-bin/component/modify_wxa_jump_domain", s.modifyJumpDomain)
	mux.HandleFunc("POST /cgi-bin/component/get_domain_confirmfile", s.confirmFile)
	s.adminRoutes(mux)
	return mux
}

type answer map[string]any

func apiError(code int, msg string) answer { return answer{"errcode": code, "errmsg": msg} }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Sandbox) sleep(r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

func (s *Sandbox) componentToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AppID  string `json:"component_appid"`
		Secret string `json:"component_appsecret"`
		Ticket string `json:"component_verify_ticket"`
	}
	if err := decode(r, &req); err != nil {
		writeJSON(w, apiError(47001, "data format error"))
		return
	}
	ans, delay := s.issueToken(req.AppID, req.Secret, req.Ticket)
	s.sleep(r, delay)
	writeJSON(w, ans)
}

func (s *Sandbox) issueToken(appid, secret, ticket string) (answer, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	call := Call{Time: now, API: "api_component_token", AppID: appid}
	defer func() { s.calls = append(s.calls, call) }()

	_, ok := s.platforms[appid]
	switch {
	case appid == "":
		call.ErrCode = 41002
		return apiError(41002, "appid missing"), s.latency
	case !ok && s.cfg.Strict:
		call.ErrCode = 40013
		return apiError(40013, "invalid appid"), s.latency
	}
	p := s.platformLocked(appid)
	f := s.faultsLocked(p)
	delay := s.latency + f.Latency
	scripted := 0
	if len(f.TokenScript) > 0 {
		scripted, f.TokenScript = f.TokenScript[0], f.TokenScript[1:]
	}
	switch {
	case scripted != 0:
		call.ErrCode = scripted
		return apiError(scripted, tokenErrMsg(scripted)), delay
	case f.TokenErrCode != 0:
		call.ErrCode = f.TokenErrCode
		return apiError(f.TokenErrCode, tokenErrMsg(f.TokenErrCode)), delay
	case p.Secret != "" && secret != p.Secret:
		call.ErrCode = 40125
		return apiError(40125, "invalid appsecret"), delay
	case ticket == "" || (p.Ticket != "" && ticket != p.Ticket):
		call.ErrCode = 61006
		return apiError(61006, "component ticket is invalid"), delay
	}
	// The previous token keeps working for the grace period; any older
	// one stops now (frequent refreshes invalidate older tokens).
	for t, tok := range s.tokens {
		if tok.appid != appid {
			continue
		}
		if t == p.current {
			tok.expires = minTime(tok.expires, now.Add(s.cfg.Grace))
		} else {
			delete(s.tokens, t)
		}
	}
	t := "sbx_" + randomHex(16)
	s.tokens[t] = &token{appid: appid, expires: now.Add(s.cfg.TokenTTL)}
	p.current = t
	p.tokenFetches++
	return answer{"component_access_token": t, "expires_in": int(s.cfg.TokenTTL / time.Second)}, delay
}

func tokenErrMsg(code int) string {
	switch code {
	case 61004:
		return "access clientip is not registered"
	case 61005:
		return "component ticket is expired"
	case 61006:
		return "component ticket is invalid"
	case 45009:
		return "reach max api daily quota limit"
	case -1:
		return "system error"
	}
	return "injected error"
}

// authenticate maps an access token to its platform, or answers the error
// WeChat gives.
func (s *Sandbox) authenticateLocked(t string) (*platform, answer) {
	if t == "" {
		return nil, apiError(41001, "access_token missing")
	}
	tok, ok := s.tokens[t]
	if !ok {
		return nil, apiError(40001, "invalid credential, access_token is invalid or not latest")
	}
	if !s.cfg.Now().Before(tok.expires) {
		return nil, apiError(42001, "access_token expired")
	}
	return s.platformLocked(tok.appid), nil
}

func (s *Sandbox) modifyJumpDomain(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Action  string `json:"action"`
		Domains string `json:"wxa_jump_h5_domain"`
		Publish bool   `json:"is_modify_published_together"`
	}
	if err := decode(r, &req); err != nil {
		writeJSON(w, apiError(47001, "data format error"))
		return
	}
	accessToken := r.URL.Query().Get("access_token")
	if s.breakTransport(w, r, accessToken) {
		return
	}
	fileFailed, fetches := s.checkFiles(r.Context(), accessToken, req.Action, req.Domains, req.Publish)
	ans, delay := s.modify(accessToken, req.Action, req.Domains, req.Publish, fileFailed, fetches)
	s.sleep(r, delay)
	writeJSON(w, ans)
}

// breakTransport plays the platform's next scripted transport fault, if
// any, and reports whether it answered the request that way.
func (s *Sandbox) breakTransport(w http.ResponseWriter, r *http.Request, accessToken string) bool {
	s.mu.Lock()
	var mode string
	if tok, ok := s.tokens[accessToken]; ok {
		p := s.platformLocked(tok.appid)
		if f := s.faultsLocked(p); len(f.Transport) > 0 {
			mode, f.Transport = f.Transport[0], f.Transport[1:]
		}
	}
	if mode != "" {
		s.calls = append(s.calls, Call{Time: s.cfg.Now(), API: "modify_wxa_jump_domain", ErrCode: -999, Action: "transport:" + mode})
	}
	s.mu.Unlock()
	switch mode {
	case "reset":
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler)
	case "502":
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html><body><h1>502 Bad Gateway</h1></body></html>")
	case "truncated":
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"errcode":0,"errmsg":"ok","testing_wxa_jump_h5_do`)
	case "stall":
		s.sleep(r, 20*time.Second)
	default:
		return false
	}
	return true
}

// checkFiles fetches, when the call's platform has CheckFiles and the call
// could apply domains, the verification file of each domain of the call. It
// returns the domains that failed and how many files it fetched. The fetches
// run without s.mu, so a slow domain holds up only its own call.
func (s *Sandbox) checkFiles(ctx context.Context, accessToken, action, domains string, publish bool) (map[string]bool, int) {
	if action != "add" && action != "set" {
		return nil, 0
	}
	s.mu.Lock()
	p, errAns := s.authenticateLocked(accessToken)
	// An unreleased platform refuses publish (61028) before any check.
	check := errAns == nil && p.CheckFiles && !(publish && !p.Released)
	var appid string
	if check {
		appid = p.AppID
	}
	s.mu.Unlock()
	if !check {
		return nil, 0 // modify answers the error, or there is nothing to check
	}
	list := dedupe(splitList(domains))
	for _, d := range list {
		if syntaxProblem(d) != "" {
			return nil, 0 // modify refuses the whole call: fetch nothing
		}
	}
	name, content := s.ConfirmFile(appid)
	const parallel = 8
	sem := make(chan struct{}, parallel)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed = map[string]bool{}
	)
	for _, d := range list {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if !s.fileServed(ctx, d, name, content) {
				mu.Lock()
				failed[d] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed, len(list)
}

// fileServed reports whether https://domain/name answers 200 with content.
func (s *Sandbox) fileServed(ctx context.Context, domain, name, content string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+domain+"/"+name, nil)
	if err != nil {
		return false
	}
	resp, err := s.cfg.FileClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false
	}
	// The file is a few bytes; a page of anything else need not be read whole.
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return err == nil && strings.TrimSpace(string(b)) == content
}

// modify applies a modify_wxa_jump_domain call. fileFailed holds the domains
// whose verification file checkFiles did not find, fetches how many files it
// fetched for the call.
func (s *Sandbox) modify(accessToken, action, domains string, publish bool, fileFailed map[string]bool, fetches int) (answer, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	call := Call{Time: s.cfg.Now(), API: "modify_wxa_jump_domain", Action: action, Domains: domains, Publish: publish, FileChecks: fetches}
	defer func() { s.calls = append(s.calls, call) }()

	p, errAns := s.authenticateLocked(accessToken)
	if errAns != nil {
		call.ErrCode = errAns["errcode"].(int)
		return errAns, s.latency
	}
	call.AppID = p.AppID
	f := s.faultsLocked(p)
	delay := s.latency + f.Latency
	fail := func(code int, msg string) (answer, time.Duration) {
		call.ErrCode = code
		return apiError(code, msg), delay
	}

	if len(f.Script) > 0 {
		code := f.Script[0]
		f.Script = f.Script[1:]
		if code != 0 {
			return fail(code, injectedMsg(code))
		}
	} else if f.BusyRate > 0 && mrand.Float64() < f.BusyRate {
		return fail(-1, "system error")
	}

	switch action {
	case "get", "set", "add", "delete":
	default:
		return fail(40052, "invalid action name")
	}
	if action == "get" {
		if len(p.Testing) == 0 && !p.Released {
			// Seen live: an empty platform answers only this field, with no errcode.
			return answer{"testing_wxa_jump_h5_domain": ""}, delay
		}
		return s.listsAnswer(p, nil), delay
	}
	if publish && !p.Released {
		return fail(61028, "component is not released")
	}
	list := splitList(domains)
	var bad []string
	for _, d := range list {
		if why := syntaxProblem(d); why != "" {
			bad = append(bad, d+" ("+why+")")
		}
	}
	if len(bad) > 0 {
		return fail(9410016, "invalid domain: "+strings.Join(bad, ", "))
	}
	var apply, invalid []string
	for _, d := range list {
		if action == "delete" || ((p.verified == nil || p.verified[d]) && !fileFailed[d]) {
			apply = append(apply, d)
		} else {
			invalid = append(invalid, d)
		}
	}
	testing := applyAction(action, p.Testing, apply)
	if len(testing) > s.cfg.MaxDomains {
		return fail(65316, fmt.Sprintf("domain count reach limit (%d)", s.cfg.MaxDomains))
	}
	var published []string
	if publish {
		published = applyAction(action, p.Published, apply)
		if len(published) > s.cfg.MaxDomains {
			return fail(65316, fmt.Sprintf("domain count reach limit (%d)", s.cfg.MaxDomains))
		}
		p.Published = published
	}
	p.Testing = testing
	return s.listsAnswer(p, invalid), delay
}

func (s *Sandbox) listsAnswer(p *platform, invalid []string) answer {
	a := answer{
		"errcode":                    0,
		"errmsg":                     "ok",
		"testing_wxa_jump_h5_domain": strings.Join(p.Testing, ";"),
	}
	if p.Released {
		a["published_wxa_jump_h5_domain"] = strings.Join(p.Published, ";")
	}
	if len(invalid) > 0 {
		a["invalid_wxa_jump_h5_domain"] = strings.Join(invalid, ";")
	}
	return a
}

func injectedMsg(code int) string {
	switch code {
	case -1:
		return "system error"
	case 61028:
		return "component is not released"
	case 65316:
		return "domain count reach limit"
	case 9410016:
		return "invalid domain"
	case 45009:
		return "reach max api daily quota limit"
	case 45011:
		return "api minute-quota reach limit"
	case 40001:
		return "invalid credential"
	}
	return "injected error"
}

func applyAction(action string, current, domains []string) []string {
	switch action {
	case "set":
		return dedupe(domains)
	case "add":
		return dedupe(append(slices.Clone(current), domains...))
	case "delete":
		out := make([]string, 0, len(current))
		for _, d := range current {
			if !slices.Contains(domains, d) {
				out = append(out, d)
			}
		}
		return out
	}
	return current
}

func dedupe(list []string) []string {
	out := make([]string, 0, len(list))
	for _, d := range list {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, d := range strings.Split(s, ";") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// syntaxProblem is the sandbox's own, deliberately independent check of a
// domain, so that it catches what a client let through.
func syntaxProblem(d string) string {
	switch {
	case strings.Contains(d, "://"):
		return "scheme not allowed"
	case strings.ContainsAny(d, "/?#"):
		return "path not allowed"
	case strings.Contains(d, ":"):
		return "port not allowed"
	case len(d) > 253:
		return "too long"
	case !strings.Contains(d, "."):
		return "not a domain"
	}
	labels := strings.Split(d, ".")
	allDigits := true
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "bad label"
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return "bad character"
			}
			if c < '0' || c > '9' {
				allDigits = false
			}
		}
	}
	if allDigits || strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "ip address not allowed"
	}
	return ""
}

func (s *Sandbox) confirmFile(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p, errAns := s.authenticateLocked(r.URL.Query().Get("access_token"))
	call := Call{Time: s.cfg.Now(), API: "get_domain_confirmfile"}
	var ans answer
	if errAns != nil {
		call.ErrCode = errAns["errcode"].(int)
		ans = errAns
	} else {
		call.AppID = p.AppID
		name, content := s.ConfirmFile(p.AppID)
		ans = answer{"errcode": 0, "errmsg": "ok", "file_name": name, "file_content": content}
	}
	s.calls = append(s.calls, call)
	s.mu.Unlock()
	writeJSON(w, ans)
}

// ConfirmFile is the verification file get_domain_confirmfile gives a
// platform: the name to serve at each domain's root and its content.
func (s *Sandbox) ConfirmFile(appid string) (name, content string) {
	name = hex.EncodeToString([]byte(appid))
	if len(name) > 10 {
		name = name[len(name)-10:]
	}
	return name + ".txt", "sandbox-" + appid
}

func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	return json.Unmarshal(b, v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
