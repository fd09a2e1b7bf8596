package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

var baseline = flag.Bool("baseline", true, "also run each Redis failover scenario with WXDOMAIN_REDIS_MIN_REPLICAS=0 and print its loss (informational, never fails)")

// Load of the failover scenarios: enqueues through the CLI at about 20/s,
// the primary changed 4s in, the load kept up until 2s after the group has
// settled (at least 10s, at most 30s).
const (
	enqueueEvery   = 50 * time.Millisecond
	triggerAfter   = 4 * time.Second
	minLoad        = 10 * time.Second
	maxLoad        = 30 * time.Second
	loadAfterSwap  = 2 * time.Second
	finalBound     = 45 * time.Second
	baselineBound  = 20 * time.Second // a baseline does not wait for asynq's recovery anyway
	recoveryBound  = 2 * time.Minute
	upstreamDelay  = 200 // ms per call, so that changes are in flight at the switch
	primaryChanged = "redis primary changed"
	// enqueueTimeout is shorter than the ~10s a graceful failover leaves
	// the new primary without a replica, so that some enqueues fail and
	// are retried with their key, as an impatient producer would.
	enqueueTimeout = "5s"
)

func gracefulFailover(l *lab) (string, bool, error) { return failoverScenario(l, false) }

func killPrimary(l *lab) (string, bool, error) { return failoverScenario(l, true) }

// failoverScenario runs the load across a change of primary with durable
// acknowledgement on, then, with -baseline, once more with it off; the
// baseline's loss is reported, never judged.
func failoverScenario(l *lab, kill bool) (string, bool, error) {
	// go-redis announces each new primary on stderr; the verdict says it.
	redis.SetLogger(quietRedis{})
	for _, a := range l.apps {
		if err := l.faults(a, map[string]any{"latency_ms": upstreamDelay}); err != nil {
			return "", false, err
		}
	}
	r, err := l.failoverRun(kill, 1, true)
	if err != nil {
		return "", false, err
	}
	verdict, ok := r.verdict()
	if *baseline {
		b, err := l.failoverRun(kill, 0, false)
		if err != nil {
			verdict += "; baseline MIN_REPLICAS=0 did not run: " + err.Error()
		} else {
			verdict += fmt.Sprintf("; baseline MIN_REPLICAS=0 (informational): %d acknowledged, %d lost (%d not found), %d failed enqueues, "+
				"%d upstream calls for %d succeeded, %d changed domains without a succeeded record, %d not final after %s but held by asynq (not waited for)",
				b.acked, len(b.lost), b.notFound, len(b.failed), b.calls, b.succeeded, len(b.orphans), len(b.lateStates), baselineBound)
			if len(b.switches) != 1 {
				verdict += fmt.Sprintf(" (the sentinels switched %d times: %s; their logs: %s)", len(b.switches), strings.Join(b.switches, ", "), b.logs)
			}
		}
	}
	return verdict, ok, nil
}

// enqueueResult is one `wxdomain enqueue` of the load.
type enqueueResult struct {
	env              []string
	app, key, domain string
	taskID           string // printed by the first run, or by the retries of a failed one
	err              string // the first run's stderr when it exited non-zero
	took             time.Duration
}

// failoverRun is what one run measured.
type failoverRun struct {
	minReplicas int
	sw          redistest.Switch
	swErr       error
	acked       int // first enqueue printed a task id
	failed      []enqueueResult
	badRetries  []string // failed enqueues whose retries with the same key did not print the same task
	lost        []string // acknowledged, but status says not found or it never became final
	notOK       int      // final but not succeeded
	succeeded   int
	calls       int           // successful modify calls upstream
	inFlight    int           // changes active on the old primary from the trigger until it stopped being one
	lateStates  []string      // not final within finalBound but held by asynq (waiting for its recoverer)
	lateAfter   time.Duration // how long after the switch the wait for them ended
	notFound    int
	switches    []string // as the sentinels logged them
	logs        string   // where the group's logs were kept, when it did not switch once
	dupOutside  []string
	orphans     []string
	warnings    []int
	alive       bool
	slowest     time.Duration
	took        time.Duration
}

