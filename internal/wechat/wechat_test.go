package wechat_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/wechat"
)

const secretToken = "TOKEN-THAT-MUST-NOT-LEAK"

// fake answers every call with body, after recording the request.
type fake struct {
	status int
	body   string
	got    *http.Request
	gotRaw map[string]any
}

func (f *fake) start(t *testing.T) *wechat.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.got = r
		b, _ := io.ReadAll(r.Body)
		f.gotRaw = map[string]any{}
		_ = json.Unmarshal(b, &f.gotRaw)
		if f.status != 0 {
			w.WriteHeader(f.status)
		}
		_, _ = io.WriteString(w, f.body)
	}))
	t.Cleanup(srv.Close)
	c, err := wechat.New(srv.URL, &http.Client{Timeout: 2 * time.Second})
	require.NoError(t, err)
	return c
}

func TestModifyJumpDomainRequest(t *testing.T) {
	t.Parallel()
	f := &fake{body: `{"errcode":0,"errmsg":"ok"}`}
	c := f.start(t)
	_, err := c.ModifyJumpDomain(context.Background(), secretToken, wechat.JumpDomainChange{Action: "add", Domains: []string{"www.qq.com", "wx.qq.com"}, Publish: true})
	require.NoError(t, err)
	assert.Equal(t, "/cgi-bin/component/modify_wxa_jump_domain", f.got.URL.Path)
	assert.Equal(t, secretToken, f.got.URL.Query().Get("access_token"))
	assert.Equal(t, http.MethodPost, f.got.Method)
	assert.Equal(t, map[string]any{"action": "add", "wxa_jump_h5_domain": "www.qq.com;wx.qq.com", "is_modify_published_together": true}, f.gotRaw)

	_, err = c.ModifyJumpDomain(context.Background(), secretToken, wechat.JumpDomainChange{Action: "get"})
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"action": "get"}, f.gotRaw, "get sends no domain field")
}

func TestModifyJumpDomainAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give string
		want wechat.JumpDomains
	}{
		{
			name: "full answer",
			give: `{"errcode":0,"errmsg":"ok","published_wxa_jump_h5_domain":"www.qq.com;wx.qq.com","testing_wxa_jump_h5_domain":"www.qq.com;wx.qq.com"}`,
			want: wechat.JumpDomains{ErrMsg: "ok", Testing: []string{"www.qq.com", "wx.qq.com"}, Published: []string{"www.qq.com", "wx.qq.com"}},
		},
		{
			name: "no errcode at all, as seen live for an empty platform",
			give: `{"testing_wxa_jump_h5_domain":""}`,
			want: wechat.JumpDomains{},
		},
		{
			name: "published present but empty is not the same as absent",
			give: `{"errcode":0,"testing_wxa_jump_h5_domain":"a.com","published_wxa_jump_h5_domain":""}`,
			want: wechat.JumpDomains{Testing: []string{"a.com"}, Published: []string{}},
		},
		{
			name: "invalid domains with errcode 0",
			give: `{"errcode":0,"errmsg":"ok","testing_wxa_jump_h5_domain":"a.com","invalid_wxa_jump_h5_domain":"b.com;c.com"}`,
			want: wechat.JumpDomains{ErrMsg: "ok", Testing: []string{"a.com"}, Invalid: []string{"b.com", "c.com"}},
		},
		{
			name: "empty entries and stray spaces dropped",
			give: `{"testing_wxa_jump_h5_domain":";a.com;; b.com ;"}`,
			want: wechat.JumpDomains{Testing: []string{"a.com", "b.com"}},
		},
		{
			name: "unknown fields ignored",
			give: `{"errcode":0,"testing_wxa_jump_h5_domain":"a.com","new_field":{"x":[1,2]},"another":null}`,
			want: wechat.JumpDomains{Testing: []string{"a.com"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := (&fake{body: tt.give}).start(t)
			got, err := c.ModifyJumpDomain(context.Background(), secretToken, wechat.JumpDomainChange{Action: "get"})
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		status        int
		give          string
		wantAPI       *wechat.APIError
		wantTransport string
	}{
		{name: "busy", give: `{"errcode":-1,"errmsg":"system error"}`, wantAPI: &wechat.APIError{Code: -1, Msg: "system error"}},
		{name: "not released", give: `{"errcode":61028,"errmsg":"component is not released"}`, wantAPI: &wechat.APIError{Code: 61028, Msg: "component is not released"}},
		{name: "invalid domains keep errmsg", give: `{"errcode":9410016,"errmsg":"invalid domain: x (reason)"}`, wantAPI: &wechat.APIError{Code: 9410016, Msg: "invalid domain: x (reason)"}},
		{name: "HTTP 502 with HTML", status: 502, give: `<html><body>Bad Gateway</body></html>`, wantTransport: "HTTP 502"},
		{name: "not JSON", give: `<html>oops</html>`, wantTransport: "not the expected JSON"},
		{name: "truncated JSON", give: `{"errcode":0,"testing_wxa_`, wantTransport: "not the expected JSON"},
		{name: "empty body", give: ``, wantTransport: "not the expected JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := (&fake{status: tt.status, body: tt.give}).start(t)
			_, err := c.ModifyJumpDomain(context.Background(), secretToken, wechat.JumpDomainChange{Action: "get"})
			require.Error(t, err)
			assert.NotContains(t, err.Error(), secretToken)
			if tt.wantAPI != nil {
				var apiErr *wechat.APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, tt.wantAPI, apiErr)
				return
			}
			var te *wechat.TransportError
			require.ErrorAs(t, err, &te)
			assert.Contains(t, err.Error(), tt.wantTransport)
		})
	}
}

