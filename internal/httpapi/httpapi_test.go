package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wxcrypt"
	"github.com/wxdomain/wxdomain/tasks"
)

const (
	app   = "wx1234567890abcdef"
	token = "api-token-1"
)

type apiBundle struct {
	srv    *httptest.Server
	client *tasks.Client
	redis  redistest.Bundle
}

func setup(t *testing.T, opts ...func(*httpapi.Config)) *apiBundle {
	t.Helper()
	rb := redistest.Mini(t)
	known := func(a string) bool { return a == app }
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{
		Prefix: rb.Prefix, Queue: rb.Queue, PollInterval: 20 * time.Millisecond,
		Rules: tasks.Rules{KnownPlatform: known},
	})
	t.Cleanup(func() { _ = client.Close() })
	cfg := httpapi.Config{
		Client:        client,
		KnownPlatform: known,
		Platforms: func(context.Context) ([]platform.Status, error) {
			return []platform.Status{{AppID: app, Rate: 5}}, nil
		},
		Ready: func(ctx context.Context) error { return rb.Client.Ping(ctx).Err() },
		Rollouts: rollout.New(rb.Client, client, rollout.Config{
			Prefix: rb.Prefix, Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk", Platforms: []string{app},
			Rules: tasks.Rules{KnownPlatform: known},
		}),
		Tokens:  []string{"other-token", token},
		MaxBody: 4096,
		Log:     zaptest.NewLogger(t),
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv := httptest.NewServer(httpapi.New(cfg))
	t.Cleanup(srv.Close)
	return &apiBundle{srv: srv, client: client, redis: rb}
}

type response struct {
	status int
	header http.Header
	body   map[string]any
}

func (b *apiBundle) do(t *testing.T, method, path, body string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := response{status: resp.StatusCode, header: resp.Header}
	require.NoError(t, json.Unmarshal(raw, &out.body), string(raw))
	return out
}

func errCode(r response) string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestChangesLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := `{"platform":"` + app + `","action":"add","domains":["A.example.com"],"publish":false}`
	r := b.do(t, http.MethodPost, "/v1/changes", body, "Idempotency-Key", "k1")
	require.Equal(t, http.StatusAccepted, r.status, r.body)
	id := r.body["task_id"].(string)
	assert.Equal(t, "/v1/changes/"+id, r.header.Get("Location"))
	assert.Equal(t, "queued", r.body["status"])
	assert.Equal(t, []any{"a.example.com"}, r.body["domains"])

	r = b.do(t, http.MethodPost, "/v1/changes", body, "Idempotency-Key", "k1")
	assert.Equal(t, http.StatusOK, r.status, "same key, same body: the first record")
	assert.Equal(t, id, r.body["task_id"])

	r = b.do(t, http.MethodPost, "/v1/changes", `{"platform":"`+app+`","action":"get"}`, "Idempotency-Key", "k1")
	assert.Equal(t, http.StatusConflict, r.status)
	assert.Equal(t, "idempotency_conflict", errCode(r))

	r = b.do(t, http.MethodGet, "/v1/changes/"+id, "")
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, id, r.body["task_id"])

	start := time.Now()
	r = b.do(t, http.MethodGet, "/v1/changes/"+id+"?wait=300ms", "")
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "queued", r.body["status"], "no worker here: the wait ends with the record as it is")
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)

	r = b.do(t, http.MethodPost, "/v1/changes/"+id+"/cancel", "")
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "canceled", r.body["status"])
	r = b.do(t, http.MethodPost, "/v1/changes/"+id+"/cancel", "")
	assert.Equal(t, http.StatusConflict, r.status)
	assert.Equal(t, "already_finished", errCode(r))
}

