package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wxdomain-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "wxdomain")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		panic("build wxdomain: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const (
	appID     = "wx1234567890abcdef"
	appSecret = "SECRET-0f3c9a-never-log-me"
	theTicket = "TICKET-77aa-never-log-me"
)

// cli runs the binary as a person would, with a fixed environment.
type cli struct {
	t   *testing.T
	env []string
}

func (c *cli) run(args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = c.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// background starts a long-running subcommand; its output is collected.
type proc struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out bytes.Buffer
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (c *cli) start(args ...string) *proc {
	c.t.Helper()
	p := &proc{cmd: exec.Command(binary, args...)}
	p.cmd.Env = c.env
	p.cmd.Stdout, p.cmd.Stderr = p, p
	require.NoError(c.t, p.cmd.Start())
	c.t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "exit after SIGTERM; output:\n%s", p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30s after SIGTERM; output:\n%s", p.output())
	}
}

func waitFor(t *testing.T, p *proc, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.output()); m != nil {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("never printed %s; output:\n%s", re, p.output())
	return nil
}

func decodeRecord(t *testing.T, s string) tasks.Record {
	t.Helper()
	var r tasks.Record
	require.NoError(t, json.Unmarshal([]byte(s), &r), s)
	return r
}

// newCLI writes a platforms file and returns a CLI whose environment points
// at the test's Redis namespace; extra holds more VAR=value settings.
func newCLI(t *testing.T, rb redistest.Bundle, platformsYAML string, extra ...string) *cli {
	t.Helper()
	platforms := filepath.Join(t.TempDir(), "platforms.yaml")
	require.NoError(t, os.WriteFile(platforms, []byte(platformsYAML), 0o600))
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"WXDOMAIN_REDIS_URL=" + rb.URL,
		"WXDOMAIN_KEY_PREFIX=" + rb.Prefix,
		"WXDOMAIN_QUEUE=" + rb.Queue,
		"WXDOMAIN_BULK_QUEUE=" + rb.Queue + "_bulk",
		"WXDOMAIN_PLATFORMS_FILE=" + platforms,
		// The tests' domains do not exist: the preflight would find each
		// one's DNS failing, and spend a rate slot on each platform's
		// file. It is tested on its own (preflight_test.go here, and with
		// local HTTPS servers in the worker's tests).
		"WXDOMAIN_PREFLIGHT=off",
	}
	return &cli{t: t, env: append(env, extra...)}
}

