package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
)

// browser starts Debian's headless Chromium for a test, every request
// carrying the operator's login (basic auth, an API token as password).
func browser(t *testing.T, token string) context.Context {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv(redistest.EnvRequire) == "1" {
			t.Fatal("chromium is required in CI (.ci/run installs Debian's chromium package)")
		}
		t.Skip("no chromium: install Debian's chromium package to run the console's browser test")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	login := "Basic " + base64.StdEncoding.EncodeToString([]byte("operator:"+token))
	require.NoError(t, chromedp.Run(ctx, network.Enable(), network.SetExtraHTTPHeaders(network.Headers{"Authorization": login})))
	return ctx
}

// artifacts is where screenshots go (WXDOMAIN_ARTIFACTS overrides).
func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("WXDOMAIN_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "test-artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// shoot saves the page at 1280 and at 390 pixels wide.
func shoot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := artifacts(t)
	for _, w := range []int64{1280, 390} {
		var png []byte
		require.NoError(t, chromedp.Run(ctx,
			chromedp.EmulateViewport(w, 900),
			chromedp.Sleep(150*time.Millisecond),
			chromedp.FullScreenshot(&png, 100), // 100: PNG (below: JPEG)
		))
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("console-%s-%d.png", name, w)), png, 0o644))
	}
	require.NoError(t, chromedp.Run(ctx, chromedp.EmulateViewport(1280, 900)))
}