func TestErrorCodes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	many := make([]string, 201)
	for i := range many {
		many[i] = `"d` + strconv.Itoa(i) + `.cn"`
	}
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		auth       string
		wantStatus int
		wantCode   string
	}{
		{"no token", "GET", "/v1/platforms", "", "-", 401, "unauthorized"},
		{"wrong token", "GET", "/v1/platforms", "", "Bearer nope", 401, "unauthorized"},
		{"invalid domain", "POST", "/v1/changes", `{"platform":"` + app + `","action":"add","domains":["https://a.com"]}`, "", 422, "invalid_domain"},
		{"too many domains", "POST", "/v1/changes", `{"platform":"` + app + `","action":"set","domains":[` + strings.Join(many, ",") + `]}`, "", 422, "too_many_domains"},
		{"unknown platform", "POST", "/v1/changes", `{"platform":"wx0000000000000000","action":"get"}`, "", 422, "unknown_platform"},
		{"invalid action", "POST", "/v1/changes", `{"platform":"` + app + `","action":"replace","domains":["a.com"]}`, "", 422, "invalid_action"},
		{"malformed json", "POST", "/v1/changes", `{"platform":`, "", 400, "malformed_json"},
		{"trailing data", "POST", "/v1/changes", `{"platform":"` + app + `","action":"get"} {}`, "", 400, "malformed_json"},
		{"unknown field", "POST", "/v1/changes", `{"platform":"` + app + `","action":"get","extra":1}`, "", 400, "unknown_field"},
		{"body too large", "POST", "/v1/changes", `{"platform":"` + strings.Repeat("x", 5000) + `"}`, "", 413, "body_too_large"},
		{"unknown change", "GET", "/v1/changes/0123456789abcdef0123456789abcdef", "", "", 404, "not_found"},
		{"unknown change cancel", "POST", "/v1/changes/0123456789abcdef0123456789abcdef/cancel", "", "", 404, "not_found"},
		{"bad wait", "GET", "/v1/changes/x?wait=soon", "", "", 400, "invalid_wait"},
		{"unknown route", "GET", "/v1/nothing", "", "", 404, "not_found"},
		{"ticket for unknown platform", "PUT", "/v1/platforms/wx0000000000000000/ticket", `{"component_verify_ticket":"t"}`, "", 422, "unknown_platform"},
		{"ticket for an appid of another form", "PUT", "/v1/platforms/wx0/ticket", `{"component_verify_ticket":"t"}`, "", 422, "invalid_platform"},
		{"wrong method", "DELETE", "/v1/changes/0123456789abcdef0123456789abcdef", "", "", 405, "method_not_allowed"},
		{"empty ticket", "PUT", "/v1/platforms/" + app + "/ticket", `{"component_verify_ticket":""}`, "", 422, "invalid_ticket"},
		{"bad idempotency key", "POST", "/v1/changes", `{"platform":"` + app + `","action":"get"}`, "", 400, "invalid_idempotency_key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, b.srv.URL+tt.path, strings.NewReader(tt.body))
			require.NoError(t, err)
			switch tt.auth {
			case "":
				req.Header.Set("Authorization", "Bearer "+token)
			case "-":
			default:
				req.Header.Set("Authorization", tt.auth)
			}
			if tt.wantCode == "invalid_idempotency_key" {
				req.Header.Set("Idempotency-Key", strings.Repeat("k", 300))
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			var body map[string]any
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Equal(t, tt.wantStatus, resp.StatusCode, body)
			assert.Equal(t, tt.wantCode, errCode(response{body: body}))
			e := body["error"].(map[string]any)
			assert.NotEmpty(t, e["message"])
		})
	}
	// Nothing invalid reached Redis.
	keys, err := b.redis.Client.Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys)
}

func TestValidationDetailsNameEachDomain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodPost, "/v1/changes", `{"platform":"`+app+`","action":"add","domains":["ok.com","a.com:80","1.2.3.4"]}`)
	require.Equal(t, http.StatusUnprocessableEntity, r.status)
	details := r.body["error"].(map[string]any)["details"].([]any)
	require.Len(t, details, 2)
	assert.Equal(t, "a.com:80", details[0].(map[string]any)["value"])
	assert.Equal(t, "1.2.3.4", details[1].(map[string]any)["value"])
}

func TestPlatformsTicketAndHealth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodGet, "/v1/platforms", "")
	require.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, app, r.body["platforms"].([]any)[0].(map[string]any)["appid"])

	r = b.do(t, http.MethodPut, "/v1/platforms/"+app+"/ticket", `{"component_verify_ticket":"secret-ticket"}`)
	require.Equal(t, http.StatusOK, r.status)
	assert.EqualValues(t, 0, r.body["resumed_changes"])
	v, err := b.redis.Client.HGet(context.Background(), b.redis.Prefix+"ticket:"+app, "ticket").Result()
	require.NoError(t, err)
	assert.Equal(t, "secret-ticket", v)

	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(b.srv.URL + path) // open: no token
		require.NoError(t, err)
		_ = resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
	b.redis.Mini.Close()
	resp, err := http.Get(b.srv.URL + "/readyz")
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

func TestBasicAuthPasswordIsAToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req, _ := http.NewRequest(http.MethodGet, b.srv.URL+"/v1/platforms", nil)
	req.SetBasicAuth("operator", token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

func FuzzDecodeChange(f *testing.F) {
	f.Add(`{"platform":"wx1","action":"add","domains":["a.com"],"publish":true}`)
	f.Add(`{"platform":"wx1","action":"get"}`)
	f.Add(`{"domains":[` + strings.Repeat(`"a.com",`, 50) + `"b.com"]}`)
	f.Add(`[[[[[[[[[[[[[[[[[[[[`)
	f.Add("{\"platform\":\"\xff\xfe\"}")
	f.Fuzz(func(t *testing.T, body string) {
		c, err := httpapi.DecodeChange(strings.NewReader(body))
		if err != nil {
			return
		}
		// Whatever decodes is then validated without panicking.
		_ = c.ValidateWith(tasks.Rules{KnownPlatform: func(string) bool { return true }})
	})
}

// pusher sends WeChat's encrypted authorization-event pushes.
type pusher struct {
	t       *testing.T
	url     string
	crypter *wxcrypt.Crypter
}

const pushAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

// push sends a component_verify_ticket push for appid, sent at sentAt
// (the query's timestamp) and created at createdAt (its CreateTime); a
// bad signature when sig is "bad".
func (p *pusher) push(appid, ticket string, sentAt, createdAt time.Time, sig string) (int, string) {
	p.t.Helper()
	inner := `<xml><AppId><![CDATA[` + appid + `]]></AppId><CreateTime>` + strconv.FormatInt(createdAt.Unix(), 10) +
		`</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[` + ticket + `]]></ComponentVerifyTicket></xml>`
	enc, err := p.crypter.Encrypt([]byte("0123456789abcdef"), []byte(inner))
	require.NoError(p.t, err)
	body := `<xml><AppId><![CDATA[` + appid + `]]></AppId><Encrypt><![CDATA[` + enc + `]]></Encrypt></xml>`
	ts := strconv.FormatInt(sentAt.Unix(), 10)
	if sig == "" {
		sig = p.crypter.Signature(ts, "1234", enc)
	}
	u := p.url + "/wechat/events/" + appid + "?timestamp=" + ts + "&nonce=1234&encrypt_type=aes&msg_signature=" + sig
	resp, err := http.Post(u, "text/xml", strings.NewReader(body))
	require.NoError(p.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestWeChatTicketPush(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	crypter, err := wxcrypt.New("msgtoken", pushAESKey, app)
	require.NoError(t, err)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	obs, logs := observer.New(zapcore.InfoLevel)
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Client: client,
		Events: func(a string) (*wxcrypt.Crypter, bool) { return crypter, a == app },
		Tokens: []string{token},
		Log:    zap.New(obs),
	}))
	t.Cleanup(srv.Close)
	p := &pusher{t: t, url: srv.URL, crypter: crypter}
	ctx := context.Background()
	ticketKey := rb.Prefix + "ticket:" + app
	stored := func() string {
		v, _ := rb.Client.HGet(ctx, ticketKey, "ticket").Result()
		return v
	}
	now := time.Now()

	// Refused before anything is stored. An unknown appid, one of another
	// form and a bad signature are told the same: strangers cannot tell
	// which appids exist.
	status, refusal := p.push(app, "t-bad-sig", now, now, "0123456789012345678901234567890123456789")
	assert.Equal(t, http.StatusForbidden, status, "bad signature")
	for _, other := range []string{"wx0000000000000000", "_global", "wx1234567890abcdef:x"} {
		status, answer := p.push(other, "t-other", now, now, "")
		assert.Equal(t, http.StatusForbidden, status, other)
		assert.Equal(t, refusal, answer, "%s is answered like a bad signature", other)
	}
	status, answer := p.push(app, "t-stale", now.Add(-6*time.Minute), now.Add(-6*time.Minute), "")
	assert.Equal(t, http.StatusForbidden, status, "a push sent more than 5 minutes ago is a replay")
	assert.Contains(t, answer, "timestamp")
	status, _ = p.push(app, "t-future", now.Add(6*time.Minute), now, "")
	assert.Equal(t, http.StatusForbidden, status, "a timestamp 6 minutes ahead is refused too")
	assert.Empty(t, stored(), "nothing stored")

	// A fresh push is stored.
	status, answer = p.push(app, "ticket@@@new", now, now.Add(-time.Second), "")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "success", answer)
	assert.Equal(t, "ticket@@@new", stored())

	// An older ticket (a push replayed, or overtaken) is answered success,
	// so that WeChat does not retry it, but changes nothing.
	status, answer = p.push(app, "ticket@@@old", now, now.Add(-10*time.Minute), "")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "success", answer)
	assert.Equal(t, "ticket@@@new", stored())

	status, _ = p.push(app, "ticket@@@newer", now, now.Add(time.Second), "")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "ticket@@@newer", stored())

	// Refused pushes are logged at most once a minute per platform, with a count.
	for i := 0; i < 5; i++ {
		p.push(app, "t", now, now, "0123456789012345678901234567890123456789")
	}
	lines := logs.FilterMessage("WeChat pushes refused").All()
	require.Len(t, lines, 2, "one line for the platform, one for unknown appids, in this minute")
	for _, l := range lines {
		assert.EqualValues(t, 1, l.ContextMap()["refused"], "the first refusal is logged at once; later ones are counted")
	}
}

func TestOpenAPIMatchesTheRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *httpapi.Config) { c.Preflight = stubPreflight{} })
	r := b.do(t, http.MethodGet, "/v1/openapi.json", "")
	require.Equal(t, http.StatusOK, r.status)
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(httpapi.OpenAPI, &doc))
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
			concrete := strings.NewReplacer("{task_id}", "0123456789abcdef0123456789abcdef", "{appid}", app, "{rollout_id}", "0123456789abcdef").Replace(path)
			req, err := http.NewRequest(strings.ToUpper(method), b.srv.URL+concrete, strings.NewReader("{}"))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			raw, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			assert.NotEqual(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s %s", method, path)
			assert.NotContains(t, string(raw), "no such route", "%s %s is documented but not served", method, path)
		}
	}
	// Every route the server has is documented (update both together).
	served := []string{
		"POST /v1/changes", "GET /v1/changes/{task_id}", "POST /v1/changes/{task_id}/cancel",
		"GET /v1/platforms", "PUT /v1/platforms/{appid}/ticket", "POST /v1/platforms/{appid}/resume", "GET /v1/openapi.json",
		"POST /wechat/events/{appid}",
		"POST /v1/rollouts", "GET /v1/rollouts", "GET /v1/rollouts/{rollout_id}", "GET /v1/rollouts/{rollout_id}/tasks",
		"POST /v1/rollouts/{rollout_id}/cancel", "POST /v1/rollouts/{rollout_id}/retry",
		"GET /v1/platforms/{appid}/confirmfile", "POST /v1/platforms/{appid}/preflight",
	}
	assert.ElementsMatch(t, served, documented)
}

func TestRolloutRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodPost, "/v1/rollouts", `{"name":"n","action":"add","domains":["a.com"],"platforms":"all","dry_run":true}`)
	require.Equal(t, http.StatusOK, r.status, r.body)
	assert.Equal(t, "dry_run", r.body["mode"])
	assert.Len(t, r.body["plan"], 1)

	r = b.do(t, http.MethodPost, "/v1/rollouts", `{"name":"n","action":"add","domains":["a.com"],"platforms":["`+app+`"]}`)
	require.Equal(t, http.StatusAccepted, r.status, r.body)
	id := r.body["rollout_id"].(string)
	assert.Equal(t, "/v1/rollouts/"+id, r.header.Get("Location"))
	assert.EqualValues(t, 1, r.body["total"])
	assert.EqualValues(t, 1, r.body["counts"].(map[string]any)["queued"])

	r = b.do(t, http.MethodGet, "/v1/rollouts/"+id, "")
	assert.Equal(t, http.StatusOK, r.status)
	r = b.do(t, http.MethodGet, "/v1/rollouts", "")
	assert.Equal(t, http.StatusOK, r.status)
	assert.Len(t, r.body["rollouts"], 1)
	r = b.do(t, http.MethodGet, "/v1/rollouts/"+id+"/tasks?status=queued", "")
	require.Equal(t, http.StatusOK, r.status)
	assert.Len(t, r.body["tasks"], 1)
	r = b.do(t, http.MethodPost, "/v1/rollouts/"+id+"/cancel", "")
	require.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "canceled", r.body["status"])
	assert.EqualValues(t, 1, r.body["counts"].(map[string]any)["canceled"], "never fanned out here: recorded canceled at once")
	r = b.do(t, http.MethodPost, "/v1/rollouts/"+id+"/retry", "")
	require.Equal(t, http.StatusOK, r.status)
	assert.EqualValues(t, 1, r.body["attempt"])

	for _, tt := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/rollouts", `{"action":"add","domains":["a.com"],"platforms":"some"}`, 400, "malformed_json"},
		{"POST", "/v1/rollouts", `{"action":"add","domains":["a.com"],"platforms":["wx0000000000000000"]}`, 422, "unknown_platform"},
		{"POST", "/v1/rollouts", `{"action":"add","domains":["a.com"],"platforms":["wx0"]}`, 422, "invalid_platform"},
		{"POST", "/v1/rollouts", `{"action":"add","domains":["a.com"],"platforms":[]}`, 422, "missing_platforms"},
		{"GET", "/v1/rollouts/nope", "", 404, "not_found"},
		{"GET", "/v1/rollouts/" + id + "/tasks?status=weird", "", 400, "invalid_status"},
	} {
		r := b.do(t, tt.method, tt.path, tt.body)
		assert.Equal(t, tt.status, r.status, tt.path)
		assert.Equal(t, tt.code, errCode(r), tt.path)
	}
}
