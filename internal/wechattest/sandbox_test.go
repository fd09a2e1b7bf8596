package wechattest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/internal/wechattest"
)

const app = "wxaaaaaaaaaaaaaaaa"

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type sandboxBundle struct {
	sb     *wechattest.Sandbox
	url    string
	client *wechat.Client
	clock  *clock
}

func setup(t *testing.T, p wechattest.Platform) *sandboxBundle {
	t.Helper()
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	sb := wechattest.New(wechattest.Config{Strict: true, Now: clk.Now, MaxDomains: 3})
	p.AppID = app
	sb.PutPlatform(p)
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	c, err := wechat.New(srv.URL, nil)
	require.NoError(t, err)
	return &sandboxBundle{sb: sb, url: srv.URL, client: c, clock: clk}
}

func (b *sandboxBundle) token(t *testing.T) string {
	t.Helper()
	tok, err := b.client.FetchComponentToken(context.Background(), app, "s", "ticket")
	require.NoError(t, err)
	return tok.Token
}

func (b *sandboxBundle) modify(t *testing.T, tok, action string, publish bool, domains ...string) (wechat.JumpDomains, int) {
	t.Helper()
	res, err := b.client.ModifyJumpDomain(context.Background(), tok, wechat.JumpDomainChange{Action: action, Domains: domains, Publish: publish})
	if err != nil {
		var apiErr *wechat.APIError
		require.ErrorAs(t, err, &apiErr)
		return res, apiErr.Code
	}
	return res, 0
}

func TestTokenIssue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		platform wechattest.Platform
		appid    string
		secret   string
		ticket   string
		wantCode int
	}{
		{name: "ok", platform: wechattest.Platform{Secret: "s"}, appid: app, secret: "s", ticket: "t"},
		{name: "wrong secret", platform: wechattest.Platform{Secret: "s"}, appid: app, secret: "x", ticket: "t", wantCode: 40125},
		{name: "no ticket", platform: wechattest.Platform{}, appid: app, secret: "s", wantCode: 61006},
		{name: "wrong ticket", platform: wechattest.Platform{Ticket: "good"}, appid: app, secret: "s", ticket: "bad", wantCode: 61006},
		{name: "unknown appid in strict mode", appid: "wxunknown", secret: "s", ticket: "t", wantCode: 40013},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.platform)
			tok, err := b.client.FetchComponentToken(context.Background(), tt.appid, tt.secret, tt.ticket)
			if tt.wantCode == 0 {
				require.NoError(t, err)
				assert.Equal(t, 2*time.Hour, tok.ExpiresIn)
				assert.Equal(t, 1, b.sb.TokenFetches(app))
				return
			}
			var apiErr *wechat.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, tt.wantCode, apiErr.Code)
		})
	}
}

func TestTokenLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, wechattest.Platform{Released: true})
	first := b.token(t)
	_, code := b.modify(t, first, "get", false)
	assert.Equal(t, 0, code)

	second := b.token(t)
	_, code = b.modify(t, first, "get", false)
	assert.Equal(t, 0, code, "the previous token works during the grace period")
	third := b.token(t)
	_, code = b.modify(t, first, "get", false)
	assert.Equal(t, 40001, code, "tokens older than the previous one stop at once")
	_, code = b.modify(t, second, "get", false)
	assert.Equal(t, 0, code)

	b.clock.Add(wechattest.DefaultGrace + time.Second)
	_, code = b.modify(t, second, "get", false)
	assert.Equal(t, 42001, code, "the previous token expires after the grace period")
	_, code = b.modify(t, third, "get", false)
	assert.Equal(t, 0, code)

	b.clock.Add(2 * time.Hour)
	_, code = b.modify(t, third, "get", false)
	assert.Equal(t, 42001, code)

	fresh := b.token(t)
	b.sb.RevokeTokens()
	_, code = b.modify(t, fresh, "get", false)
	assert.Equal(t, 40001, code)
	_, code = b.modify(t, "", "get", false)
	assert.Equal(t, 41001, code)
}

