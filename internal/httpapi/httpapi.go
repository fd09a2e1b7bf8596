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
	"strconv"
	"strings"
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

// maxWait bounds a long poll.
const maxWait = 60 * time.Second

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
	// Rollouts, if set, serves /v1/rollouts.
	Rollouts *rollout.Service
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
	// MaxBody caps request bodies; default DefaultMaxBody.
	MaxBody int64
	Log     *zap.Logger
}

type api struct {
	cfg    Config
	tokens [][]byte
}

// New returns the API's handler.
func New(cfg Config) http.Handler {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	a := &api{cfg: cfg}
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
	if cfg.Monitoring != nil {
		mux.Handle("/monitoring/", a.browserAuth(cfg.Monitoring))
		mux.Handle("GET /monitoring", http.RedirectHandler("/monitoring/", http.StatusMovedPermanently))
	}
	mux.Handle("/v1/", a.auth(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such route: "+r.Method+" "+r.URL.Path, nil)
	}))
	return mux
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
	var given string
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		given = strings.TrimPrefix(h, "Bearer ")
	} else if _, pw, ok := r.BasicAuth(); ok {
		given = pw
	}
	if given == "" {
		return false
	}
	ok := 0
	for _, t := range tokens {
		ok |= subtle.ConstantTimeCompare([]byte(given), t)
	}
	return ok == 1
}

func (a *api) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Authorized(r, a.tokens) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wxdomain"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid Authorization: Bearer token is required", nil)
			return
		}
		h(w, r)
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
	return tasks.JumpDomainChange{Platform: req.Platform, Action: req.Action, Domains: req.Domains, Publish: req.Publish}, nil
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
	case strings.Contains(err.Error(), "unknown field"):
		writeError(w, http.StatusBadRequest, "unknown_field", err.Error(), nil)
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
	if v := r.URL.Query().Get("wait"); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || d < 0 {
			writeError(w, http.StatusBadRequest, "invalid_wait", "wait must be a duration such as 30s", nil)
			return
		}
		wctx, cancel := context.WithTimeout(ctx, min(d, maxWait))
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
	writeJSON(w, http.StatusOK, map[string]any{"platforms": report})
}

func (a *api) putTicket(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !a.cfg.KnownPlatform(appid) {
		writeError(w, http.StatusNotFound, tasks.CodeUnknownPlatform, "platform is not in the platforms file", nil)
		return
	}
	var body struct {
		Ticket string `json:"component_verify_ticket"`
	}
	if !a.decodeBody(w, r, func(b io.Reader) error {
		dec := json.NewDecoder(b)
		dec.DisallowUnknownFields()
		return dec.Decode(&body)
	}) {
		return
	}
	n, err := a.cfg.Client.SetTicket(r.Context(), appid, strings.TrimSpace(body.Ticket))
	if errors.Is(err, tasks.ErrInvalidTicket) {
		writeError(w, http.StatusUnprocessableEntity, "invalid_ticket", err.Error(), nil)
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"platform": appid, "resumed_changes": n})
}

// maxEventBody caps WeChat's pushes, which are a few hundred bytes.
const maxEventBody = 64 << 10

// wechatEvent receives WeChat's authorization-event pushes: it verifies the
// signature, decrypts, stores component_verify_ticket events and answers
// "success". A push that fails verification stores nothing.
func (a *api) wechatEvent(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	c, ok := a.cfg.Events(appid)
	if !ok {
		http.Error(w, "unknown platform", http.StatusNotFound)
		return
	}
	var envelope struct {
		AppID   string `xml:"AppId"`
		Encrypt string `xml:"Encrypt"`
	}
	if err := xml.NewDecoder(http.MaxBytesReader(w, r.Body, maxEventBody)).Decode(&envelope); err != nil {
		http.Error(w, "malformed push", http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	plain, err := c.Decrypt(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), envelope.Encrypt)
	if err != nil {
		a.cfg.Log.Warn("WeChat push refused", zap.String("platform", appid), zap.Error(err))
		http.Error(w, "push refused: "+err.Error(), http.StatusForbidden)
		return
	}
	var event struct {
		InfoType string `xml:"InfoType"`
		Ticket   string `xml:"ComponentVerifyTicket"`
	}
	if err := xml.Unmarshal(plain, &event); err != nil {
		http.Error(w, "malformed event", http.StatusBadRequest)
		return
	}
	if event.InfoType == "component_verify_ticket" {
		if _, err := a.cfg.Client.SetTicket(r.Context(), appid, strings.TrimSpace(event.Ticket)); err != nil {
			// WeChat pushes again in ten minutes; a 500 makes it retry sooner.
			a.cfg.Log.Error("could not store a pushed ticket", zap.String("platform", appid), zap.Error(err))
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "success")
}

// rolloutRequest is the body of POST /v1/rollouts; platforms is a list of
// appids or the string "all".
type rolloutRequest struct {
	Name      string          `json:"name"`
	Action    tasks.Action    `json:"action"`
	Domains   []string        `json:"domains"`
	Publish   bool            `json:"publish"`
	Platforms json.RawMessage `json:"platforms"`
	Ensure    bool            `json:"ensure"`
	DryRun    bool            `json:"dry_run"`
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
	spec := rollout.Spec{Name: req.Name, Action: req.Action, Domains: req.Domains, Publish: req.Publish, Ensure: req.Ensure, DryRun: req.DryRun}
	var all string
	if err := json.Unmarshal(req.Platforms, &all); err == nil && all == "all" {
		spec.All = true
	} else if err := json.Unmarshal(req.Platforms, &spec.Platforms); err != nil {
		writeError(w, http.StatusBadRequest, "malformed_json", `platforms must be a list of appids or "all"`, nil)
		return
	}
	ro, err := a.cfg.Rollouts.Create(r.Context(), spec)
	var ve *tasks.ValidationError
	switch {
	case errors.As(err, &ve):
		writeError(w, http.StatusUnprocessableEntity, ve.Code(), ve.Error(), ve.Problems)
	case err != nil:
		a.internal(w, r, err)
	case ro.Mode == rollout.ModeDryRun:
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

// internal answers 500 and logs the cause once; the client sees no detail.
func (a *api) internal(w http.ResponseWriter, r *http.Request, err error) {
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

func writeError(w http.ResponseWriter, status int, code, msg string, details any) {
	var b errorBody
	b.Error.Code, b.Error.Message, b.Error.Details = code, msg, details
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