func (r *failoverRun) verdict() (string, bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "MIN_REPLICAS=%d: %d acknowledged at once, %d lost, %d failed enqueues (%d of them, repeated twice with their key, printed the same task both times), "+
		"%d upstream calls for %d succeeded + %d in flight at the switch (%d calls repeated for changes not in flight), %d changed domains without a succeeded record",
		r.minReplicas, r.acked, len(r.lost), len(r.failed), len(r.failed)-len(r.badRetries), r.calls, r.succeeded, r.inFlight,
		len(r.dupOutside), len(r.orphans))
	fmt.Fprintf(&b, "; primary %s → %s promoted in %s", r.sw.Old, r.sw.New, r.sw.Promoted.Round(100*time.Millisecond))
	if r.sw.Settled > 0 {
		fmt.Fprintf(&b, ", old primary a replica again after %s", r.sw.Settled.Round(100*time.Millisecond))
	}
	if len(r.switches) != 1 {
		fmt.Fprintf(&b, "; the sentinels switched %d times: %s (their logs: %s)", len(r.switches), strings.Join(r.switches, ", "), r.logs)
	}
	fmt.Fprintf(&b, "; %q warnings per worker %v; workers alive: %v; slowest enqueue %s; run %s",
		primaryChanged, r.warnings, r.alive, r.slowest.Round(100*time.Millisecond), r.took.Round(time.Second))
	if len(r.lateStates) > 0 {
		fmt.Fprintf(&b, "; %d not final within %s but held by asynq, waited for its lease recovery until %s after the switch (%s)",
			len(r.lateStates), finalBound, r.lateAfter.Round(time.Second), strings.Join(first(r.lateStates, 4), "; "))
	}
	if r.notOK > 0 {
		fmt.Fprintf(&b, "; %d final but not succeeded", r.notOK)
	}
	if len(r.failed) > 0 {
		fmt.Fprintf(&b, "; failed enqueues said: %s", distinct(r.failed))
	}
	for name, list := range map[string][]string{"lost": r.lost, "bad retries": r.badRetries, "orphan domains": r.orphans,
		"repeated calls not in flight": r.dupOutside} {
		if len(list) > 0 {
			fmt.Fprintf(&b, "; %s: %s", name, strings.Join(first(list, 5), ", "))
		}
	}
	if r.swErr != nil {
		fmt.Fprintf(&b, "; switch: %v", r.swErr)
	}
	ok := len(r.lost) == 0 && len(r.badRetries) == 0 && len(r.orphans) == 0 && r.calls <= r.succeeded+r.inFlight &&
		r.alive && r.swErr == nil && r.acked > 0
	return b.String(), ok
}

