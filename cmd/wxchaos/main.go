// Command wxchaos is wxdomain's fault suite: real worker processes, a real
// Redis of its own (with AOF), the sandbox upstream. Each scenario prints a
// one-line verdict with its figures and the command exits non-zero if any
// change was lost. `make chaos` runs it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/internal/wxcrypt"
	"github.com/wxdomain/wxdomain/tasks"
)

const (
	apiToken   = "chaos-api-token-0123456789"
	pushToken  = "chaos-push-token"
	pushAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wxchaos:", err)
		os.Exit(1)
	}
}

func run() error {
	only := flag.String("run", "", "run only the scenarios whose name matches this regular expression")
	flag.Parse()
	match, err := regexp.Compile(*only)
	if err != nil {
		return fmt.Errorf("-run: %w", err)
	}
	dir, err := os.MkdirTemp("", "wxchaos-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "wxdomain")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/wxdomain").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	failed := false
	for _, sc := range []struct {
		name string
		fn   func(*lab) (string, bool, error)
	}{
		{"SIGKILL a worker holding running tasks", killWorker},
		{"restart Redis (AOF) mid-run", restartRedis},
		{"SIGTERM during load", termWorker},
		{"upstream faults (reset, 502, truncated JSON, 20s stall)", upstreamFaults},
		{"hostile requests to the API", badInput},
		{"preflight (enforce and warn) across a Redis restart", preflightRestart},
		{"graceful Redis failover (Sentinel) mid-load", gracefulFailover},
		{"SIGKILL the Redis primary (Sentinel) mid-load", killPrimary},
	} {
		if !match.MatchString(sc.name) {
			continue
		}
		l, err := newLab(dir, bin)
		if err != nil {
			return err
		}
		verdict, ok, err := sc.fn(l)
		l.close()
		status := "PASS"
		if err != nil || !ok {
			status, failed = "FAIL", true
		}
		if err != nil {
			verdict += " (" + err.Error() + ")"
		}
		fmt.Printf("%s  %s: %s\n", status, sc.name, verdict)
	}
	if failed {
		return errors.New("a scenario failed")
	}
	return nil
}

// lab is one scenario's world: Redis, the sandbox, a platforms file.
type lab struct {
	dir, bin  string
	redisPort int
	redisDir  string
	redis     *exec.Cmd
	rdb       *redis.Client
	upstream  string
	fake      *proc
	env       []string
	apps      []string
	procs     []*proc
}

type proc struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out bytes.Buffer
}

func (p *proc) Write(b []byte) (int, error) { p.mu.Lock(); defer p.mu.Unlock(); return p.out.Write(b) }
func (p *proc) text() string                { p.mu.Lock(); defer p.mu.Unlock(); return p.out.String() }

