// Package httpapi serves wxdomain's HTTP API: submit and poll changes,
// cancel them, read platform state and store tickets. Every /v1 route
// requires a bearer token; errors share one JSON shape with a stable code.
package httpapi

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wxcrypt"
	"github.com/wxdomain/wxdomain/tasks"
)

// OpenAPI is the API's OpenAPI document, served at /v1/openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// DefaultMaxBody caps request bodies.
const DefaultMaxBody = 1 << 20

// Defaults of the push endpoint.
const (
	DefaultPushMaxSkew     = 5 * time.Minute
	DefaultPushReadTimeout = 10 * time.Second
)

// DefaultMaxWait bounds a long poll.
const DefaultMaxWait = 60 * time.Second

// Config is what the API needs.
type Config struct {
	Client *tasks.Client
	// Platforms reports the configured platforms' state.
	Platforms func(ctx context.Context) ([]platform.Status, error)
	// KnownPlatform says whether an appid is configured.
	KnownPlatform func(appid string) bool
	// Events returns the crypter of a platform that receives WeChat's
	// pushes; ok is false for a platform without token and key.
	Events func(appid string) (c *wxcrypt.Crypter, ok bool)
	// Preflight, if set, serves a platform's verification file and the
	// preflight check of domains.
	Preflight Preflight
	// Rules normalise and bound the domains of a preflight request.
	MaxDomains int
	// Rollouts, if set, serves /v1/rollouts.
	Rollouts *rollout.Service
	// Console, if set, is the operator's console, served under /ui/
	// behind the same tokens as the monitoring UI (and the same-origin
	// rule for every form post); / then leads to it.
	Console http.Handler
	// Monitoring is the asynq web UI, served under /monitoring/ behind the
	// same tokens (a browser logs in with basic auth, the password a token).
	Monitoring http.Handler
	// Metrics serves /metrics: open when MetricsPublic, else behind the tokens.
	Metrics       http.Handler
	MetricsPublic bool
	// Ready checks the dependencies (Redis) for /readyz.
	Ready func(ctx context.Context) error
	// Tokens are the accepted bearer tokens; none accepts nothing on /v1.
	Tokens []string
	// TrustedOrigins may send state-changing browser requests besides the
	// server's own origin (a reverse proxy that rewrites Host), such as
	// https://ops.example.com.
	TrustedOrigins []string
	// MaxBody caps request bodies; default DefaultMaxBody.
	MaxBody int64
	// PushMaxSkew: a push whose timestamp is further from now is refused
	// (a replay); default DefaultPushMaxSkew.
	PushMaxSkew time.Duration
	// PushReadTimeout bounds reading a push; default DefaultPushReadTimeout.
	PushReadTimeout time.Duration
	// MaxWait bounds a long poll (?wait=); default DefaultMaxWait. It
	// must end before the server's write timeout.
	MaxWait time.Duration
	Log     *zap.Logger
}

type api struct {
	cfg    Config
	tokens [][]byte

	refusedMu sync.Mutex
	refused   map[string]*refusals
}