func TestModifySemantics(t *testing.T) {
	t.Parallel()
	b := setup(t, wechattest.Platform{Released: true, Verified: []string{"a.com", "b.com", "c.com", "d.com"}})
	tok := b.token(t)

	res, code := b.modify(t, tok, "set", false, "a.com", "b.com")
	require.Equal(t, 0, code)
	assert.Equal(t, []string{"a.com", "b.com"}, res.Testing)
	assert.Equal(t, []string{}, res.Published, "released platform: published list present, unchanged")

	res, code = b.modify(t, tok, "add", true, "c.com", "a.com")
	require.Equal(t, 0, code)
	assert.Equal(t, []string{"a.com", "b.com", "c.com"}, res.Testing)
	assert.Equal(t, []string{"c.com", "a.com"}, res.Published)

	_, code = b.modify(t, tok, "add", false, "d.com")
	assert.Equal(t, 65316, code, "limit is 3 in this sandbox")

	res, code = b.modify(t, tok, "delete", false, "b.com", "absent.com")
	require.Equal(t, 0, code, "deleting an absent domain is not an error")
	assert.Equal(t, []string{"a.com", "c.com"}, res.Testing)

	res, code = b.modify(t, tok, "add", false, "unverified.com")
	require.Equal(t, 0, code, "unverified domains come back with errcode 0")
	assert.Equal(t, []string{"unverified.com"}, res.Invalid)
	assert.Equal(t, []string{"a.com", "c.com"}, res.Testing, "and are not applied")

	_, code = b.modify(t, tok, "add", false, "http://x.com")
	assert.Equal(t, 9410016, code)
	_, code = b.modify(t, tok, "replace", false, "a.com")
	assert.Equal(t, 40052, code)

	p, ok := b.sb.Platform(app)
	require.True(t, ok)
	assert.Equal(t, []string{"a.com", "c.com"}, p.Testing)
}

func TestUnreleasedPlatform(t *testing.T) {
	t.Parallel()
	b := setup(t, wechattest.Platform{})
	tok := b.token(t)
	res, code := b.modify(t, tok, "get", false)
	require.Equal(t, 0, code)
	assert.Nil(t, res.Published)
	assert.Nil(t, res.Testing)
	assert.Equal(t, "", res.ErrMsg, "the live quirk: no errcode, no errmsg")

	_, code = b.modify(t, tok, "add", true, "a.com")
	assert.Equal(t, 61028, code)
	res, code = b.modify(t, tok, "add", false, "a.com")
	require.Equal(t, 0, code)
	assert.Nil(t, res.Published, "never released: no published list")
	assert.Equal(t, []string{"a.com"}, res.Testing)
}

func TestFaults(t *testing.T) {
	t.Parallel()
	b := setup(t, wechattest.Platform{Released: true})
	tok := b.token(t)
	b.sb.SetFaults(app, wechattest.Faults{Script: []int{-1, 0, 45011}})
	_, code := b.modify(t, tok, "get", false)
	assert.Equal(t, -1, code)
	_, code = b.modify(t, tok, "get", false)
	assert.Equal(t, 0, code)
	_, code = b.modify(t, tok, "get", false)
	assert.Equal(t, 45011, code)
	_, code = b.modify(t, tok, "get", false)
	assert.Equal(t, 0, code, "script used up")

	b.sb.SetFaults(app, wechattest.Faults{BusyRate: 1})
	_, code = b.modify(t, tok, "get", false)
	assert.Equal(t, -1, code)

	b.sb.SetFaults(app, wechattest.Faults{TokenErrCode: 61004})
	_, err := b.client.FetchComponentToken(context.Background(), app, "s", "t")
	var apiErr *wechat.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 61004, apiErr.Code)

	calls := b.sb.Calls()
	require.Len(t, calls, 7)
	assert.Equal(t, wechattest.Call{Time: calls[1].Time, API: "modify_wxa_jump_domain", AppID: app, Action: "get", ErrCode: -1}, calls[1])
	st := b.sb.Stats()
	assert.Equal(t, 1, st.TokenFetches[app])
	assert.Equal(t, 2, st.Calls["modify_wxa_jump_domain -1"])
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t, wechattest.Platform{Secret: "s", Released: true})
	do := func(method, path, body string) *http.Response {
		req, err := http.NewRequest(method, b.url+path, bytes.NewBufferString(body))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { _ = resp.Body.Close() })
		return resp
	}
	resp := do(http.MethodPut, "/sandbox/platforms/wxnew", `{"secret":"n","released":false,"testing":["x.com"]}`)
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	p, ok := b.sb.Platform("wxnew")
	require.True(t, ok)
	assert.Equal(t, []string{"x.com"}, p.Testing)

	resp = do(http.MethodPut, "/sandbox/platforms/"+app+"/faults", `{"script":[-1],"latency_ms":1}`)
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	tok := b.token(t)
	_, code := b.modify(t, tok, "get", false)
	assert.Equal(t, -1, code)

	resp = do(http.MethodPost, "/sandbox/revoke_tokens", "")
	var revoked map[string]int
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&revoked))
	assert.Equal(t, 1, revoked["revoked"])

	resp = do(http.MethodGet, "/sandbox/platforms", "")
	var platforms []map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&platforms))
	require.Len(t, platforms, 2)
	assert.NotContains(t, platforms[0], "secret", "the admin API never shows secrets")

	resp = do(http.MethodGet, "/sandbox/stats", "")
	var st wechattest.Stats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	assert.Equal(t, 1, st.TokenFetches[app])

	resp = do(http.MethodPut, "/sandbox/platforms/x", `{not json`)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
}
