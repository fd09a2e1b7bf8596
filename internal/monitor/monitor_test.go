package monitor_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

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

func TestUIBehindLogin(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	_, err := client.Enqueue(context.Background(), tasks.JumpDomainChange{Platform: "wx1", Action: "get"}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Client: client, Tokens: []string{"ui-token-0123456789"}, Log: zaptest.NewLogger(t),
		Monitoring: monitor.New(rb.Client, "/monitoring"),
	}))
	t.Cleanup(srv.Close)
	get := func(path string, login bool) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if login {
			req.SetBasicAuth("ops", "ui-token-0123456789")
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
