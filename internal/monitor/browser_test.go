package monitor_test

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// chromium runs Debian's headless Chromium on a URL with extra flags and
// returns what it printed.
func chromium(t *testing.T, bin, url string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=8000",
	}, flags...)
	out, err := exec.CommandContext(ctx, bin, append(args, url)...).Output()
	require.NoError(t, err)
	return string(out)
}

// TestUIInHeadlessChromium logs into /monitoring/ the way a browser does,
// checks the queues page renders our queue, and saves a screenshot to
// test-artifacts/ (WXDOMAIN_ARTIFACTS overrides the folder).
func TestUIInHeadlessChromium(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv(redistest.EnvRequire) == "1" {
			t.Fatal("chromium is required in CI (.ci/run installs Debian's chromium package)")
		}
		t.Skip("no chromium: install Debian's chromium package (apt-get install chromium) to run the browser test")
	}
	rb := redistest.Mini(t)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	_, err = client.Enqueue(context.Background(), tasks.JumpDomainChange{Platform: "wx0000000000000001", Action: "get"}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	const uiToken = "browser-token-0123456789"
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Client: client, Tokens: []string{uiToken}, Log: zaptest.NewLogger(t),
		Monitoring: monitor.New(rb.Client, "/monitoring"),
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	anonymous := chromium(t, bin, srv.URL+"/monitoring/", "--dump-dom")
	assert.NotContains(t, anonymous, rb.Queue, "without a login the UI shows nothing")

	page := "http://ops:" + uiToken + "@" + host + "/monitoring/"
	dom := chromium(t, bin, page, "--dump-dom")
	assert.Contains(t, dom, "Asynq - Monitoring")
	assert.Contains(t, dom, ">"+rb.Queue+"<", "the queues table lists our queue")

	dir := os.Getenv("WXDOMAIN_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "test-artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	shot := filepath.Join(dir, "monitoring-queues.png")
	chromium(t, bin, page, "--window-size=1280,800", "--screenshot="+shot)
	st, err := os.Stat(shot)
	require.NoError(t, err)
	assert.Greater(t, st.Size(), int64(10_000), "a real page, not a blank one")
	t.Logf("screenshot: %s", shot)
}
