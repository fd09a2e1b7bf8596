package httpapi_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/httpapi"
)

// The console is served behind the API's tokens, and its form posts
// behind the same-origin rule; / leads to it.
func TestConsoleIsMountedBehindAuthAndSameOrigin(t *testing.T) {
	t.Parallel()
	posted := 0
	b := setup(t, func(c *httpapi.Config) {
		c.Console = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				posted++
			}
			_, _ = io.WriteString(w, "console "+r.URL.Path)
		})
	})
	get := func(path string, header ...string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, b.srv.URL+path, nil)
		require.NoError(t, err)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	status, _ := get("/ui/platforms")
	assert.Equal(t, http.StatusUnauthorized, status, "no token")
	req, _ := http.NewRequest(http.MethodGet, b.srv.URL+"/ui/platforms", nil)
	req.SetBasicAuth("operator", token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "console /ui/platforms", string(body))

	status, body2 := get("/", "Authorization", "Bearer "+token)
	assert.Equal(t, http.StatusOK, status)
	assert.Contains(t, body2, `href="/ui/"`)

	// A cross-site form post is refused before it reaches the console.
	req, _ = http.NewRequest(http.MethodPost, b.srv.URL+"/ui/rollouts/0123456789abcdef/cancel", strings.NewReader(""))
	req.SetBasicAuth("operator", token)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.Header.Set("Origin", "https://evil.example")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Zero(t, posted)
}