// startConsole runs a fleet (sandbox, two workers) over 50 platforms, 5
// of which WeChat refuses once, and `serve`; it returns the console's URL,
// the token and the fleet.
func startConsole(t *testing.T) (string, string, *fleet2) {
	t.Helper()
	const token = "console-token-0123456789abcdef"
	f := startFleet2(t, 50, "1000", nil, "WXDOMAIN_API_TOKENS="+token)
	for _, a := range f.apps[:5] {
		setFaults(t, f.upstream, a, `{"script":[48001]}`)
	}
	srv := f.c.start("serve", "--addr", "127.0.0.1:0")
	api := waitFor(t, srv, regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`))[1]
	return api, token, f
}

// text reads an element's text.
func text(ctx context.Context, sel string) (string, error) {
	var s string
	err := chromedp.Run(ctx, chromedp.Text(sel, &s, chromedp.ByQuery))
	return strings.TrimSpace(s), err
}

// TestConsoleInHeadlessChromium walks the console as an operator: logs
// in, creates a rollout over 50 sandbox platforms (5 refused once by
// WeChat) through the form after its dry run, watches the progress reach
// done without reloading, reads the failures grouped by errcode, retries
// them and sees the counts change, opens a change's timeline, and the
// domain inventory with its CSV. Screenshots of each page at 1280 and 390
// pixels go to test-artifacts/.
func TestConsoleInHeadlessChromium(t *testing.T) {
	t.Parallel()
	api, token, f := startConsole(t)
	ctx := browser(t, token)
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		require.NoError(t, chromedp.Run(ctx, actions...), what)
	}
	// waitJS polls a JavaScript condition in the page.
	waitJS := func(what, cond string, d time.Duration) {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			var ok bool
			require.NoError(t, chromedp.Run(ctx, chromedp.Evaluate(cond, &ok)), what)
			if ok {
				return
			}
			require.True(t, time.Now().Before(deadline), "timed out: %s", what)
			time.Sleep(200 * time.Millisecond)
		}
	}

	// 1. Log in: the browser sends the token; the console answers.
	run("log in", chromedp.Navigate(api+"/ui/platforms"), chromedp.WaitVisible("main", chromedp.ByQuery))
	shoot(t, ctx, "platforms")

	// 2. A rollout through the form, after its dry run.
	run("fill the form", chromedp.Navigate(api+"/ui/new"),
		chromedp.WaitVisible("#f-platforms", chromedp.ByQuery),
		chromedp.SetValue("#f-platforms", "all", chromedp.ByQuery),
		chromedp.SetValue("#f-action", "add", chromedp.ByQuery),
		chromedp.SetValue("#f-domains", "shop.example.com", chromedp.ByQuery),
		chromedp.SetValue("#f-name", "console walk", chromedp.ByQuery),
	)
	shoot(t, ctx, "new")
	run("preview", chromedp.Click("form.change-form button[type=submit]", chromedp.ByQuery), chromedp.WaitVisible("#preview-title", chromedp.ByQuery))
	preview, err := text(ctx, "main")
	require.NoError(t, err)
	assert.Contains(t, preview, "50", "the dry run covers the 50 platforms")
	shoot(t, ctx, "preview")
	var here string
	run("submit", chromedp.Click(`form[action="/ui/new"] button[type=submit]`, chromedp.ByQuery), chromedp.WaitVisible("#progress", chromedp.ByQuery), chromedp.Location(&here))
	m := regexp.MustCompile(`/ui/rollouts/([0-9a-f]{16})`).FindStringSubmatch(here)
	require.NotNil(t, m, here)
	id := m[1]

	// 3. The progress reaches done without a reload.
	run("mark the page", chromedp.Evaluate(`window.__sameLoad = 1`, nil))
	waitJS("the rollout finishes on the page", `document.querySelector('#progress') && document.querySelector('#progress').getAttribute('data-done') === 'true'`, 2*time.Minute)
	var sameLoad bool
	run("no reload", chromedp.Evaluate(`window.__sameLoad === 1`, &sameLoad))
	assert.True(t, sameLoad, "the page updated itself, it was not reloaded")
	progress, err := text(ctx, "#progress")
	require.NoError(t, err)
	assert.Contains(t, progress, "50 of 50 platforms done")
	shoot(t, ctx, "rollout-done")

	// 4. Failures grouped by errcode, then Retry failed.
	run("reload for the failures", chromedp.Navigate(api+"/ui/rollouts/"+id), chromedp.WaitVisible("#failures", chromedp.ByQuery))
	failures, err := text(ctx, "table.failures")
	require.NoError(t, err)
	assert.Contains(t, failures, "48001")
	assert.Regexp(t, `48001\s+5`, failures, "five platforms in the group")
	shoot(t, ctx, "rollout-failures")
	var top []byte // the first screen, for the README
	run("the rollout page's first screen", chromedp.EmulateViewport(1280, 800), chromedp.CaptureScreenshot(&top))
	require.NoError(t, os.WriteFile(filepath.Join(artifacts(t), "console-rollout.png"), top, 0o644))
	before, err := text(ctx, "#progress")
	require.NoError(t, err)
	run("retry failed", chromedp.Click(`form[action$="/retry"] button`, chromedp.ByQuery), chromedp.WaitVisible("#progress", chromedp.ByQuery))
	waitJS("the retry finishes", `document.querySelector('#progress').getAttribute('data-done') === 'true' && /attempt 1/.test(document.querySelector('#progress').innerText)`, 2*time.Minute)
	after, err := text(ctx, "#progress")
	require.NoError(t, err)
	assert.NotEqual(t, before, after, "the counts changed")
	assert.Regexp(t, `(?s)50\s*succeeded`, after, "every platform succeeded after the retry")

	// 5. One change's timeline.
	run("a change's page", chromedp.Navigate(api+"/ui/changes/"+rollout.TaskID(id, 0, f.apps[0])), chromedp.WaitVisible("main", chromedp.ByQuery))
	change, err := text(ctx, "main")
	require.NoError(t, err)
	assert.Contains(t, change, "48001")
	shoot(t, ctx, "change")

	// 6. The inventory and its CSV.
	run("inventory", chromedp.Navigate(api+"/ui/inventory"), chromedp.WaitVisible("main", chromedp.ByQuery))
	inv, err := text(ctx, "main")
	require.NoError(t, err)
	assert.Contains(t, inv, "shop.example.com")
	shoot(t, ctx, "inventory")
	var csv string
	run("download the CSV", chromedp.Evaluate(`fetch('/ui/inventory.csv').then(r => r.text())`, &csv, func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
	assert.True(t, strings.HasPrefix(csv, "domain,platform,in_testing,in_published,read_at\n"), csv)
	assert.Equal(t, 51, strings.Count(csv, "\n"), "a header and one row per platform")
}
