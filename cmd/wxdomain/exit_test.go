package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

const otherApp = "wxfedcba0987654321"

// A wrong command line is exit status 2, with a line that names what was
// typed, and nothing is done.
func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - appid: "+appID+"\n    secret: s\n")
	tests := []struct {
		give []string
		want string
	}{
		{[]string{"enqueue", "--platform", appID, "--action", "get", "extra-arg"}, `unexpected argument "extra-arg": "wxdomain enqueue" takes no arguments`},
		{[]string{"worker", "--concurrency", "abc"}, `--concurrency "abc": want a whole number`},
		{[]string{"enqueue", "--platform", appID, "--action", "get", "--timeout", "soon"}, `--timeout "soon": want a duration such as 30s, 2m or 1h`},
		{[]string{"enqueue", "--action", "get"}, `required flag(s) "platform" not set`},
		{[]string{"enqueue", "--platform", appID, "--action", "add", "--domains", "https://a.com"}, `domains[0] "https://a.com": has a scheme`},
		{[]string{"enqueue", "--platform", appID, "--action", "add", "--domains", "a.com", "--preflight", "strict"}, `preflight "strict"`},
		{[]string{"enqueue", "--nope"}, "unknown flag: --nope"},
		{[]string{"rollout", "failures", "0123456789abcdef", "--csv", "--json"}, "--csv and --json: choose one"},
		{[]string{"status"}, "accepts 1 arg(s), received 0"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
	}
	for _, tt := range tests {
		_, errOut, err := c.run(tt.give...)
		assert.Equal(t, exitUsage, statusOf(t, err), "%v: %s", tt.give, errOut)
		assert.Contains(t, errOut, tt.want, tt.give)
	}
}

// A short command with Redis down fails at once, in one line naming the
// URL (password masked), the reason and the setting.
func TestRedisDownIsOneLine(t *testing.T) {
	t.Parallel()
	c := &cli{t: t, env: []string{"PATH=" + os.Getenv("PATH"), "WXDOMAIN_REDIS_URL=redis://:pw-hidden@127.0.0.1:1/0", "WXDOMAIN_PLATFORMS_FILE=platforms.example.yaml"}}
	for _, args := range [][]string{{"status", "0123456789abcdef0123456789abcdef"}, {"cancel", "0123456789abcdef0123456789abcdef"}, {"rollout", "list"}} {
		start := time.Now()
		out, errOut, err := c.run(args...)
		assert.Equal(t, exitError, statusOf(t, err), args)
		assert.Empty(t, out)
		assert.Equal(t, 1, strings.Count(errOut, "\n"), "one line: %q", errOut)
		assert.Contains(t, errOut, "redis at redis://:xxxxx@127.0.0.1:1/0 does not answer (dial tcp 127.0.0.1:1: connect: connection refused); set WXDOMAIN_REDIS_URL or --redis-url")
		assert.NotContains(t, errOut, "pw-hidden")
		assert.Less(t, time.Since(start), 10*time.Second, "about a second, not go-redis's retries")
	}
}