// startFake starts fake-wechat and points the CLI at it; it returns its URL.
func (c *cli) startFake(args ...string) (*proc, string) {
	c.t.Helper()
	fake := c.start(append([]string{"fake-wechat", "--addr", "127.0.0.1:0"}, args...)...)
	upstream := waitFor(c.t, fake, regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`))[1]
	c.env = append(c.env, "WXDOMAIN_WECHAT_BASE_URL="+upstream)
	return fake, upstream
}

// TestNewUser walks the README: a sandbox upstream, a worker on a real
// Redis, changes submitted from the CLI.
func TestNewUser(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - appid: "+appID+"\n    secret_env: WX_SECRET\n    rate: 5\n",
		"WXDOMAIN_LOG_LEVEL=debug", "WXDOMAIN_RETRY_BASE=100ms", "WX_SECRET="+appSecret)

	fake, upstream := c.startFake()

	out, _, err := c.run("ticket", "set", appID, theTicket)
	require.NoError(t, err)
	assert.NotContains(t, out, theTicket)

	w := c.start("worker", "--concurrency", "4")
	waitFor(t, w, regexp.MustCompile(`worker started`))

	out, errOut, err := c.run("enqueue", "--platform", appID, "--action", "add", "--domains", "www.example.com, Shop.Example.com", "--wait", "--timeout", "30s")
	require.NoError(t, err, errOut)
	rec := decodeRecord(t, out)
	assert.Equal(t, tasks.StatusSucceeded, rec.Status)
	assert.Equal(t, []string{"www.example.com", "shop.example.com"}, *rec.TestingDomains)

	out, errOut, err = c.run("status", rec.TaskID)
	require.NoError(t, err, errOut)
	assert.Equal(t, rec.TaskID, decodeRecord(t, out).TaskID)

	_, errOut, err = c.run("status", "0000000000000000deadbeef00000000")
	require.Error(t, err)
	assert.Contains(t, errOut, "task not found")

	_, errOut, err = c.run("enqueue", "--platform", appID, "--action", "add", "--domains", "https://a.com,b.com:8080")
	require.Error(t, err)
	assert.Contains(t, errOut, `domains[0] "https://a.com": has a scheme`)
	assert.Contains(t, errOut, `domains[1] "b.com:8080": has a port`)
	assert.Contains(t, errOut, "nothing was enqueued")

	_, errOut, err = c.run("enqueue", "--platform", "wx0000000000000000", "--action", "get")
	require.Error(t, err)
	assert.Contains(t, errOut, "is not in the platforms file")

	out, errOut, err = c.run("enqueue", "--platform", appID, "--action", "get", "--key", "k-1", "--wait")
	require.NoError(t, err, errOut)
	first := decodeRecord(t, out)
	out, _, err = c.run("enqueue", "--platform", appID, "--action", "get", "--key", "k-1")
	require.NoError(t, err)
	assert.Equal(t, first.TaskID, decodeRecord(t, out).TaskID)
	_, errOut, err = c.run("enqueue", "--platform", appID, "--action", "add", "--domains", "x.com", "--key", "k-1")
	require.Error(t, err)
	assert.Contains(t, errOut, "idempotency key already used")

	_, errOut, err = c.run("cancel", rec.TaskID)
	require.Error(t, err)
	assert.Contains(t, errOut, "already finished")

	// A change WeChat refuses: its error lands in the record and in asynq.
	req, err := http.NewRequest(http.MethodPut, upstream+"/sandbox/platforms/"+appID+"/faults", strings.NewReader(`{"script":[48001]}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	out, errOut, err = c.run("enqueue", "--platform", appID, "--action", "add", "--domains", "refused.example.com", "--wait")
	assert.Equal(t, exitNotAllSucceeded, statusOf(t, err), errOut)
	assert.Equal(t, tasks.StatusFailed, decodeRecord(t, out).Status)

	// Secrets, tickets and tokens appear in no log line, no record and
	// nothing asynq keeps (task messages, stored errors).
	ctx := context.Background()
	tok, err := rb.Client.HGet(ctx, rb.Prefix+"token:"+appID, "token").Result()
	require.NoError(t, err)
	require.NotEmpty(t, tok)
	w.stop(t)
	fake.stop(t)
	var records, queue strings.Builder
	for pattern, sink := range map[string]*strings.Builder{rb.Prefix + "record:*": &records, "asynq:{" + rb.Queue + "}*": &queue} {
		keys, err := rb.Client.Keys(ctx, pattern).Result()
		require.NoError(t, err)
		require.NotEmpty(t, keys, pattern)
		for _, k := range keys {
			switch rb.Client.Type(ctx, k).Val() {
			case "string":
				sink.WriteString(rb.Client.Get(ctx, k).Val())
			case "hash":
				for f, v := range rb.Client.HGetAll(ctx, k).Val() {
					sink.WriteString(f + "=" + v + "\n")
				}
			case "list":
				sink.WriteString(strings.Join(rb.Client.LRange(ctx, k, 0, -1).Val(), "\n"))
			case "zset":
				sink.WriteString(strings.Join(rb.Client.ZRange(ctx, k, 0, -1).Val(), "\n"))
			}
		}
	}
	require.Contains(t, queue.String(), "48001", "asynq kept the failed task's error, so the check below covers it")
	for name, text := range map[string]string{"worker log": w.output(), "sandbox log": fake.output(), "records": records.String(), "asynq data": queue.String()} {
		for _, secret := range []string{appSecret, theTicket, tok} {
			assert.NotContains(t, text, secret, "%s leaks a secret", name)
		}
	}
	assert.Contains(t, w.output(), "component token fetched", "the worker logged at debug level, so the check above means something")
}

func TestErrorsNameTheProblem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	platforms := filepath.Join(dir, "platforms.yaml")
	require.NoError(t, os.WriteFile(platforms, []byte("platforms:\n  - appid: "+appID+"\n    secret_env: WX_SECRET\n"), 0o600))
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{
			name: "bad domain refused before Redis is contacted",
			env:  map[string]string{"WXDOMAIN_REDIS_URL": "redis://127.0.0.1:1/0", "WXDOMAIN_PLATFORMS_FILE": platforms},
			args: []string{"enqueue", "--platform", appID, "--action", "set", "--domains", "*.example.com"},
			want: "wildcards are not allowed",
		},
		{
			name: "bad setting",
			env:  map[string]string{"WXDOMAIN_CONCURRENCY": "lots"},
			args: []string{"worker"},
			want: "WXDOMAIN_CONCURRENCY",
		},
		{
			name: "no platforms file",
			args: []string{"worker"},
			want: "WXDOMAIN_PLATFORMS_FILE is not set",
		},
		{
			name: "secret variable missing",
			env:  map[string]string{"WXDOMAIN_PLATFORMS_FILE": platforms},
			args: []string{"worker"},
			want: "environment variable WX_SECRET (its secret_env) is not set",
		},
		{
			name: "Redis down",
			env:  map[string]string{"WXDOMAIN_REDIS_URL": "redis://:pw-hidden@127.0.0.1:1/0"},
			args: []string{"status", "abc"},
			want: "redis at redis://:xxxxx@127.0.0.1:1/0 does not answer",
		},
		{
			name: "API on a public address without tokens",
			env:  map[string]string{"WXDOMAIN_PLATFORMS_FILE": platforms, "WXDOMAIN_HTTP_ADDR": "0.0.0.0:8080"},
			args: []string{"serve"},
			want: "refusing to serve the API on the non-loopback address 0.0.0.0:8080 without authentication",
		},
		{
			name: "weak API token",
			env:  map[string]string{"WXDOMAIN_API_TOKENS": "short"},
			args: []string{"serve"},
			want: "WXDOMAIN_API_TOKENS: token 1 is shorter than 16 characters",
		},
		{
			name: "missing required flag",
			args: []string{"enqueue", "--action", "get"},
			want: `required flag(s) "platform" not set`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := run(ctx, tt.args, func(k string) string { return tt.env[k] }, &stdout, &stderr)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NotContains(t, err.Error(), "pw-hidden")
		})
	}
}

func TestDevRunsTheSampleChange(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"dev", "--api-addr", "127.0.0.1:0"}, func(string) string { return "" }, pw, io.Discard)
		_ = pw.Close()
	}()
	var printed strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		printed.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "enqueue --platform") {
			break
		}
	}
	assert.Contains(t, printed.String(), `"status": "succeeded"`)
	assert.Regexp(t, `export WXDOMAIN_REDIS_URL=redis://127\.0\.0\.1:\d+/0`, printed.String())
	assert.Regexp(t, `export WXDOMAIN_API_TOKEN=wxd_[0-9a-f]{32}`, printed.String())
	cancel()
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not stop on cancel")
	}
}