// New returns the API's handler.
func New(cfg Config) http.Handler {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.Events == nil {
		cfg.Events = func(string) (*wxcrypt.Crypter, bool) { return nil, false }
	}
	if cfg.PushMaxSkew <= 0 {
		cfg.PushMaxSkew = DefaultPushMaxSkew
	}
	if cfg.PushReadTimeout <= 0 {
		cfg.PushReadTimeout = DefaultPushReadTimeout
	}
	a := &api{cfg: cfg, refused: map[string]*refusals{}}
	for _, t := range cfg.Tokens {
		a.tokens = append(a.tokens, []byte(t))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("POST /v1/changes", a.auth(a.createChange))
	mux.Handle("GET /v1/changes/{id}", a.auth(a.getChange))
	mux.Handle("POST /v1/changes/{id}/cancel", a.auth(a.cancelChange))
	mux.Handle("GET /v1/platforms", a.auth(a.listPlatforms))
	mux.Handle("PUT /v1/platforms/{appid}/ticket", a.auth(a.putTicket))
	mux.Handle("POST /v1/platforms/{appid}/resume", a.auth(a.resumePlatform))
	if cfg.Preflight != nil {
		mux.Handle("GET /v1/platforms/{appid}/confirmfile", a.auth(a.confirmFile))
		mux.Handle("POST /v1/platforms/{appid}/preflight", a.auth(a.preflight))
	}
	if cfg.Rollouts != nil {
		mux.Handle("POST /v1/rollouts", a.auth(a.createRollout))
		mux.Handle("GET /v1/rollouts", a.auth(a.listRollouts))
		mux.Handle("GET /v1/rollouts/{id}", a.auth(a.getRollout))
		mux.Handle("GET /v1/rollouts/{id}/tasks", a.auth(a.rolloutTasks))
		mux.Handle("POST /v1/rollouts/{id}/cancel", a.auth(a.cancelRollout))
		mux.Handle("POST /v1/rollouts/{id}/retry", a.auth(a.retryRollout))
	}
	mux.Handle("GET /v1/openapi.json", a.auth(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(OpenAPI)
	}))
	mux.HandleFunc("POST /wechat/events/{appid}", a.wechatEvent)
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", MetricsHandler(cfg.Metrics, cfg.MetricsPublic, cfg.Tokens))
	}
	if cfg.Console != nil {
		mux.Handle("/ui/", a.browserAuth(cfg.Console))
		mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
		mux.Handle("GET /{$}", a.browserAuth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, indexPage)
		})))
	}
	if cfg.Monitoring != nil {
		mux.Handle("/monitoring/", a.browserAuth(cfg.Monitoring))
		mux.Handle("GET /monitoring", http.RedirectHandler("/monitoring/", http.StatusMovedPermanently))
	}
	mux.Handle("/v1/", a.auth(func(w http.ResponseWriter, r *http.Request) {
		route := tasks.Truncate(r.Method) + " " + tasks.Truncate(r.URL.Path)
		if allow := allowedMethods(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", route+" is not served: this path takes "+strings.Join(allow, ", "), nil)
			return
		}
		writeError(w, http.StatusNotFound, "not_found", "no such route: "+route, nil)
	}))
	return sameOrigin(mux, cfg.TrustedOrigins)
}