// failoverRun starts a sentinel group and two workers, one on each
// sentinel URL form, runs the load through the CLI, changes the primary
// mid-load (SIGKILL, or SENTINEL FAILOVER), and measures.
func (l *lab) failoverRun(kill bool, minReplicas int, awaitRecovery bool) (*failoverRun, error) {
	start := time.Now()
	r := &failoverRun{minReplicas: minReplicas}
	tag := fmt.Sprintf("r%d", minReplicas)
	g, err := redistest.NewSentinelGroup(mkdirTemp(l.dir, "sentinels-"))
	if err != nil {
		return nil, err
	}
	defer g.Close()
	rdb := g.Client()
	defer rdb.Close()
	ctx := context.Background()
	tickets := ticket.NewStore(rdb, tasks.DefaultPrefix)
	for _, a := range l.apps {
		if err := tickets.Set(ctx, a, "t"); err != nil {
			return nil, err
		}
	}
	forms := []redistest.SentinelURLForm{redistest.MasterNameForm, redistest.SentinelSchemeForm}
	envs := make([][]string, len(forms))
	for i, f := range forms {
		envs[i] = append(withoutVar(l.env, "WXDOMAIN_REDIS_URL"), "WXDOMAIN_REDIS_URL="+g.URL(f),
			fmt.Sprintf("WXDOMAIN_REDIS_MIN_REPLICAS=%d", minReplicas))
	}
	var workers []*liveProc
	defer func() {
		for _, w := range workers {
			w.kill()
		}
	}()
	for i := range forms {
		w, err := l.startLive(envs[i], "worker", "--concurrency", "10")
		if err != nil {
			return nil, err
		}
		workers = append(workers, w)
		if _, err := l.waitFor(w.proc, "worker started", 20*time.Second); err != nil {
			return nil, err
		}
	}

	// The load; the switch 4s in, with a watch of the changes in flight.
	var (
		mu      sync.Mutex
		results []enqueueResult
		wg      sync.WaitGroup
	)
	switched := make(chan struct{})
	var (
		trigger, swDone time.Time
		inFlight        map[string]bool
	)
	go func() {
		defer close(switched)
		time.Sleep(triggerAfter)
		watchCtx, stopWatch := context.WithCancel(ctx)
		active, watching := make(chan map[string]bool, 1), make(chan struct{})
		go func() { active <- watchActive(watchCtx, g.Primary(), watching) }()
		<-watching
		trigger = time.Now()
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if kill {
			r.sw, r.swErr = g.KillPrimary(sctx)
			if r.swErr == nil {
				// As a supervisor would: the node comes back, as a replica.
				r.swErr = g.RestartNode(sctx, r.sw.Old)
			}
		} else {
			r.sw, r.swErr = g.Failover(sctx)
		}
		swDone = time.Now()
		stopWatch()
		inFlight = <-active
		r.inFlight = len(inFlight)
	}()
	loadStart := time.Now()
	tick := time.NewTicker(enqueueEvery)
load:
	for i := 0; ; i++ {
		elapsed := time.Since(loadStart)
		if elapsed >= maxLoad {
			break
		}
		select {
		case <-switched:
			if elapsed >= minLoad && time.Since(swDone) >= loadAfterSwap {
				break load
			}
		default:
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res := enqueueResult{env: envs[i%2], app: l.apps[i%len(l.apps)], key: fmt.Sprintf("%s-k%d", tag, i), domain: fmt.Sprintf("%s-%d.example.com", tag, i)}
			t0 := time.Now()
			id, errText := l.enqueue(res.env, res.app, res.domain, res.key)
			res.took = time.Since(t0)
			res.taskID, res.err = id, errText
			mu.Lock()
			results = append(results, res)
			mu.Unlock()
		}(i)
		<-tick.C
	}
	tick.Stop()
	wg.Wait()
	<-switched

	// A failed enqueue is retried with its key, twice: both must print the
	// same task.
	for i := range results {
		res := &results[i]
		r.slowest = max(r.slowest, res.took)
		if res.err == "" {
			r.acked++
			continue
		}
		r.failed = append(r.failed, *res)
		id1, e1 := l.enqueue(res.env, res.app, res.domain, res.key)
		id2, e2 := l.enqueue(res.env, res.app, res.domain, res.key)
		if e1 != "" || e2 != "" || id1 != id2 {
			r.badRetries = append(r.badRetries, fmt.Sprintf("%s: %q/%q %s%s", res.key, id1, id2, e1, e2))
			continue
		}
		res.taskID = id1
	}

	// Every task printed must become final and be readable by `status`.
	byID := map[string]tasks.Status{}
	for _, res := range results {
		if res.taskID != "" {
			byID[res.taskID] = ""
		}
	}
	client := tasks.NewClient(rdb, tasks.ClientConfig{PollInterval: 200 * time.Millisecond})
	defer client.Close()
	held := map[string]tasks.Status{}
	bound := finalBound
	if !awaitRecovery {
		bound = baselineBound
	}
	if pending := awaitFinal(ctx, client, byID, bound); len(pending) > 0 {
		// asynq 0.26 does not move a task whose handler returned while
		// Redis was down (its sync retries use a canceled context): the
		// task waits in the active list for the recoverer, which takes
		// leases expired 30s ago, every minute. Late, not lost.
		insp := asynq.NewInspectorFromRedisClient(rdb)
		for _, id := range pending {
			if info, err := insp.GetTaskInfo(tasks.QueueDefault, id); err == nil {
				held[id] = byID[id]
				r.lateStates = append(r.lateStates, fmt.Sprintf("%s %s at asynq, %s in its record", id, info.State, byID[id]))
			}
		}
		sort.Strings(r.lateStates)
		if awaitRecovery {
			awaitFinal(ctx, client, held, recoveryBound)
			for id, st := range held {
				byID[id] = st
			}
			r.lateAfter = time.Since(swDone)
			clear(held)
		}
	}
	statusOf := l.statusAll(envs, byID)
	for id, st := range statusOf {
		switch {
		case st == "":
			r.lost = append(r.lost, id+" (not found)")
			r.notFound++
		case !st.Final() && isHeld(held, id):
			// held by asynq, not waited for (a baseline run)
		case !st.Final():
			r.lost = append(r.lost, id+" (still "+string(st)+")")
		case st == tasks.StatusSucceeded:
			r.succeeded++
		default:
			r.notOK++
		}
	}
	sort.Strings(r.lost)

	// Upstream: calls made, domains changed.
	idOf := map[string]string{}
	for _, res := range results {
		idOf[res.domain] = res.taskID
	}
	calls, err := l.modifyCalls(tag)
	if err != nil {
		return nil, err
	}
	for d, at := range calls {
		r.calls += len(at)
		if len(at) > 1 && !inFlight[d] {
			offsets := make([]string, len(at))
			for i, t := range at {
				offsets[i] = fmt.Sprintf("%+.1fs", t.Sub(trigger).Seconds())
			}
			r.dupOutside = append(r.dupOutside, fmt.Sprintf("%s (task %s) called at %s from the switch", d, idOf[d], strings.Join(offsets, ", ")))
		}
	}
	sort.Strings(r.dupOutside)
	changed, err := l.changedDomains(tag)
	if err != nil {
		return nil, err
	}
	for _, d := range changed {
		if id := idOf[d]; id == "" || statusOf[id] != tasks.StatusSucceeded {
			r.orphans = append(r.orphans, fmt.Sprintf("%s (task %q %s)", d, id, statusOf[id]))
		}
	}

	r.switches = g.Switches()
	if len(r.switches) != 1 {
		r.logs = keepLogs(g.Dir())
	}
	r.alive = true
	for _, w := range workers {
		r.alive = r.alive && !w.exited()
		r.warnings = append(r.warnings, strings.Count(w.text(), primaryChanged))
	}
	r.took = time.Since(start)
	return r, nil
}

