package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// TestNoAcknowledgedChangeLostAcrossFailover (issue 12): a primary, a
// replica and three sentinels; two workers, one on each sentinel URL form,
// with WXDOMAIN_REDIS_MIN_REPLICAS=1; producers enqueueing through the CLI
// at about 20/s; a graceful failover (SENTINEL FAILOVER) 2s into the load.
// Every change the CLI printed a task id for becomes final and readable, a
// failed enqueue succeeds when repeated with its key, and WeChat is called
// again only for changes in flight on the old primary.
func TestNoAcknowledgedChangeLostAcrossFailover(t *testing.T) {
	t.Parallel()
	g := redistest.StartSentinelGroup(t)
	rdb := g.Client()
	t.Cleanup(func() { _ = rdb.Close() })
	rb := redistest.Bundle{Client: rdb, URL: g.URL(redistest.MasterNameForm), Prefix: "wxdt:failover:", Queue: "wxdt_failover"}

	apps := make([]string, 10)
	yaml := "platforms:\n"
	for i := range apps {
		apps[i] = fmt.Sprintf("wxf%015x", i)
		yaml += "  - {appid: " + apps[i] + ", secret_env: S, rate: 1000}\n"
	}
	c := newCLI(t, rb, yaml, "S=s", "WXDOMAIN_REDIS_MIN_REPLICAS=1", "WXDOMAIN_RETRY_BASE=100ms", "WXDOMAIN_RETRY_MAX=1s",
		"WXDOMAIN_POLL_INTERVAL=100ms")
	_, upstream := c.startFake("--latency", "100ms")
	tickets := ticket.NewStore(rdb, rb.Prefix)
	for _, a := range apps {
		require.NoError(t, tickets.Set(context.Background(), a, "t"))
	}
	// The second form: a later entry of the environment wins.
	clis := []*cli{c, {t: t, env: append(append([]string{}, c.env...), "WXDOMAIN_REDIS_URL="+g.URL(redistest.SentinelSchemeForm))}}
	var workers []*proc
	for _, wc := range clis {
		w := wc.start("worker", "--concurrency", "10")
		waitFor(t, w, regexp.MustCompile(`worker started`))
		workers = append(workers, w)
	}

	type enqueued struct {
		cli         *cli
		app, domain string
		key, taskID string
		failure     string
	}
	var (
		mu   sync.Mutex
		subs []enqueued
		wg   sync.WaitGroup
	)
	// A timeout a little shorter than the ~10s the new primary goes
	// without a replica: the enqueues of the first seconds fail, and are
	// repeated with their key.
	enqueue := func(e enqueued) (string, string) {
		out, errOut, err := e.cli.run("enqueue", "--platform", e.app, "--action", "add", "--domains", e.domain, "--key", e.key, "--timeout", "8s")
		if err != nil {
			return "", strings.TrimSpace(errOut + " " + err.Error())
		}
		var rec tasks.Record
		if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.TaskID == "" {
			return "", fmt.Sprintf("exit 0 without a record: %q", out)
		}
		return rec.TaskID, ""
	}

	// The switch 2s in; the changes active on the old primary meanwhile
	// are the ones that may be called twice.
	switched := make(chan struct{})
	var (
		sw       redistest.Switch
		swErr    error
		inFlight map[string]bool
		trigger  time.Time
	)
	go func() {
		defer close(switched)
		time.Sleep(2 * time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		active, watching := make(chan map[string]bool, 1), make(chan struct{})
		go func() { active <- activeDomains(ctx, g.Primary(), rb.Queue, watching) }()
		<-watching
		trigger = time.Now()
		fctx, fcancel := context.WithTimeout(context.Background(), 40*time.Second)
		sw, swErr = g.Failover(fctx)
		fcancel()
		cancel()
		inFlight = <-active
	}()
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	var swDone time.Time
	for i := 0; ; i++ {
		if swDone.IsZero() {
			select {
			case <-switched:
				swDone = time.Now()
			default:
			}
		}
		if (!swDone.IsZero() && time.Since(swDone) > time.Second) || time.Since(start) > 40*time.Second {
			break
		}
		e := enqueued{cli: clis[i%2], app: apps[i%len(apps)], domain: fmt.Sprintf("f-%d.example.com", i), key: fmt.Sprintf("failover-%d", i)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.taskID, e.failure = enqueue(e)
			mu.Lock()
			subs = append(subs, e)
			mu.Unlock()
		}()
		<-tick.C
	}
	tick.Stop()
	wg.Wait()
	<-switched
	require.NoError(t, swErr)
	t.Logf("%d enqueues in %s; primary %s → %s promoted in %s, old primary in sync again after %s",
		len(subs), time.Since(start).Round(100*time.Millisecond), sw.Old, sw.New, sw.Promoted.Round(100*time.Millisecond), sw.Settled.Round(100*time.Millisecond))

	// A failed enqueue names its cause and, repeated with its key (by the
	// CLI, then by the Go client), gives one task, the same each time.
	client := tasks.NewClient(rdb, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	acked := 0
	var retryProblems []string
	sem := make(chan struct{}, 16)
	for i := range subs {
		e := &subs[i]
		if e.failure == "" {
			acked++
			continue
		}
		assert.Contains(t, e.failure, "not confirmed", "enqueue %s", e.key)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			id1, f1 := enqueue(*e)
			rec, err := client.Enqueue(context.Background(), tasks.JumpDomainChange{Platform: e.app, Action: tasks.ActionAdd, Domains: []string{e.domain}},
				tasks.EnqueueOptions{IdempotencyKey: e.key})
			if f1 != "" || err != nil || rec.TaskID != id1 {
				mu.Lock()
				retryProblems = append(retryProblems, fmt.Sprintf("%s: CLI %q %s, client %v %v", e.key, id1, f1, rec, err))
				mu.Unlock()
			}
			e.taskID = id1
		}()
	}
	wg.Wait()
	require.Empty(t, retryProblems, "failed enqueues repeated with their key")

	// Every task printed is final and readable.
	statusOf := map[string]tasks.Status{}
	var lost []string
	// A change whose task asynq moved on the old primary only (asynq makes
	// that move once) stays running until asynq's recoverer takes the task
	// back, a lease (30s) and up to a minute of its period later: late,
	// not lost, so it is waited for that long.
	deadline := time.Now().Add(30 * time.Second)
	recovered := time.Now().Add(150 * time.Second)
	for _, e := range subs {
		for {
			rec, err := client.Get(context.Background(), e.taskID)
			if err == nil && rec.Status.Final() {
				statusOf[e.domain] = rec.Status
				break
			}
			if time.Now().After(deadline) && (err != nil || time.Now().After(recovered)) {
				lost = append(lost, fmt.Sprintf("%s (%s): %v %v", e.taskID, e.key, rec, err))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	succeeded := 0
	for _, st := range statusOf {
		if st == tasks.StatusSucceeded {
			succeeded++
		}
	}

	// WeChat: one successful call per change, but for those in flight on
	// the old primary; every domain changed has a succeeded record.
	resp, err := http.Get(upstream + "/sandbox/calls")
	require.NoError(t, err)
	var calls []wechattest.Call
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&calls))
	_ = resp.Body.Close()
	callsOf := map[string][]string{}
	total := 0
	for _, call := range calls {
		if call.API == "modify_wxa_jump_domain" && call.ErrCode == 0 {
			callsOf[call.Domains] = append(callsOf[call.Domains], fmt.Sprintf("%+.1fs", call.Time.Sub(trigger).Seconds()))
			total++
		}
	}
	var repeated, orphans []string
	for d, at := range callsOf {
		if len(at) > 1 && !inFlight[d] {
			repeated = append(repeated, fmt.Sprintf("%s called at %s from the failover", d, strings.Join(at, ", ")))
		}
		if statusOf[d] != tasks.StatusSucceeded {
			orphans = append(orphans, fmt.Sprintf("%s (%q)", d, statusOf[d]))
		}
	}
	t.Logf("%d acknowledged at once, %d after a failed enqueue; %d lost; %d calls for %d succeeded + %d in flight on the old primary",
		acked, len(subs)-acked, len(lost), total, succeeded, len(inFlight))

	assert.Empty(t, lost, "acknowledged changes not final and readable")
	assert.Empty(t, orphans, "domains changed at WeChat without a succeeded record")
	assert.Equal(t, len(subs), succeeded, "every change succeeded")
	assert.LessOrEqual(t, total, succeeded+len(inFlight), "WeChat calls")
	if len(repeated) > 0 {
		// Within the bound above, but not explained by the watch of the
		// old primary (which samples every 50ms): said, not failed.
		t.Logf("called again though not seen in flight on the old primary: %s", strings.Join(repeated, "; "))
	}
	for i, w := range workers {
		assert.Equal(t, 1, strings.Count(w.output(), "redis primary changed"), "worker %d logs the switch once:\n%s", i, w.output())
		w.stop(t) // a clean exit on SIGTERM: it ran throughout, no restart
	}
}

// activeDomains collects the domains of the changes asynq holds active on
// the node at addr while it answers as a primary, until ctx ends; it
// closes first after its first look.
func activeDomains(ctx context.Context, addr, queue string, first chan<- struct{}) map[string]bool {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second})
	defer c.Close()
	insp := asynq.NewInspectorFromRedisClient(c)
	seen := map[string]bool{}
	for {
		if info, err := c.Info(ctx, "replication").Result(); err == nil && strings.Contains(info, "role:master") {
			if active, err := insp.ListActiveTasks(queue, asynq.PageSize(1000)); err == nil {
				for _, task := range active {
					if ch, err := tasks.ParseJumpDomainChange(task.Payload); err == nil && len(ch.Domains) == 1 {
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