// indexPage links the browser pages.
const indexPage = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>wxdomain</title></head>
<body><h1>wxdomain</h1><ul>
<li><a href="/ui/">Console</a>: platforms, domains, rollouts, changes</li>
<li><a href="/monitoring/">Queues</a> (asynqmon)</li>
<li><a href="/v1/openapi.json">API</a> (OpenAPI)</li>
</ul></body></html>
`

// routeMethods are the methods a route may be registered with.
var routeMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// allowedMethods lists the methods the mux serves a request's path with,
// other than through the /v1/ catch-all: none for a path no route has. It
// asks the mux itself, so it follows the routes as registered (a route
// left out, such as the preflight ones without Config.Preflight, is none).
// HEAD, which the mux serves with GET's handler, is not listed.
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	var allow []string
	for _, m := range routeMethods {
		probe := r.WithContext(r.Context()) // a shallow copy
		probe.Method = m
		if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/v1/" {
			allow = append(allow, m)
		}
	}
	return allow
}

// sameOrigin refuses state-changing browser requests from other sites on
// every route: a browser resends basic-auth credentials with a cross-site
// form post, so a page an operator visits could otherwise pause queues,
// delete tasks or start rollouts. It checks Sec-Fetch-Site where a browser
// sends it, else Origin, else Referer, against the request's host.
// Requests with none of them (curl, services, WeChat's pushes) are not
// browser requests and pass.
func sameOrigin(h http.Handler, trusted []string) http.Handler {
	cop := http.NewCrossOriginProtection()
	for _, o := range trusted {
		_ = cop.AddTrustedOrigin(o) // checked when the settings were read
	}
	refuse := func(w http.ResponseWriter, why string) {
		writeError(w, http.StatusForbidden, "cross_site_request", "cross-site request refused: "+why+"; state-changing requests must come from this server's own pages", nil)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := cop.Check(r); err != nil {
			refuse(w, "Sec-Fetch-Site or Origin names another site")
			return
		}
		safe := r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions
		if !safe && r.Header.Get("Sec-Fetch-Site") == "" && r.Header.Get("Origin") == "" {
			if ref := r.Header.Get("Referer"); ref != "" {
				u, err := url.Parse(ref)
				if err != nil || (!strings.EqualFold(u.Host, r.Host) && !slices.Contains(trusted, u.Scheme+"://"+u.Host)) {
					refuse(w, "Referer names another site")
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// MetricsHandler guards a metrics handler: open when public, else it needs
// one of the tokens.
func MetricsHandler(h http.Handler, public bool, tokens []string) http.Handler {
	if public {
		return h
	}
	a := &api{}
	for _, t := range tokens {
		a.tokens = append(a.tokens, []byte(t))
	}
	return a.auth(h.ServeHTTP)
}

// Authorized reports whether a request carries one of the tokens, as a
// bearer token or as the password of basic auth (what a browser can send).
// Comparisons take constant time.
func Authorized(r *http.Request, tokens [][]byte) bool {
	_, ok := authorizedAs(r, tokens)
	return ok
}

// authorizedAs also says who asked, for the audit log: the token's place
// in WXDOMAIN_API_TOKENS (never the token) and a basic-auth user name.
func authorizedAs(r *http.Request, tokens [][]byte) (string, bool) {
	var given, user string
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		given = strings.TrimPrefix(h, "Bearer ")
	} else if u, pw, ok := r.BasicAuth(); ok {
		given, user = pw, u
	}
	if given == "" {
		return "", false
	}
	match := 0
	for i, t := range tokens {
		eq := subtle.ConstantTimeCompare([]byte(given), t)
		match = subtle.ConstantTimeSelect(eq, i+1, match)
	}
	if match == 0 {
		return "", false
	}
	who := fmt.Sprintf("api token %d", match)
	if user != "" {
		who += fmt.Sprintf(" (user %q)", tasks.Truncate(user))
	}
	return who, true
}

type callerKey struct{}

// caller is who made an authenticated request.
func caller(r *http.Request) string {
	who, _ := r.Context().Value(callerKey{}).(string)
	return who
}

func (a *api) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, ok := authorizedAs(r, a.tokens)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wxdomain"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid Authorization: Bearer token is required", nil)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, who)))
	})
}

// browserAuth asks a browser for basic auth, whose password is a token.
func (a *api) browserAuth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Authorized(r, a.tokens) {
			w.Header().Set("WWW-Authenticate", `Basic realm="wxdomain monitoring (password: an API token)", charset="UTF-8"`)
			http.Error(w, "log in with an API token as the password", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.cfg.Ready(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, "not_ready", "redis does not answer", nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// changeRequest is the body of POST /v1/changes.
type changeRequest struct {
	Platform string       `json:"platform"`
	Action   tasks.Action `json:"action"`
	Domains  []string     `json:"domains"`
	Publish  bool         `json:"publish"`
	// Preflight is validated with the change (enforce, warn, off).
	Preflight tasks.PreflightMode `json:"preflight"`
}

// DecodeChange reads a change request: one JSON object of known fields,
// nothing after it. It is exported for the fuzz test.
func DecodeChange(body io.Reader) (tasks.JumpDomainChange, error) {
	var req changeRequest
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return tasks.JumpDomainChange{}, err
	}
	if dec.More() {
		return tasks.JumpDomainChange{}, errors.New("unexpected data after the JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return tasks.JumpDomainChange{}, errors.New("unexpected data after the JSON object")
	}
	return tasks.JumpDomainChange{Platform: req.Platform, Action: req.Action, Domains: req.Domains, Publish: req.Publish, Preflight: req.Preflight}, nil
}

// decodeBody applies the size cap and maps decoding failures to API errors.
func (a *api) decodeBody(w http.ResponseWriter, r *http.Request, decode func(io.Reader) error) bool {
	err := decode(http.MaxBytesReader(w, r.Body, a.cfg.MaxBody))
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body is larger than %d bytes", a.cfg.MaxBody), nil)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		writeError(w, http.StatusBadRequest, "unknown_field", fmt.Sprintf("unknown field %q", tasks.Truncate(name)), nil)
	default:
		writeError(w, http.StatusBadRequest, "malformed_json", "request body is not the expected JSON: "+err.Error(), nil)
	}
	return false
}

func (a *api) createChange(w http.ResponseWriter, r *http.Request) {
	var change tasks.JumpDomainChange
	if !a.decodeBody(w, r, func(body io.Reader) (err error) {
		change, err = DecodeChange(body)
		return err
	}) {
		return
	}
	rec, err := a.cfg.Client.Enqueue(r.Context(), change, tasks.EnqueueOptions{IdempotencyKey: r.Header.Get("Idempotency-Key")})
	var ve *tasks.ValidationError
	switch {
	case errors.As(err, &ve):
		status := http.StatusUnprocessableEntity
		writeError(w, status, ve.Code(), ve.Error(), ve.Problems)
		return
	case errors.Is(err, tasks.ErrIdempotencyConflict):
		writeError(w, http.StatusConflict, "idempotency_conflict", err.Error(), nil)
		return
	case errors.Is(err, tasks.ErrInvalidIdempotencyKey):
		writeError(w, http.StatusBadRequest, "invalid_idempotency_key", err.Error(), nil)
		return
	case err != nil:
		a.internal(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/changes/"+rec.TaskID)
	status := http.StatusAccepted
	if rec.Replayed {
		status = http.StatusOK
	}
	writeJSON(w, status, rec)
}

func (a *api) getChange(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx := r.Context()
	var (
		rec *tasks.Record
		err error
	)
	var d time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		var perr error
		if d, perr = time.ParseDuration(v); perr != nil {
			writeError(w, http.StatusBadRequest, "invalid_wait", "wait must be a duration such as 30s", nil)
			return
		}
	}
	if d > 0 {
		// A wait of zero or less is an ordinary read.
		wctx, cancel := context.WithTimeout(ctx, min(d, a.cfg.MaxWait))
		defer cancel()
		rec, err = a.cfg.Client.Wait(wctx, id)
		if errors.Is(err, context.DeadlineExceeded) && rec != nil {
			err = nil // the wait ended first: answer with the record as it is
		}
	} else {
		rec, err = a.cfg.Client.Get(ctx, id)
	}
	a.recordResult(w, r, rec, err)
}

func (a *api) cancelChange(w http.ResponseWriter, r *http.Request) {
	rec, err := a.cfg.Client.Cancel(r.Context(), r.PathValue("id"))
	if errors.Is(err, tasks.ErrFinal) {
		writeError(w, http.StatusConflict, "already_finished", fmt.Sprintf("the change already finished (%s)", rec.Status), nil)
		return
	}
	a.recordResult(w, r, rec, err)
}

// recordResult answers with a change's record or the error that kept it.
func (a *api) recordResult(w http.ResponseWriter, r *http.Request, rec *tasks.Record, err error) {
	switch {
	case errors.Is(err, tasks.ErrTaskNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no change with this task id (or its record expired)", nil)
	case err != nil:
		a.internal(w, r, err)
	default:
		writeJSON(w, http.StatusOK, rec)
	}
}

func (a *api) listPlatforms(w http.ResponseWriter, r *http.Request) {
	report, err := a.cfg.Platforms(r.Context())
	if err != nil {
		a.internal(w, r, err)
		return
	}
	if report == nil {
		report = []platform.Status{} // a list, never null
	}
	writeJSON(w, http.StatusOK, platform.List{Platforms: report})
}

// knownPlatform checks a path's appid as a request body's platform is
// checked (tasks.CheckPlatform): its form, then the platforms file. Either
// problem is answered 422 before anything touches Redis, with the code a
// body naming the same appid gets: invalid_platform for one that is not a
// component appid, unknown_platform for one not in the platforms file.
// 404 is kept for routes and for task and rollout ids that do not exist.
func (a *api) knownPlatform(w http.ResponseWriter, appid string) bool {
	known := a.cfg.KnownPlatform
	if known == nil {
		known = func(string) bool { return false } // no platforms file: none is known
	}
	p, ok := tasks.CheckPlatform(appid, tasks.Rules{KnownPlatform: known})
	if ok {
		return true
	}
	p.Field = "appid" // the path parameter
	var problems tasks.Problems
	problems.Add(p) // cuts the echoed value short
	var ve *tasks.ValidationError
	errors.As(problems.Err(), &ve)
	writeError(w, http.StatusUnprocessableEntity, p.Code, ve.Problems[0].String(), ve.Problems)
	return false
}

func (a *api) putTicket(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !a.knownPlatform(w, appid) {
		return
	}
	var body struct {
		Ticket string `json:"component_verify_ticket"`
		// CreateTime is WeChat's CreateTime of the ticket, in Unix seconds.
		CreateTime *int64 `json:"create_time"`
	}
	if !a.decodeBody(w, r, func(b io.Reader) error {
		dec := json.NewDecoder(b)
		dec.DisallowUnknownFields()
		return dec.Decode(&body)
	}) {
		return
	}
	var created time.Time
	if body.CreateTime != nil {
		var err error
		if created, err = a.ticketTime(*body.CreateTime); err != nil {
			writeError(w, http.StatusUnprocessableEntity, "invalid_create_time", "create_time "+err.Error(), nil)
			return
		}
	}
	res, err := a.cfg.Client.SetTicket(r.Context(), appid, strings.TrimSpace(body.Ticket), created)
	switch {
	case errors.Is(err, tasks.ErrInvalidTicket):
		writeError(w, http.StatusUnprocessableEntity, "invalid_ticket", err.Error(), nil)
		return
	case errors.Is(err, tasks.ErrInvalidTicketTime):
		writeError(w, http.StatusUnprocessableEntity, "invalid_create_time", err.Error(), nil)
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Platform string `json:"platform"`
		tasks.TicketResult
	}{appid, res})
}

// ticketTime checks a ticket's creation time (Unix seconds): a time in the
// future would make every later push look old, so it is refused.
func (a *api) ticketTime(sec int64) (time.Time, error) {
	t := time.Unix(sec, 0)
	if sec <= 0 || tasks.CheckTicketTime(t) != nil {
		return time.Time{}, fmt.Errorf("%d is not a time in Unix seconds up to now (WeChat's CreateTime)", sec)
	}
	return t, nil
}

func (a *api) resumePlatform(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !a.knownPlatform(w, appid) {
		return
	}
	res, err := a.cfg.Client.Resume(r.Context(), appid)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	fields := []zap.Field{zap.String("platform", appid), zap.String("requested_by", caller(r)),
		zap.String("remote_addr", r.RemoteAddr), zap.Int("resumed_changes", res.ResumedChanges)}
	if p := res.EndedPause; p != nil {
		fields = append(fields, zap.String("pause_kind", string(p.Kind)), zap.Time("pause_until", p.Until), zap.String("pause_reason", p.Reason))
	}
	a.cfg.Log.Info("platform resumed by an operator", fields...)
	writeJSON(w, http.StatusOK, struct {
		Platform string `json:"platform"`
		tasks.ResumeResult
	}{appid, res})
}

// maxEventBody caps WeChat's pushes, which are a few hundred bytes.
const maxEventBody = 64 << 10

// errPushRefused is what a push that fails verification is told, whether
// its appid is unknown, has no push settings, or its signature is wrong:
// strangers learn nothing about which appids exist.
var errPushRefused = errors.New("push refused: the signature does not verify")

// wechatEvent receives WeChat's authorization-event pushes: it checks the
// push is fresh, verifies the signature, decrypts, stores a
// component_verify_ticket newer than the one stored, and answers
// "success". A push that fails a check stores nothing.
func (a *api) wechatEvent(w http.ResponseWriter, r *http.Request) {
	// A push is a few hundred bytes: one sent slowly is cut off early.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(a.cfg.PushReadTimeout))
	appid := r.PathValue("appid")
	c, ok := a.cfg.Events(appid)
	if !tasks.ValidAppID(appid) || !ok {
		appid, c = "", nil
	}
	var envelope struct {
		Encrypt string `xml:"Encrypt"`
	}
	if err := xml.NewDecoder(http.MaxBytesReader(w, r.Body, maxEventBody)).Decode(&envelope); err != nil {
		a.pushRefused(appid, "malformed body")
		http.Error(w, "malformed push", http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	sent, err := strconv.ParseInt(q.Get("timestamp"), 10, 64)
	if skew := time.Since(time.Unix(sent, 0)); err != nil || skew > a.cfg.PushMaxSkew || skew < -a.cfg.PushMaxSkew {
		// A captured push sent again later is refused here.
		why := fmt.Sprintf("push refused: its timestamp is missing or more than %s from the server's time (a replayed or delayed push)", a.cfg.PushMaxSkew)
		a.pushRefused(appid, "stale timestamp")
		http.Error(w, why, http.StatusForbidden)
		return
	}
	if c == nil {
		a.pushRefused(appid, "no push settings")
		http.Error(w, errPushRefused.Error(), http.StatusForbidden)
		return
	}
	plain, err := c.Decrypt(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), envelope.Encrypt)
	if err != nil {
		a.pushRefused(appid, err.Error())
		if errors.Is(err, wxcrypt.ErrSignature) {
			err = errPushRefused
		}
		http.Error(w, "push refused: "+strings.TrimPrefix(err.Error(), "push refused: "), http.StatusForbidden)
		return
	}
	var event struct {
		InfoType   string `xml:"InfoType"`
		Ticket     string `xml:"ComponentVerifyTicket"`
		CreateTime int64  `xml:"CreateTime"`
	}
	if err := xml.Unmarshal(plain, &event); err != nil {
		http.Error(w, "malformed event", http.StatusBadRequest)
		return
	}
	if event.InfoType == "component_verify_ticket" {
		created := event.CreateTime
		if created == 0 {
			created = sent // signed and checked above
		}
		at, err := a.ticketTime(created)
		if err != nil {
			a.pushRefused(appid, "CreateTime in the future")
			http.Error(w, "push refused: CreateTime "+err.Error(), http.StatusForbidden)
			return
		}
		res, err := a.cfg.Client.SetTicket(r.Context(), appid, strings.TrimSpace(event.Ticket), at)
		if err != nil {
			// WeChat pushes again in ten minutes; a 500 makes it retry sooner.
			a.cfg.Log.Error("could not store a pushed ticket", zap.String("platform", appid), zap.Error(err))
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		if !res.Stored {
			// An older push (replayed, or overtaken): answered success so
			// that WeChat does not retry it, but nothing changed.
			a.cfg.Log.Debug("older ticket push ignored", zap.String("platform", appid), zap.Time("create_time", at), zap.Time("stored_create_time", res.CreatedAt))
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "success")
}

// pushRefused logs refused pushes at most once a minute per platform (all
// unknown appids share one line), with how many were refused since.
func (a *api) pushRefused(appid, reason string) {
	key := appid
	if key == "" {
		key = "(unknown or without push settings)"
	}
	a.refusedMu.Lock()
	e := a.refused[key]
	if e == nil {
		if len(a.refused) > 1000 {
			clear(a.refused) // bounded, whatever arrives
		}
		e = &refusals{}
		a.refused[key] = e
	}
	e.count++
	now := time.Now()
	if now.Sub(e.logged) < time.Minute {
		a.refusedMu.Unlock()
		return
	}
	n := e.count
	e.count, e.logged = 0, now
	a.refusedMu.Unlock()
	a.cfg.Log.Warn("WeChat pushes refused", zap.String("platform", key), zap.Int("refused", n), zap.String("last_reason", reason))
}

type refusals struct {
	count  int
	logged time.Time
}

// rolloutRequest is the body of POST /v1/rollouts; platforms is a list of
// appids or the string "all".
type rolloutRequest struct {
	Name      string              `json:"name"`
	Action    tasks.Action        `json:"action"`
	Domains   []string            `json:"domains"`
	Publish   bool                `json:"publish"`
	Platforms json.RawMessage     `json:"platforms"`
	Ensure    bool                `json:"ensure"`
	DryRun    bool                `json:"dry_run"`
	Preflight tasks.PreflightMode `json:"preflight"`
}

func (a *api) createRollout(w http.ResponseWriter, r *http.Request) {
	var req rolloutRequest
	if !a.decodeBody(w, r, func(b io.Reader) error {
		dec := json.NewDecoder(b)
		dec.DisallowUnknownFields()
		return dec.Decode(&req)
	}) {
		return
	}
	spec := rollout.Spec{Name: req.Name, Action: req.Action, Domains: req.Domains, Publish: req.Publish, Ensure: req.Ensure, DryRun: req.DryRun, Preflight: req.Preflight}
	var all string
	if err := json.Unmarshal(req.Platforms, &all); err == nil && all == "all" {
		spec.All = true
	} else if err := json.Unmarshal(req.Platforms, &spec.Platforms); err != nil {
		writeError(w, http.StatusBadRequest, "malformed_json", `platforms must be a list of appids or "all"`, nil)
		return
	}
	spec.IdempotencyKey = r.Header.Get("Idempotency-Key")
	ro, err := a.cfg.Rollouts.Create(r.Context(), spec)
	var ve *tasks.ValidationError
	switch {
	case errors.As(err, &ve):
		writeError(w, http.StatusUnprocessableEntity, ve.Code(), ve.Error(), ve.Problems)
	case errors.Is(err, tasks.ErrIdempotencyConflict):
		writeError(w, http.StatusConflict, "idempotency_conflict", err.Error(), nil)
	case errors.Is(err, tasks.ErrInvalidIdempotencyKey):
		writeError(w, http.StatusBadRequest, "invalid_idempotency_key", err.Error(), nil)
	case err != nil:
		a.internal(w, r, err)
	case ro.Mode == rollout.ModeDryRun || ro.Replayed:
		if ro.Replayed {
			w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
		}
		writeJSON(w, http.StatusOK, ro)
	default:
		w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
		writeJSON(w, http.StatusAccepted, ro)
	}
}

func (a *api) rolloutResult(w http.ResponseWriter, r *http.Request, ro *rollout.Rollout, err error) {
	switch {
	case errors.Is(err, rollout.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no rollout with this id", nil)
	case err != nil:
		a.internal(w, r, err)
	default:
		writeJSON(w, http.StatusOK, ro)
	}
}

func (a *api) getRollout(w http.ResponseWriter, r *http.Request) {
	ro, err := a.cfg.Rollouts.Get(r.Context(), r.PathValue("id"))
	a.rolloutResult(w, r, ro, err)
}

func (a *api) cancelRollout(w http.ResponseWriter, r *http.Request) {
	ro, err := a.cfg.Rollouts.Cancel(r.Context(), r.PathValue("id"))
	a.rolloutResult(w, r, ro, err)
}

func (a *api) retryRollout(w http.ResponseWriter, r *http.Request) {
	ro, err := a.cfg.Rollouts.Retry(r.Context(), r.PathValue("id"))
	a.rolloutResult(w, r, ro, err)
}

func (a *api) listRollouts(w http.ResponseWriter, r *http.Request) {
	limit := queryInt(r, "limit", 20, 200)
	list, err := a.cfg.Rollouts.List(r.Context(), limit)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"rollouts": list})
}

func (a *api) rolloutTasks(w http.ResponseWriter, r *http.Request) {
	status := tasks.Status(r.URL.Query().Get("status"))
	switch status {
	case "", tasks.StatusQueued, tasks.StatusRunning, tasks.StatusRetrying, tasks.StatusSucceeded, tasks.StatusPartial, tasks.StatusFailed, tasks.StatusCanceled:
	default:
		writeError(w, http.StatusBadRequest, "invalid_status", "status must be one of queued, running, retrying, succeeded, partial, failed, canceled", nil)
		return
	}
	list, next, err := a.cfg.Rollouts.Tasks(r.Context(), r.PathValue("id"), status, r.URL.Query().Get("cursor"), queryInt(r, "limit", 100, 1000))
	switch {
	case errors.Is(err, rollout.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no rollout with this id", nil)
	case err != nil:
		a.internal(w, r, err)
	default:
		if list == nil {
			list = []rollout.Outcome{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"tasks": list, "next_cursor": next})
	}
}

func queryInt(r *http.Request, name string, def, maxV int) int {
	n, err := strconv.Atoi(r.URL.Query().Get(name))
	if err != nil || n <= 0 {
		return def
	}
	return min(n, maxV)
}

// retryAfterSeconds is what a 503 asks a client to wait.
const retryAfterSeconds = "1"

// internal answers 500 and logs the cause once; the client sees no detail.
// A write Redis replicas did not confirm, or a Redis that does not answer
// for the moment (a failover), is 503 with Retry-After: the request is
// safe to send again (with its idempotency key), and the failover itself
// is logged once by the process, not once per request.
func (a *api) internal(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, tasks.ErrUnconfirmed) {
		a.cfg.Log.Debug("request not confirmed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeError(w, http.StatusServiceUnavailable, "not_confirmed", err.Error(), nil)
		return
	}
	if tasks.RedisUnavailable(err) {
		a.cfg.Log.Debug("redis unavailable", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeError(w, http.StatusServiceUnavailable, "redis_unavailable", "Redis does not answer for the moment (a failover?); send the request again, with the same idempotency key", nil)
		return
	}
	a.cfg.Log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	writeError(w, http.StatusInternalServerError, "internal", "internal error; see the server log", nil)
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Details any    `json:"details,omitempty"`
	} `json:"error"`
}

// Error answers stay small whatever the request held: the message is cut,
// then listed problems are dropped until the answer fits.
const (
	maxErrorMessage = 2 << 10
	maxErrorBody    = 16 << 10
)

func writeError(w http.ResponseWriter, status int, code, msg string, details any) {
	if len(msg) > maxErrorMessage {
		msg = strings.ToValidUTF8(msg[:maxErrorMessage], "") + "… (cut short)"
	}
	var b errorBody
	b.Error.Code, b.Error.Message, b.Error.Details = code, msg, details
	raw, _ := json.Marshal(b)
	for len(raw) > maxErrorBody && b.Error.Details != nil {
		if ps, ok := b.Error.Details.([]tasks.Problem); ok && len(ps) > 1 {
			b.Error.Details = ps[:len(ps)/2]
		} else {
			b.Error.Details = nil
		}
		raw, _ = json.Marshal(b)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(raw, '\n'))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