// Waiting commands end with 0 (succeeded), 3 (finished, not all
// succeeded) or 4 (timed out; the record is printed).
func TestWaitingCommandsExitStatus(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - appid: "+appID+"\n    secret: s\n  - appid: "+otherApp+"\n    secret: s\n", "WXDOMAIN_RETRY_BASE=50ms")
	fake, upstream := c.startFake()
	defer fake.stop(t)
	for _, a := range []string{appID, otherApp} {
		_, errOut, err := c.run("ticket", "set", a, theTicket)
		require.NoError(t, err, errOut)
	}

	// No worker yet: a wait of 0s prints the queued record and exits 4.
	out, errOut, err := c.run("enqueue", "--platform", appID, "--action", "get", "--wait", "--timeout", "0s")
	assert.Equal(t, exitTimedOut, statusOf(t, err), errOut)
	queued := decodeRecord(t, out)
	assert.Equal(t, tasks.StatusQueued, queued.Status)
	assert.Contains(t, errOut, "still queued after waiting 0s")

	w := c.start("worker")
	waitFor(t, w, regexp.MustCompile(`worker started`))

	out, errOut, err = c.run("status", queued.TaskID, "--wait", "--timeout", "30s")
	assert.Equal(t, exitOK, statusOf(t, err), errOut)
	assert.Equal(t, tasks.StatusSucceeded, decodeRecord(t, out).Status)
	// A finished record with a wait of 0s: printed, exit by its status.
	out, errOut, err = c.run("status", queued.TaskID, "--wait", "--timeout", "0s")
	assert.Equal(t, exitOK, statusOf(t, err), errOut)
	assert.Equal(t, queued.TaskID, decodeRecord(t, out).TaskID)

	setFaults(t, upstream, otherApp, `{"script":[48001,48001]}`)
	out, errOut, err = c.run("enqueue", "--platform", otherApp, "--action", "add", "--domains", "a.example.com", "--wait", "--timeout", "30s")
	assert.Equal(t, exitNotAllSucceeded, statusOf(t, err), errOut)
	assert.Equal(t, tasks.StatusFailed, decodeRecord(t, out).Status)

	// A rollout with a failing platform: the id first, then exit 3.
	out, errOut, err = c.run("rollout", "create", "--action", "add", "--domains", "b.example.com", "--all", "--wait")
	assert.Equal(t, exitNotAllSucceeded, statusOf(t, err), errOut)
	m := regexp.MustCompile(`^rollout ([0-9a-f]{16}) created; following it`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	id := m[1]
	assert.Contains(t, errOut, "1 failed, 0 partial, 0 canceled; `wxdomain rollout failures "+id+"` lists them")
	_, _, err = c.run("rollout", "status", id, "--watch")
	assert.Equal(t, exitNotAllSucceeded, statusOf(t, err))
	out, _, err = c.run("rollout", "status", id)
	assert.Equal(t, exitOK, statusOf(t, err), "a status without --watch is a read")
	assert.NotContains(t, out, "()", "an unnamed rollout")

	// Cancel and retry say what happened, and exit 1 when nothing was done.
	_, errOut, err = c.run("rollout", "cancel", id)
	assert.Equal(t, exitError, statusOf(t, err))
	assert.Contains(t, errOut, "rollout "+id+" is already done; nothing to cancel")
	_, errOut, err = c.run("rollout", "retry", id)
	assert.Equal(t, exitOK, statusOf(t, err), errOut)
	assert.Contains(t, errOut, "attempt 1 runs its failed and canceled platforms again")
	_, _, err = c.run("rollout", "status", id, "--watch")
	assert.Equal(t, exitOK, statusOf(t, err), "the retry succeeded (the fault script is used up)")
	_, errOut, err = c.run("rollout", "retry", id)
	assert.Equal(t, exitError, statusOf(t, err))
	assert.Contains(t, errOut, "nothing to retry")
	w.stop(t)
}

// On an 80-column terminal the progress line is redrawn in place: it
// never wraps, so no line piles up under another.
func TestProgressFitsAnEightyColumnTerminal(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	yaml := "platforms:\n"
	for _, a := range []string{appID, otherApp} {
		yaml += "  - appid: " + a + "\n    secret: s\n    rate: 2\n"
	}
	c := newCLI(t, rb, yaml)
	fake, _ := c.startFake("--latency", "300ms")
	defer fake.stop(t)
	for _, a := range []string{appID, otherApp} {
		_, errOut, err := c.run("ticket", "set", a, theTicket)
		require.NoError(t, err, errOut)
	}
	out, errOut, err := c.run("rollout", "create", "--name", "wide", "--action", "add", "--domains", "a.example.com,b.example.com,c.example.com", "--all", "--json")
	require.NoError(t, err, errOut)
	id := regexp.MustCompile(`"rollout_id":\s*"([0-9a-f]+)"`).FindStringSubmatch(out)[1]
	w := c.start("worker")
	waitFor(t, w, regexp.MustCompile(`worker started`))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "rollout", "status", id, "--watch")
	cmd.Env = c.env
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 80, Rows: 24})
	require.NoError(t, err)
	var (
		mu  sync.Mutex
		raw strings.Builder
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 4096)
		for {
			n, err := tty.Read(b)
			mu.Lock()
			raw.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	require.NoError(t, cmd.Wait())
	_ = tty.Close()
	<-done
	_, _ = io.Copy(io.Discard, tty)
	mu.Lock()
	text := raw.String()
	mu.Unlock()
	lines := strings.Split(strings.TrimRight(text, "\r\n"), "\n")
	require.Len(t, lines, 2, "the progress line, then the final line: %q", text)
	redraws := strings.Split(lines[0], "\r")
	assert.Greater(t, len(redraws), 2, "redrawn in place: %q", lines[0])
	for _, r := range redraws {
		r = strings.TrimPrefix(r, "\x1b[K")
		assert.LessOrEqual(t, len(r), 79, "fits 80 columns: %q", r)
	}
	assert.Contains(t, lines[0], "2/2 ok 2")
	assert.Contains(t, lines[1], "rollout "+id+" done")
	w.stop(t)
}

// An ensure dry run reads each platform's lists (get calls) and shows the
// difference it would apply, per platform.
func TestEnsureDryRunShowsTheDifference(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - appid: "+appID+"\n    secret: s\n  - appid: "+otherApp+"\n    secret: s\n")
	fake, upstream := c.startFake()
	defer fake.stop(t)
	for _, a := range []string{appID, otherApp} {
		_, errOut, err := c.run("ticket", "set", a, theTicket)
		require.NoError(t, err, errOut)
	}
	w := c.start("worker")
	waitFor(t, w, regexp.MustCompile(`worker started`))
	_, errOut, err := c.run("enqueue", "--platform", appID, "--action", "add", "--domains", "shop.example.com", "--wait")
	require.NoError(t, err, errOut)
	_, errOut, err = c.run("enqueue", "--platform", otherApp, "--action", "add", "--domains", "shop.example.com,new.example.com", "--wait")
	require.NoError(t, err, errOut)
	w.stop(t)

	out, errOut, err := c.run("rollout", "create", "--action", "add", "--domains", "shop.example.com,new.example.com", "--all", "--ensure", "--dry-run", "--preflight", "off")
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "ensure dry run: read the current lists of 2 platforms with one get call each")
	assert.Regexp(t, appID+`: would call add new\.example\.com`, out)
	assert.Regexp(t, otherApp+`: nothing to do`, out)
	assert.NotContains(t, out, "would call add shop.example.com,new.example.com", "not the plain plan")
	calls := sandboxCalls(t, upstream)
	assert.Equal(t, 2, calls["get"], "one get per platform")
	assert.Equal(t, 2, calls["add"], "the two changes before; the dry run changed nothing")
}