func isHeld(held map[string]tasks.Status, id string) bool {
	_, ok := held[id]
	return ok
}

// awaitFinal polls the records of the ids in byID until all are final or
// bound passes, updating byID, and returns the ids still not final.
func awaitFinal(ctx context.Context, client *tasks.Client, byID map[string]tasks.Status, bound time.Duration) []string {
	deadline := time.Now().Add(bound)
	for {
		var pending []string
		for id, st := range byID {
			if st.Final() {
				continue
			}
			if rec, err := client.Get(ctx, id); err == nil {
				byID[id] = rec.Status
			}
			if !byID[id].Final() {
				pending = append(pending, id)
			}
		}
		if len(pending) == 0 || time.Now().After(deadline) {
			return pending
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// enqueue runs `wxdomain enqueue` and returns the printed task id, or the
// stderr of a non-zero exit.
func (l *lab) enqueue(env []string, app, domain, key string) (taskID, errText string) {
	out, errOut, err := l.cli(env, "enqueue", "--platform", app, "--action", "add", "--domains", domain, "--key", key, "--timeout", enqueueTimeout)
	if err != nil {
		return "", strings.TrimSpace(errOut) + " (" + err.Error() + ")"
	}
	var rec tasks.Record
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.TaskID == "" {
		return "", fmt.Sprintf("exit 0 without a record: %q", out)
	}
	return rec.TaskID, ""
}

// statusAll asks `wxdomain status` for every task, eight at a time, and
// returns their statuses ("" when not found).
func (l *lab) statusAll(envs [][]string, ids map[string]tasks.Status) map[string]tasks.Status {
	var (
		mu  sync.Mutex
		out = map[string]tasks.Status{}
		wg  sync.WaitGroup
	)
	sem := make(chan struct{}, 8)
	i := 0
	for id := range ids {
		env := envs[i%len(envs)]
		i++
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			var st tasks.Status
			for try := 0; try < 3; try++ {
				stdout, stderr, err := l.cli(env, "status", id)
				if err == nil {
					var rec tasks.Record
					if json.Unmarshal([]byte(stdout), &rec) == nil {
						st = rec.Status
					}
					break
				}
				if strings.Contains(stderr, "task not found") {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			mu.Lock()
			out[id] = st
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func (l *lab) cli(env []string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// watchActive samples the changes asynq holds active on the node at addr,
// every 50ms while it answers as a primary, until ctx ends, and returns
// their domains (one a change): the changes a switch can catch in flight.
// Such a change may run again: its dequeue or final record never reached
// the new primary, or its submission was not confirmed and the producer's
// retry, with the same key, found nothing of it on the new primary and
// submitted it afresh (a new task, the same domain). It closes first
// after the first sample.
func watchActive(ctx context.Context, addr string, first chan<- struct{}) map[string]bool {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second})
	defer c.Close()
	insp := asynq.NewInspectorFromRedisClient(c)
	seen := map[string]bool{}
	for {
		if info, err := c.Info(ctx, "replication").Result(); err == nil && strings.Contains(info, "role:master") {
			if active, err := insp.ListActiveTasks(tasks.QueueDefault, asynq.PageSize(1000)); err == nil {
				for _, t := range active {
					if ch, err := tasks.ParseJumpDomainChange(t.Payload); err == nil && len(ch.Domains) == 1 {
						seen[ch.Domains[0]] = true
					}
				}
			}
		}
		if first != nil {
			close(first)
			first = nil
		}
		select {
		case <-ctx.Done():
			return seen
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// modifyCalls lists the times of the sandbox's successful modify calls for
// each of the run's domains (one domain a change).
func (l *lab) modifyCalls(tag string) (map[string][]time.Time, error) {
	resp, err := http.Get(l.upstream + "/sandbox/calls")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var calls []wechattest.Call
	if err := json.NewDecoder(resp.Body).Decode(&calls); err != nil {
		return nil, err
	}
	at := map[string][]time.Time{}
	for _, c := range calls {
		if c.API == "modify_wxa_jump_domain" && c.ErrCode == 0 && strings.HasPrefix(c.Domains, tag+"-") {
			at[c.Domains] = append(at[c.Domains], c.Time)
		}
	}
	return at, nil
}

// changedDomains lists the run's domains the sandbox holds.
func (l *lab) changedDomains(tag string) ([]string, error) {
	resp, err := http.Get(l.upstream + "/sandbox/platforms")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var platforms []wechattest.Platform
	if err := json.NewDecoder(resp.Body).Decode(&platforms); err != nil {
		return nil, err
	}
	var out []string
	for _, p := range platforms {
		for _, d := range p.Testing {
			if strings.HasPrefix(d, tag+"-") {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// liveProc is a process whose exit is watched, so that a scenario can tell
// whether it still runs.
type liveProc struct {
	*proc
	done chan struct{}
}

func (l *lab) startLive(env []string, args ...string) (*liveProc, error) {
	p := &liveProc{proc: &proc{cmd: exec.Command(l.bin, args...)}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.proc, p.proc
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *liveProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *liveProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// keepLogs copies the logs of a sentinel group out of the scenario's
// directory, which is removed, and returns where.
func keepLogs(dir string) string {
	dst, err := os.MkdirTemp("", "wxchaos-sentinel-logs-")
	if err != nil {
		return err.Error()
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, f := range logs {
		if b, err := os.ReadFile(f); err == nil {
			_ = os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o600)
		}
	}
	return dst
}

func withoutVar(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func mkdirTemp(dir, pattern string) string {
	d, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return dir
	}
	return d
}

var taskIDs = regexp.MustCompile(`\b[0-9a-f]{32}\b`)

// distinct lists the different messages of failed enqueues, with counts.
func distinct(rs []enqueueResult) string {
	count := map[string]int{}
	for _, r := range rs {
		count[taskIDs.ReplaceAllString(lastLine(r.err), "ID")]++
	}
	var out []string
	for m, n := range count {
		out = append(out, fmt.Sprintf("%d× %q", n, m))
	}
	sort.Strings(out)
	return strings.Join(first(out, 4), ", ")
}

// lastLine is the last line of a failed command's stderr that is not
// go-redis's own logging: its final error (earlier lines announce retries).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	s = lines[len(lines)-1]
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] != "" && !strings.HasPrefix(lines[i], "redis: ") {
			s = lines[i]
			break
		}
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("… %d more", len(s)-n))
	}
	return s
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
