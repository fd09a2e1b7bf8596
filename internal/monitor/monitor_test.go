package monitor_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/monitor"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

func TestFormatters(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give tasks.JumpDomainChange
		want string
	}{
		{"add", tasks.JumpDomainChange{Platform: "wx1", Action: "add", Domains: []string{"a.com", "b.com"}}, "add a.com, b.com on wx1 (testing)"},
		{"publish", tasks.JumpDomainChange{Platform: "wx1", Action: "set", Domains: []string{"a.com"}, Publish: true}, "set a.com on wx1 (testing and published)"},
		{"get in a rollout", tasks.JumpDomainChange{Platform: "wx1", Action: "get", RolloutID: "r1"}, "get on wx1 [rollout r1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.give)
			require.NoError(t, err)
			assert.Equal(t, tt.want, monitor.FormatPayload(tasks.TypeJumpDomain, b))
		})
	}
	assert.Equal(t, "raw", monitor.FormatPayload("other:type", []byte("raw")))
	assert.Equal(t, "{\n  \"status\": \"succeeded\"\n}", monitor.FormatResult(tasks.TypeJumpDomain, []byte(`{"status":"succeeded"}`)))
}

const uiToken = "ui-token-0123456789"

// uiServer serves the API with the UI over a Redis holding one queued change.
func uiServer(t *testing.T) (redistest.Bundle, *httptest.Server) {
	t.Helper()
	rb := redistest.Mini(t)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	_, err := client.Enqueue(context.Background(), tasks.JumpDomainChange{Platform: "wx0000000000000001", Action: "get"}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Client: client, Tokens: []string{uiToken}, Log: zaptest.NewLogger(t),
		Monitoring: monitor.New(rb.Client, "/monitoring"),
	}))
	t.Cleanup(srv.Close)
	return rb, srv
}

func TestUIBehindLogin(t *testing.T) {
	t.Parallel()
	rb, srv := uiServer(t)
	get := func(path string, login bool) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if login {
			req.SetBasicAuth("ops", uiToken)
		}
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, _ := get("/monitoring/", false)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, resp.Header.Get("WWW-Authenticate"), "Basic")

	resp, body := get("/monitoring/", true)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "<html")

	resp, body = get("/monitoring/api/queues", true)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Contains(t, body, rb.Queue)
}

// TestUIRefusesCrossSiteRequests: a browser resends basic-auth credentials
// with a cross-site form post, so the UI (and the API, which also takes
// them) refuses state-changing requests from other sites; the UI's own
// same-origin requests still work.
func TestUIRefusesCrossSiteRequests(t *testing.T) {
	t.Parallel()
	rb, srv := uiServer(t)
	inspector := asynq.NewInspectorFromRedisClient(rb.Client)
	t.Cleanup(func() { _ = inspector.Close() })
	paused := func() bool {
		info, err := inspector.GetQueueInfo(rb.Queue)
		require.NoError(t, err)
		return info.Paused
	}
	post := func(path string, headers ...string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader("x=1"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("ops", uiToken)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	pausePath := "/monitoring/api/queues/" + rb.Queue + ":pause"
	tests := []struct {
		name    string
		headers []string
	}{
		{"Sec-Fetch-Site cross-site", []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}},
		{"Sec-Fetch-Site same-site", []string{"Sec-Fetch-Site", "same-site"}},
		{"Origin only", []string{"Origin", "https://evil.example"}},
		{"Referer only", []string{"Referer", "https://evil.example/page.html"}},
	}
	for _, tt := range tests {
		assert.Equal(t, http.StatusForbidden, post(pausePath, tt.headers...), tt.name)
		assert.False(t, paused(), "%s: nothing changed", tt.name)
	}
	// The same cross-site post to the API, where basic auth is taken too.
	assert.Equal(t, http.StatusForbidden, post("/v1/rollouts", "Origin", "https://evil.example"))
	keys, err := rb.Client.Keys(context.Background(), rb.Prefix+"rollout*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "no rollout was created")

	// The UI's own requests, and clients that are not browsers, pass.
	assert.Equal(t, http.StatusNoContent, post(pausePath, "Sec-Fetch-Site", "same-origin", "Origin", srv.URL))
	assert.True(t, paused())
	assert.Equal(t, http.StatusNoContent, post("/monitoring/api/queues/"+rb.Queue+":resume"))
	assert.False(t, paused())
	assert.Equal(t, http.StatusNoContent, post(pausePath, "Referer", srv.URL+"/monitoring/queues"))
	assert.True(t, paused())
}