// sandboxCalls counts modify_wxa_jump_domain calls by action.
func sandboxCalls(t *testing.T, upstream string) map[string]int {
	t.Helper()
	resp, err := http.Get(upstream + "/sandbox/calls")
	require.NoError(t, err)
	defer resp.Body.Close()
	var calls []struct {
		API    string `json:"api"`
		Action string `json:"action"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&calls))
	out := map[string]int{}
	for _, c := range calls {
		if c.API == "modify_wxa_jump_domain" {
			out[c.Action]++
		}
	}
	return out
}

// Settings and the platforms file are reported in the user's words: the
// flag as typed, the file's field and line, the expected shape.
func TestSettingErrorsSpeakTheUsersLanguage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := dir + "/" + name
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	wrongField := write("field.yaml", "platforms:\n  - appid: "+appID+"\n    secret: s\n    rate_limit: 5\n")
	topList := write("list.yaml", "- appid: "+appID+"\n  secret: s\n")
	numericID := write("num.yaml", "platforms:\n  - appid: 12345\n    secret: s\n")
	c := &cli{t: t, env: []string{"PATH=" + os.Getenv("PATH"), "WXDOMAIN_REDIS_URL=redis://127.0.0.1:1/0"}}
	tests := []struct {
		give []string
		want string
	}{
		{[]string{"--log-format", "text", "worker"}, `--log-format "text": want json or console`},
		{[]string{"--platforms-file=/nope.yaml", "worker"}, "--platforms-file /nope.yaml: no such file"},
		{[]string{"worker"}, "WXDOMAIN_PLATFORMS_FILE is not set: it lists the platforms (appid, secret_env, rate) wxdomain may change; set it, or pass --platforms-file; an example is cmd/wxdomain/platforms.example.yaml"},
		{[]string{"--platforms-file", wrongField, "worker"}, `platforms[0]: unknown field "rate_limit"; the fields are appid, secret, secret_env, rate, burst, token, encoding_aes_key`},
		{[]string{"--platforms-file", topList, "worker"}, `must be a mapping with a "platforms" list`},
		{[]string{"--platforms-file", numericID, "worker"}, `platforms[0].appid "12345": not a component appid`},
	}
	for _, tt := range tests {
		_, errOut, err := c.run(tt.give...)
		assert.Equal(t, exitError, statusOf(t, err), "%v: %s", tt.give, errOut)
		assert.Contains(t, errOut, tt.want, tt.give)
		for _, goSpeak := range []string{"config.Platform", "!!seq", "struct {", "strconv."} {
			assert.NotContains(t, errOut, goSpeak, tt.give)
		}
	}
}

// A second dev on a busy API address stops at once, with the useful line
// and nothing else.
func TestDevOnABusyPort(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c := &cli{t: t, env: []string{"PATH=" + os.Getenv("PATH")}}
	out, errOut, err := c.run("dev", "--api-addr", ln.Addr().String(), "--redis-addr", "127.0.0.1:0")
	assert.Equal(t, exitError, statusOf(t, err))
	assert.Empty(t, out)
	assert.Equal(t, 1, strings.Count(errOut, "\n"), "one line: %q", errOut)
	assert.Contains(t, errOut, "another wxdomain dev running? stop it, or pick another address with --api-addr")
}

// A worker whose Redis is down waits for it, one structured line per try,
// none of go-redis's own printing; SIGTERM stops it.
func TestWorkerWaitsForRedis(t *testing.T) {
	t.Parallel()
	c := &cli{t: t, env: []string{"PATH=" + os.Getenv("PATH"), "WXDOMAIN_REDIS_URL=redis://:pw-hidden@127.0.0.1:1/0",
		"WXDOMAIN_PLATFORMS_FILE=platforms.example.yaml", "WX1234_SECRET=s", "WXFEDC_SECRET=s"}}
	w := c.start("worker")
	waitFor(t, w, regexp.MustCompile(`(?s)redis does not answer; trying again.*redis does not answer; trying again`))
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	_ = w.cmd.Wait()
	out := w.output()
	assert.Contains(t, out, `"redis_url":"redis://:xxxxx@127.0.0.1:1/0"`)
	assert.NotContains(t, out, "pw-hidden")
	assert.NotContains(t, out, "pool.go")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, "wxdomain:") {
			assert.True(t, json.Valid([]byte(line)), "structured: %q", line)
		}
	}
}