func TestTransportFailuresNeverLeakTheToken(t *testing.T) {
	t.Parallel()
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		stop := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-stop:
			}
		}))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(stop) }) // runs first: releases the stalled handler
		c, err := wechat.New(srv.URL, &http.Client{Timeout: 100 * time.Millisecond})
		require.NoError(t, err)
		_, err = c.ModifyJumpDomain(context.Background(), secretToken, wechat.JumpDomainChange{Action: "get"})
		var te *wechat.TransportError
		require.ErrorAs(t, err, &te)
		assert.NotContains(t, err.Error(), secretToken)
		assert.NotContains(t, err.Error(), "access_token")
	})
	t.Run("connection reset", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { _ = ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				_ = conn.(*net.TCPConn).SetLinger(0)
				_ = conn.Close()
			}
		}()
		c, err := wechat.New("http://"+ln.Addr().String(), &http.Client{Timeout: time.Second})
		require.NoError(t, err)
		_, err = c.ModifyJumpDomain(context.Background(), secretToken, wechat.JumpDomainChange{Action: "get"})
		var te *wechat.TransportError
		require.ErrorAs(t, err, &te)
		assert.NotContains(t, err.Error(), secretToken)
	})
}

func TestComponentTokenAndConfirmFile(t *testing.T) {
	t.Parallel()
	f := &fake{body: `{"component_access_token":"tok","expires_in":7200}`}
	c := f.start(t)
	tok, err := c.FetchComponentToken(context.Background(), "wxapp", "s3cret", "ticket")
	require.NoError(t, err)
	assert.Equal(t, wechat.ComponentToken{Token: "tok", ExpiresIn: 2 * time.Hour}, tok)
	assert.Equal(t, "/cgi-bin/component/api_component_token", f.got.URL.Path)
	assert.Empty(t, f.got.URL.RawQuery)
	assert.Equal(t, map[string]any{"component_appid": "wxapp", "component_appsecret": "s3cret", "component_verify_ticket": "ticket"}, f.gotRaw)

	f.body = `{"errcode":61006,"errmsg":"component ticket is invalid"}`
	_, err = c.FetchComponentToken(context.Background(), "wxapp", "s3cret", "ticket")
	var apiErr *wechat.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 61006, apiErr.Code)
	assert.NotContains(t, err.Error(), "s3cret")

	f.body = `{"errcode":0,"errmsg":"ok","file_name":"abc.txt","file_content":"xyz"}`
	cf, err := c.DomainConfirmFile(context.Background(), secretToken)
	require.NoError(t, err)
	assert.Equal(t, wechat.ConfirmFile{Name: "abc.txt", Content: "xyz"}, cf)
	assert.Equal(t, secretToken, f.got.URL.Query().Get("access_token"))
}

func TestTokenAnswerIsNeverQuoted(t *testing.T) {
	t.Parallel()
	// A 200 answer that does not decode still holds the token.
	c := (&fake{body: `{"component_access_token":"` + secretToken + `","expires_in":"7200"}`}).start(t)
	_, err := c.FetchComponentToken(context.Background(), "wxapp", "s", "t")
	var te *wechat.TransportError
	require.ErrorAs(t, err, &te)
	assert.NotContains(t, err.Error(), secretToken[:8])
}

func TestNewRefusesBadBaseURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "api.weixin.qq.com", "ftp://x", "http://"} {
		_, err := wechat.New(u, nil)
		assert.Error(t, err, u)
	}
}

// TestTransientFailures: what may pass by itself (no connection, 5xx,
// 429) is transient; a redirect, a 4xx, an untrusted certificate are not.
func TestTransientFailures(t *testing.T) {
	t.Parallel()
	status := func(code int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if code == http.StatusTemporaryRedirect {
				http.Redirect(w, r, "http://example.invalid/", code)
				return
			}
			w.WriteHeader(code)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(tlsSrv.Close)
	for _, c := range []struct {
		name, url string
		transient bool
	}{
		{"503", status(http.StatusServiceUnavailable), true},
		{"429", status(http.StatusTooManyRequests), true},
		{"refused connection", closedURL, true},
		{"307", status(http.StatusTemporaryRedirect), false},
		{"404", status(http.StatusNotFound), false},
		{"untrusted certificate", tlsSrv.URL, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, err := wechat.New(c.url, &http.Client{Timeout: 5 * time.Second})
			require.NoError(t, err)
			_, err = cl.FetchComponentToken(context.Background(), "wx0123456789abcdef", "secret", "ticket")
			var te *wechat.TransportError
			require.ErrorAs(t, err, &te)
			assert.Equal(t, c.transient, te.Transient(), "%v", err)
		})
	}
}