func freePort() int {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func newLab(dir, bin string) (*lab, error) {
	sub, err := os.MkdirTemp(dir, "lab-")
	if err != nil {
		return nil, err
	}
	l := &lab{dir: sub, bin: bin, redisPort: freePort(), redisDir: filepath.Join(sub, "redis")}
	_ = os.MkdirAll(l.redisDir, 0o755)
	if err := l.startRedis(); err != nil {
		return nil, err
	}
	l.rdb = redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", l.redisPort)})
	yaml := "platforms:\n"
	for i := 0; i < 20; i++ {
		a := fmt.Sprintf("wxc%015x", i)
		l.apps = append(l.apps, a)
		yaml += "  - {appid: " + a + ", secret_env: S, rate: 1000, token: " + pushToken + ", encoding_aes_key: " + pushAESKey + "}\n"
	}
	pf := filepath.Join(sub, "platforms.yaml")
	if err := os.WriteFile(pf, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	l.env = []string{
		"PATH=" + os.Getenv("PATH"), "S=s",
		fmt.Sprintf("WXDOMAIN_REDIS_URL=redis://127.0.0.1:%d/0", l.redisPort),
		"WXDOMAIN_PLATFORMS_FILE=" + pf, "WXDOMAIN_RETRY_BASE=100ms", "WXDOMAIN_RETRY_MAX=2s",
		"WXDOMAIN_POLL_INTERVAL=100ms", "WXDOMAIN_HTTP_TIMEOUT=3s", "WXDOMAIN_SHUTDOWN_TIMEOUT=5s",
		"WXDOMAIN_API_TOKENS=" + apiToken,
	}
	l.fake = l.start("fake-wechat", "--addr", "127.0.0.1:0")
	m, err := l.waitFor(l.fake, `listening on (http://127\.0\.0\.1:\d+)`, 20*time.Second)
	if err != nil {
		return nil, err
	}
	l.upstream = m[1]
	l.env = append(l.env, "WXDOMAIN_WECHAT_BASE_URL="+l.upstream)
	tickets := ticket.NewStore(l.rdb, tasks.DefaultPrefix)
	for _, a := range l.apps {
		if err := tickets.Set(context.Background(), a, "t"); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *lab) startRedis() error {
	l.redis = exec.Command("redis-server", "--port", fmt.Sprint(l.redisPort), "--bind", "127.0.0.1", "--dir", l.redisDir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction")
	if err := l.redis.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", l.redisPort)})
	defer c.Close()
	for i := 0; i < 100; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("redis-server did not answer")
}

func (l *lab) close() {
	for _, p := range append(l.procs, l.fake) {
		if p != nil && p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	}
	_ = l.rdb.Close()
	_ = l.redis.Process.Kill()
	_ = l.redis.Wait()
}

func (l *lab) start(args ...string) *proc {
	p := &proc{cmd: exec.Command(l.bin, args...)}
	p.cmd.Env = l.env
	p.cmd.Stdout, p.cmd.Stderr = p, p
	_ = p.cmd.Start()
	l.procs = append(l.procs, p)
	return p
}

func (l *lab) waitFor(p *proc, pattern string, d time.Duration) ([]string, error) {
	re := regexp.MustCompile(pattern)
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(p.text()); m != nil {
			return m, nil
		}
	}
	return nil, fmt.Errorf("no %q within %s:\n%s", pattern, d, p.text())
}

func (l *lab) worker() (*proc, error) {
	w := l.start("worker", "--concurrency", "10")
	_, err := l.waitFor(w, "worker started", 20*time.Second)
	return w, err
}

func (l *lab) faults(appid string, f map[string]any) error {
	b, _ := json.Marshal(f)
	req, _ := http.NewRequest(http.MethodPut, l.upstream+"/sandbox/platforms/"+appid+"/faults", bytes.NewReader(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

func (l *lab) calls() (int, error) {
	resp, err := http.Get(l.upstream + "/sandbox/calls")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var calls []wechattest.Call
	if err := json.NewDecoder(resp.Body).Decode(&calls); err != nil {
		return 0, err
	}
	n := 0
	for _, c := range calls {
		if c.API == "modify_wxa_jump_domain" && c.ErrCode == 0 {
			n++
		}
	}
	return n, nil
}

// submit enqueues n changes spread over the platforms.
func (l *lab) submit(n int) ([]string, *tasks.Client, error) {
	c := tasks.NewClient(l.rdb, tasks.ClientConfig{PollInterval: 200 * time.Millisecond})
	var ids []string
	for i := 0; i < n; i++ {
		rec, err := c.Enqueue(context.Background(), tasks.JumpDomainChange{
			Platform: l.apps[i%len(l.apps)], Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("c%d.example.com", i)},
		}, tasks.EnqueueOptions{})
		if err != nil {
			return nil, nil, err
		}
		ids = append(ids, rec.TaskID)
	}
	return ids, c, nil
}

// settle waits until every change is final and returns how many are not
// succeeded (lost) and how many upstream calls went beyond one per change.
func (l *lab) settle(c *tasks.Client, ids []string, d time.Duration) (lost, dup int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for _, id := range ids {
		rec, err := c.Wait(ctx, id)
		if err != nil || rec.Status != tasks.StatusSucceeded {
			lost++
		}
	}
	calls, err := l.calls()
	return lost, calls - (len(ids) - lost), err
}

func (l *lab) succeeded(c *tasks.Client, ids []string) int {
	n := 0
	for _, id := range ids {
		if rec, err := c.Get(context.Background(), id); err == nil && rec.Status == tasks.StatusSucceeded {
			n++
		}
	}
	return n
}

func verdict(n, lost, dup int, extra string) (string, bool) {
	return fmt.Sprintf("%d tasks, %d lost, %d duplicates%s", n, lost, dup, extra), lost == 0
}

func killWorker(l *lab) (string, bool, error) {
	for _, a := range l.apps {
		if err := l.faults(a, map[string]any{"latency_ms": 150}); err != nil {
			return "", false, err
		}
	}
	victim, err := l.worker()
	if err != nil {
		return "", false, err
	}
	if _, err := l.worker(); err != nil {
		return "", false, err
	}
	ids, c, err := l.submit(300)
	if err != nil {
		return "", false, err
	}
	for l.succeeded(c, ids) < 60 {
		time.Sleep(100 * time.Millisecond)
	}
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	_ = victim.cmd.Wait()
	// asynq recovers the victim's tasks after its 30s lease, checked every minute.
	lost, dup, err := l.settle(c, ids, 3*time.Minute)
	s, ok := verdict(len(ids), lost, dup, " (duplicates allowed only for the ≤10 tasks running at the kill)")
	return s, ok && dup <= 10, err
}

func restartRedis(l *lab) (string, bool, error) {
	for _, a := range l.apps {
		if err := l.faults(a, map[string]any{"latency_ms": 50}); err != nil {
			return "", false, err
		}
	}
	w, err := l.worker()
	if err != nil {
		return "", false, err
	}
	ids, c, err := l.submit(300)
	if err != nil {
		return "", false, err
	}
	for l.succeeded(c, ids) < 60 {
		time.Sleep(100 * time.Millisecond)
	}
	_ = l.redis.Process.Signal(syscall.SIGTERM) // writes the AOF out
	_ = l.redis.Wait()
	time.Sleep(2 * time.Second)
	if err := l.startRedis(); err != nil {
		return "", false, err
	}
	lost, dup, err := l.settle(c, ids, 3*time.Minute)
	alive := w.cmd.ProcessState == nil
	s, ok := verdict(len(ids), lost, dup, fmt.Sprintf(", worker reconnected without a restart: %v", alive))
	return s, ok && alive, err
}

// preflightRestart runs changes whose domains cannot serve a verification
// file (none resolves here) while Redis restarts: enforce ones fail with
// the reason and never reach WeChat, warn ones are made with the finding,
// none is lost, and the fleet asks WeChat for each platform's file about
// once (it is kept in Redis, which keeps its AOF across the restart).
func preflightRestart(l *lab) (string, bool, error) {
	for _, a := range l.apps {
		if err := l.faults(a, map[string]any{"latency_ms": 50}); err != nil {
			return "", false, err
		}
	}
	for range 2 {
		if _, err := l.worker(); err != nil {
			return "", false, err
		}
	}
	c := tasks.NewClient(l.rdb, tasks.ClientConfig{PollInterval: 200 * time.Millisecond})
	var ids []string
	for i := 0; i < 200; i++ {
		mode, d := tasks.PreflightEnforce, fmt.Sprintf("e%d.example.com", i)
		if i%2 == 1 {
			mode, d = tasks.PreflightWarn, fmt.Sprintf("w%d.example.com", i)
		}
		rec, err := c.Enqueue(context.Background(), tasks.JumpDomainChange{
			Platform: l.apps[i%len(l.apps)], Action: tasks.ActionAdd, Domains: []string{d}, Preflight: mode,
		}, tasks.EnqueueOptions{})
		if err != nil {
			return "", false, err
		}
		ids = append(ids, rec.TaskID)
	}
	for l.final(c, ids) < 40 {
		time.Sleep(50 * time.Millisecond)
	}
	_ = l.redis.Process.Signal(syscall.SIGTERM)
	_ = l.redis.Wait()
	time.Sleep(2 * time.Second)
	if err := l.startRedis(); err != nil {
		return "", false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lost, wrong := 0, 0
	for i, id := range ids {
		rec, err := c.Wait(ctx, id)
		switch {
		case err != nil:
			lost++
		case i%2 == 0 && (rec.Status != tasks.StatusFailed || !strings.Contains(rec.Error, "verification file missing")):
			wrong++
		case i%2 == 1 && (rec.Status != tasks.StatusSucceeded || !rec.PreflightFailed()):
			wrong++
		}
	}
	resp, err := http.Get(l.upstream + "/sandbox/calls")
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	var calls []wechattest.Call
	if err := json.NewDecoder(resp.Body).Decode(&calls); err != nil {
		return "", false, err
	}
	enforced, files := 0, 0
	for _, call := range calls {
		switch {
		case call.API == "modify_wxa_jump_domain" && strings.HasPrefix(call.Domains, "e"):
			enforced++
		case call.API == "get_domain_confirmfile":
			files++
		}
	}
	s := fmt.Sprintf("%d changes, %d lost, %d with the wrong outcome, %d calls for enforce changes that cannot pass, get_domain_confirmfile asked %d times for %d platforms",
		len(ids), lost, wrong, enforced, files, len(l.apps))
	return s, lost == 0 && wrong == 0 && enforced == 0 && files <= 2*len(l.apps), nil
}

// final counts the changes that are final.
func (l *lab) final(c *tasks.Client, ids []string) int {
	n := 0
	for _, id := range ids {
		if rec, err := c.Get(context.Background(), id); err == nil && rec.Status.Final() {
			n++
		}
	}
	return n
}

func termWorker(l *lab) (string, bool, error) {
	for _, a := range l.apps {
		if err := l.faults(a, map[string]any{"latency_ms": 1000}); err != nil {
			return "", false, err
		}
	}
	w, err := l.worker()
	if err != nil {
		return "", false, err
	}
	ids, c, err := l.submit(100)
	if err != nil {
		return "", false, err
	}
	for l.succeeded(c, ids) < 10 {
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	exitErr := w.cmd.Wait()
	stopped := time.Since(start)
	if _, err := l.worker(); err != nil {
		return "", false, err
	}
	lost, dup, err := l.settle(c, ids, 2*time.Minute)
	s, ok := verdict(len(ids), lost, dup, fmt.Sprintf(", worker exited %v in %s (shutdown timeout 5s)", exitErr == nil, stopped.Round(100*time.Millisecond)))
	return s, ok && exitErr == nil && stopped < 8*time.Second, err
}

func upstreamFaults(l *lab) (string, bool, error) {
	for i, a := range l.apps {
		if i%2 == 0 {
			if err := l.faults(a, map[string]any{"transport": []string{"reset", "502", "truncated", "stall"}}); err != nil {
				return "", false, err
			}
		}
	}
	if _, err := l.worker(); err != nil {
		return "", false, err
	}
	ids, c, err := l.submit(100)
	if err != nil {
		return "", false, err
	}
	lost, dup, err := l.settle(c, ids, 2*time.Minute)
	panicked := strings.Contains(l.procs[len(l.procs)-1].text(), "panic")
	s, ok := verdict(len(ids), lost, dup, fmt.Sprintf(", 40 faults injected, panics: %v", panicked))
	return s, ok && !panicked, err
}

func badInput(l *lab) (string, bool, error) {
	srv := l.start("serve", "--addr", "127.0.0.1:0")
	m, err := l.waitFor(srv, `API listening on (http://127\.0\.0\.1:\d+)`, 20*time.Second)
	if err != nil {
		return "", false, err
	}
	api := m[1]
	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf(`"d%d.example.com"`, i)
	}
	corpus := []struct {
		name, body, header, want string
	}{
		{"huge body", `{"platform":"` + strings.Repeat("x", 2<<20) + `"}`, "", "body_too_large"},
		{"deep JSON", strings.Repeat("[", 100000) + strings.Repeat("]", 100000), "", "malformed_json"},
		{"invalid UTF-8", "{\"platform\":\"wx\xff\xfe\",\"action\":\"get\"}", "", "invalid_platform"},
		{"10,000 domains", `{"platform":"` + l.apps[0] + `","action":"set","domains":[` + strings.Join(many, ",") + `]}`, "", "too_many_domains"},
		{"control characters", `{"platform":"` + l.apps[0] + `","action":"add","domains":["a\u0000b.com","c\u0007.com"]}`, "", "invalid_domain"},
		{"oversized idempotency key", `{"platform":"` + l.apps[0] + `","action":"get"}`, strings.Repeat("k", 300), "invalid_idempotency_key"},
		{"unknown field", `{"platform":"` + l.apps[0] + `","action":"get","sql":"drop"}`, "", "unknown_field"},
		{"no token", `{}`, "-", "unauthorized"},
	}
	refused := 0
	var bad []string
	for _, c := range corpus {
		req, _ := http.NewRequest(http.MethodPost, api+"/v1/changes", strings.NewReader(c.body))
		if c.header != "-" {
			req.Header.Set("Authorization", "Bearer "+apiToken)
		}
		if c.header != "" && c.header != "-" {
			req.Header.Set("Idempotency-Key", c.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			bad = append(bad, c.name+": "+err.Error())
			continue
		}
		var body struct {
			Error struct{ Code string } `json:"error"`
		}
		raw, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		_ = json.Unmarshal(raw, &body)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && body.Error.Code == c.want {
			refused++
		} else {
			bad = append(bad, fmt.Sprintf("%s: %d %s", c.name, resp.StatusCode, body.Error.Code))
		}
	}
	// Header injection: net/http will not send CR/LF or NUL in a header, so
	// write the request by hand; the server must refuse it.
	total := len(corpus) + 1
	if status, err := rawRequest(strings.TrimPrefix(api, "http://"), "POST /v1/changes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+apiToken+
		"\r\nIdempotency-Key: a\x00b\r\nContent-Length: 2\r\n\r\n{}"); err != nil || status != 400 {
		bad = append(bad, fmt.Sprintf("header injection: %d %v", status, err))
	} else {
		refused++
	}
	keys, _ := l.rdb.Keys(context.Background(), tasks.DefaultPrefix+"record:*").Result()
	enqueued := len(keys)

	// The edges: replayed pushes, ids that name other keys, cross-site
	// posts, an upstream that redirects.
	for _, c := range l.edgeCases(api) {
		total++
		if c.err != nil {
			bad = append(bad, c.name+": "+c.err.Error())
		} else {
			refused++
		}
	}

	resp, err := http.Get(api + "/healthz")
	serving := err == nil && resp.StatusCode == 200
	if resp != nil {
		_ = resp.Body.Close()
	}
	s := fmt.Sprintf("%d requests, %d refused with their code, %d enqueued, still serving: %v", total, refused, enqueued, serving)
	if len(bad) > 0 {
		s += "; wrong: " + strings.Join(bad, "; ")
	}
	return s, refused == total && enqueued == 0 && serving, nil
}

type edgeCase struct {
	name string
	err  error // nil: handled as it must be
}

// edgeCases tries the holes closed by issue 10 on the running server.
func (l *lab) edgeCases(api string) []edgeCase {
	ctx := context.Background()
	app := l.apps[0]
	ticketKey := tasks.DefaultPrefix + "ticket:" + app
	stored := func() string { return l.rdb.HGet(ctx, ticketKey, "ticket").Val() }
	var out []edgeCase
	check := func(name string, err error) { out = append(out, edgeCase{name, err}) }

	// A fresh push is stored; the same push replayed later, or an older
	// ticket, changes nothing.
	now := time.Now()
	status, _, err := push(api, app, "fresh-ticket", now, now.Add(2*time.Second)) // newer than the lab's ticket
	if err == nil && (status != 200 || stored() != "fresh-ticket") {
		err = fmt.Errorf("fresh push: %d, stored %q", status, stored())
	}
	check("fresh push stored", err)
	status, answer, err := push(api, app, "replayed-ticket", now.Add(-20*time.Minute), now.Add(-20*time.Minute))
	if err == nil && (status != 403 || !strings.Contains(answer, "timestamp") || stored() != "fresh-ticket") {
		err = fmt.Errorf("replayed push: %d %q, stored %q", status, answer, stored())
	}
	check("replayed push (old timestamp) refused", err)
	status, answer, err = push(api, app, "older-ticket", now, now.Add(-time.Hour))
	if err == nil && (status != 200 || answer != "success" || stored() != "fresh-ticket") {
		err = fmt.Errorf("older push: %d %q, stored %q", status, answer, stored())
	}
	check("older ticket answered success, not stored", err)

	// A rollout id naming another key of the rollout.
	id, err := l.createRollout(api, app)
	if err == nil {
		stateKey := tasks.RolloutStateKey(tasks.DefaultPrefix, id)
		before := l.rdb.HGetAll(ctx, stateKey).Val()
		for _, path := range []string{"/v1/rollouts/" + id + ":state/cancel", "/v1/rollouts/" + id + ":counts/retry"} {
			if code, _ := l.call(api, http.MethodPost, path, "", nil); code != 404 {
				err = errors.Join(err, fmt.Errorf("POST %s: %d", path, code))
			}
		}
		if code, _ := l.call(api, http.MethodGet, "/v1/rollouts/"+id+":platforms:0", "", nil); code != 404 {
			err = errors.Join(err, fmt.Errorf("GET :platforms:0: %d", code))
		}
		if after := l.rdb.HGetAll(ctx, stateKey).Val(); fmt.Sprint(after) != fmt.Sprint(before) {
			err = errors.Join(err, fmt.Errorf("state changed: %v → %v", before, after))
		}
	}
	check("rollout ids naming other keys answered 404, nothing written", err)

	// A cross-site form post to the monitoring UI with basic auth.
	code, _ := l.call(api, http.MethodPost, "/monitoring/api/queues/"+tasks.QueueDefault+":pause", "x=1", map[string]string{
		"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded", "basic": "1",
	})
	paused := l.rdb.Exists(ctx, "asynq:{"+tasks.QueueDefault+"}:paused").Val() == 1
	err = nil
	if code != 403 || paused {
		err = fmt.Errorf("cross-site pause: %d, queue paused: %v", code, paused)
	}
	check("cross-site POST to the UI refused", err)

	check("redirecting upstream not followed", l.redirectingUpstream())
	return out
}

// push sends WeChat's encrypted ticket push, sent and created at the given times.
func push(api, appid, ticket string, sent, created time.Time) (int, string, error) {
	c, err := wxcrypt.New(pushToken, pushAESKey, appid)
	if err != nil {
		return 0, "", err
	}
	inner := fmt.Sprintf(`<xml><AppId>%s</AppId><CreateTime>%d</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>%s</ComponentVerifyTicket></xml>`, appid, created.Unix(), ticket)
	enc, err := c.Encrypt([]byte("0123456789abcdef"), []byte(inner))
	if err != nil {
		return 0, "", err
	}
	ts := fmt.Sprint(sent.Unix())
	u := api + "/wechat/events/" + appid + "?timestamp=" + ts + "&nonce=7&encrypt_type=aes&msg_signature=" + c.Signature(ts, "7", enc)
	resp, err := http.Post(u, "text/xml", strings.NewReader("<xml><Encrypt>"+enc+"</Encrypt></xml>"))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// call makes an authenticated API request ("basic" in headers: basic auth).
func (l *lab) call(api, method, path, body string, headers map[string]string) (int, []byte) {
	req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
	if headers["basic"] != "" {
		req.SetBasicAuth("ops", apiToken)
	} else {
		req.Header.Set("Authorization", "Bearer "+apiToken)
	}
	for k, v := range headers {
		if k != "basic" {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (l *lab) createRollout(api, app string) (string, error) {
	code, b := l.call(api, http.MethodPost, "/v1/rollouts", `{"action":"add","domains":["a.com"],"platforms":["`+app+`"]}`, nil)
	var r struct {
		ID string `json:"rollout_id"`
	}
	if err := json.Unmarshal(b, &r); err != nil || code != 202 {
		return "", fmt.Errorf("create rollout: %d %s", code, b)
	}
	return r.ID, nil
}

// redirectingUpstream runs a worker against an upstream that redirects
// every call to a target that records what reaches it: nothing may.
func (l *lab) redirectingUpstream() error {
	var mu sync.Mutex
	var got []string
	target := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.URL.String()+" "+string(b))
		mu.Unlock()
	})}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = target.Serve(tln) }()
	defer target.Close()
	redirector := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+tln.Addr().String()+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	})}
	rln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = redirector.Serve(rln) }()
	defer redirector.Close()

	env := append(append([]string{}, l.env...), "WXDOMAIN_WECHAT_BASE_URL=http://"+rln.Addr().String(), "WXDOMAIN_MAX_ATTEMPTS=2",
		"WXDOMAIN_QUEUE=chaos_redirect", "WXDOMAIN_BULK_QUEUE=chaos_redirect_bulk")
	w := &proc{cmd: exec.Command(l.bin, "worker")}
	w.cmd.Env = env
	w.cmd.Stdout, w.cmd.Stderr = w, w
	if err := w.cmd.Start(); err != nil {
		return err
	}
	l.procs = append(l.procs, w)
	if _, err := l.waitFor(w, "worker started", 20*time.Second); err != nil {
		return err
	}
	c := tasks.NewClient(l.rdb, tasks.ClientConfig{Queue: "chaos_redirect", PollInterval: 100 * time.Millisecond})
	defer c.Close()
	rec, err := c.Enqueue(context.Background(), tasks.JumpDomainChange{Platform: l.apps[1], Action: tasks.ActionGet}, tasks.EnqueueOptions{})
	if err != nil {
		return err
	}
	// A redirect does not pass by itself, not even the token API's: the
	// change uses its two attempts and fails, its record saying why.
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	final, err := c.Wait(wctx, rec.TaskID)
	if err != nil {
		final = nil
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	_ = w.cmd.Wait()
	mu.Lock()
	defer mu.Unlock()
	switch {
	case final == nil:
		return fmt.Errorf("no record: %v", err)
	case len(got) > 0:
		return fmt.Errorf("the redirect's target received %d requests", len(got))
	case final.Status != tasks.StatusFailed || final.Attempts != 2 || !strings.Contains(final.Error, "HTTP 307"):
		return fmt.Errorf("change %s after %d attempts: %s", final.Status, final.Attempts, final.Error)
	case strings.Contains(w.text(), "access_token") || strings.Contains(final.Error, "access_token"):
		return errors.New("a log line or the record names the access token")
	}
	return nil
}

// rawRequest sends bytes as they are and returns the answer's status code.
func rawRequest(addr, req string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return 0, err
	}
	var status int
	_, err = fmt.Sscanf(line, "HTTP/1.1 %d", &status)
	return status, err
}
