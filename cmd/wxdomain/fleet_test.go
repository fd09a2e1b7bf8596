package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// TestFleetFetchesOneTokenPerPlatform: three worker processes at
// concurrency 20 share one token per platform, and after WeChat revokes
// every token, fetch exactly one more each.
func TestFleetFetchesOneTokenPerPlatform(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	apps := []string{"wx00000000000000a1", "wx00000000000000b2", "wx00000000000000c3"}
	yaml := "platforms:\n"
	secrets := []string{"WXDOMAIN_RETRY_BASE=50ms"}
	for _, a := range apps {
		yaml += fmt.Sprintf("  - {appid: %s, secret_env: SECRET_%s, rate: 1000}\n", a, a)
		secrets = append(secrets, "SECRET_"+a+"=secret-"+a)
	}
	c := newCLI(t, rb, yaml, secrets...)
	fake, upstream := c.startFake("--latency", "5ms")
	for _, a := range apps {
		_, errOut, err := c.run("ticket", "set", a, "ticket-"+a)
		require.NoError(t, err, errOut)
	}
	var workers []*proc
	for i := 0; i < 3; i++ {
		w := c.start("worker", "--concurrency", "20")
		waitFor(t, w, regexp.MustCompile(`worker started`))
		workers = append(workers, w)
	}

	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue, PollInterval: 100 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	submit := func(round int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		var ids []string
		for i := 0; i < 300; i++ {
			rec, err := client.Enqueue(ctx, tasks.JumpDomainChange{
				Platform: apps[i%3], Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("r%d-d%d.example.com", round, i/3%150)},
			}, tasks.EnqueueOptions{})
			require.NoError(t, err)
			ids = append(ids, rec.TaskID)
		}
		for _, id := range ids {
			rec, err := client.Wait(ctx, id)
			require.NoError(t, err)
			require.Equal(t, tasks.StatusSucceeded, rec.Status, "%+v", rec)
		}
	}
	stats := func() wechattest.Stats {
		resp, err := http.Get(upstream + "/sandbox/stats")
		require.NoError(t, err)
		defer resp.Body.Close()
		var st wechattest.Stats
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		return st
	}

	submit(1)
	for _, a := range apps {
		assert.Equal(t, 1, stats().TokenFetches[a], "one fetch for %s across three processes", a)
	}

	resp, err := http.Post(upstream+"/sandbox/revoke_tokens", "application/json", nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	submit(2)
	for _, a := range apps {
		assert.Equal(t, 2, stats().TokenFetches[a], "one more fetch for %s after the revocation", a)
	}

	out, errOut, err := c.run("platforms", "--json")
	require.NoError(t, err, errOut)
	var report platform.List
	require.NoError(t, json.Unmarshal([]byte(out), &report), "the API's shape: {\"platforms\": [...]}")
	require.Len(t, report.Platforms, 3)
	for _, s := range report.Platforms {
		assert.True(t, s.Token.Valid)
		assert.Equal(t, int64(2), s.Token.FetchesToday)
		assert.True(t, s.Ticket.Stored)
		assert.Nil(t, s.Pause)
	}
	out, _, err = c.run("platforms")
	require.NoError(t, err)
	assert.Regexp(t, `(?m)^wx00000000000000a1\s+valid until \S+ \(\S+ left\)\s+\S+ ago\s+2\s+received \S+ ago\s+ok$`, out)

	for _, w := range workers {
		w.stop(t)
	}
	fake.stop(t)
}

// TestFleetOfProcessesRespectsThePlatformRate: three worker processes share
// one platform's limit of 10 calls/s (burst 1).
func TestFleetOfProcessesRespectsThePlatformRate(t *testing.T) {
	t.Parallel()
	const app, n, rate = "wx00000000000000d4", 200, 10.0
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - {appid: "+app+", secret_env: S, rate: 10, burst: 1}\n",
		"S=s", "WXDOMAIN_POLL_INTERVAL=50ms", "WXDOMAIN_MAX_ATTEMPTS=2")
	fake, upstream := c.startFake()
	_, errOut, err := c.run("ticket", "set", app, "t")
	require.NoError(t, err, errOut)
	var workers []*proc
	for i := 0; i < 3; i++ {
		w := c.start("worker", "--concurrency", "10")
		waitFor(t, w, regexp.MustCompile(`worker started`))
		workers = append(workers, w)
	}

	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue, PollInterval: 100 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var ids []string
	for i := 0; i < n; i++ {
		rec, err := client.Enqueue(ctx, tasks.JumpDomainChange{Platform: app, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i%150)}}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	for _, id := range ids {
		rec, err := client.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, tasks.StatusSucceeded, rec.Status, "%+v", rec)
		require.Equal(t, 1, rec.Attempts, "waiting for capacity uses no attempt")
	}
	elapsed := time.Since(start)

	resp, err := http.Get(upstream + "/sandbox/calls")
	require.NoError(t, err)
	var calls []wechattest.Call
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&calls))
	_ = resp.Body.Close()
	var times []time.Time
	for _, call := range calls {
		if call.API == "modify_wxa_jump_domain" {
			times = append(times, call.Time)
		}
	}
	require.Len(t, times, n)
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	most, lo := 0, 0
	for hi := range times {
		for times[hi].Sub(times[lo]) >= time.Second {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	lowerBound := float64(n-1) / rate
	t.Logf("%d changes in %s (lower bound %.1fs, ratio %.3f), at most %d calls in a second", n, elapsed.Round(time.Millisecond), lowerBound, elapsed.Seconds()/lowerBound, most)
	assert.LessOrEqual(t, most, int(rate)+1)
	assert.LessOrEqual(t, elapsed.Seconds(), 1.15*lowerBound)

	for _, w := range workers {
		w.stop(t)
	}
	fake.stop(t)
}

// TestServeAPIEndToEnd: `serve --with-worker` against fake-wechat; a change
// POSTed over HTTP is long-polled to succeeded.
func TestServeAPIEndToEnd(t *testing.T) {
	t.Parallel()
	const app, apiToken = "wx00000000000000e5", "test-api-token-0123456789"
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - {appid: "+app+", secret_env: S}\n", "S=s", "WXDOMAIN_API_TOKENS="+apiToken)
	fake, _ := c.startFake()
	_, errOut, err := c.run("ticket", "set", app, "t")
	require.NoError(t, err, errOut)
	srv := c.start("serve", "--addr", "127.0.0.1:0", "--with-worker")
	api := waitFor(t, srv, regexp.MustCompile(`API listening on (http://127\.0\.0\.1:\d+)`))[1]

	req, err := http.NewRequest(http.MethodPost, api+"/v1/changes", strings.NewReader(`{"platform":"`+app+`","action":"add","domains":["www.example.com"]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var rec tasks.Record
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rec))
	_ = resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	req, err = http.NewRequest(http.MethodGet, api+resp.Header.Get("Location")+"?wait=30s", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rec))
	_ = resp.Body.Close()
	assert.Equal(t, tasks.StatusSucceeded, rec.Status)
	assert.Equal(t, []string{"www.example.com"}, *rec.TestingDomains)

	resp, err = http.Get(api + "/metrics")
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "metrics need a token unless WXDOMAIN_METRICS_PUBLIC=true")
	req, err = http.NewRequest(http.MethodGet, api+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	text := string(raw)
	for _, want := range []string{
		`wxdomain_upstream_calls_total{errcode="0",platform="` + app + `"} 1`,
		`wxdomain_changes_finished_total{status="succeeded"} 1`,
		`wxdomain_token_fetches_total{platform="` + app + `",result="ok"} 1`,
		`wxdomain_queue_tasks{queue="` + rb.Queue + `",state="pending"} 0`,
		`wxdomain_upstream_call_seconds_count{api="modify_wxa_jump_domain"} 1`,
	} {
		assert.Contains(t, text, want)
	}
	assert.NotContains(t, text, apiToken)

	srv.stop(t)
	fake.stop(t)
	assert.NotContains(t, srv.output(), apiToken, "the API token is never logged")
}

// TestSIGKILLMidRollout: a worker killed with SIGKILL while it runs rollout
// changes loses nothing and counts nothing twice once the rest of the fleet
// recovers its tasks (asynq's lease expires after 30s, its recoverer looks
// every minute, so this test takes up to two minutes).
func TestSIGKILLMidRollout(t *testing.T) {
	t.Parallel()
	const n = 100
	rb := redistest.Real(t)
	apps := make([]string, n)
	yaml := "platforms:\n"
	for i := range apps {
		apps[i] = fmt.Sprintf("wxb%015x", i)
		yaml += "  - {appid: " + apps[i] + ", secret_env: S, rate: 1000}\n"
	}
	c := newCLI(t, rb, yaml, "S=s", "WXDOMAIN_RETRY_BASE=100ms", "WXDOMAIN_RETRY_MAX=1s", "WXDOMAIN_POLL_INTERVAL=100ms")
	fake, upstream := c.startFake("--latency", "300ms")
	tickets := ticket.NewStore(rb.Client, rb.Prefix)
	for _, a := range apps {
		require.NoError(t, tickets.Set(context.Background(), a, "t"))
	}
	victim := c.start("worker", "--concurrency", "10")
	waitFor(t, victim, regexp.MustCompile(`worker started`))

	out, errOut, err := c.run("rollout", "create", "--name", "kill test", "--action", "add", "--domains", "k.example.com", "--all", "--json")
	require.NoError(t, err, errOut)
	var r rollout.Rollout
	require.NoError(t, json.Unmarshal([]byte(out), &r))
	status := func() rollout.Rollout {
		out, errOut, err := c.run("rollout", "status", r.ID, "--json")
		require.NoError(t, err, errOut)
		var got rollout.Rollout
		require.NoError(t, json.Unmarshal([]byte(out), &got))
		return got
	}
	require.Eventually(t, func() bool {
		s := status()
		return s.Counts.Running >= 5 && s.Counts.Succeeded >= 5
	}, 30*time.Second, 100*time.Millisecond)
	require.NoError(t, victim.cmd.Process.Kill()) // SIGKILL, mid-call
	_ = victim.cmd.Wait()

	survivor := c.start("worker", "--concurrency", "10")
	waitFor(t, survivor, regexp.MustCompile(`worker started`))
	var final rollout.Rollout
	require.Eventually(t, func() bool {
		final = status()
		return final.FinishedAt != nil
	}, 150*time.Second, 500*time.Millisecond)
	assert.Equal(t, rollout.StatusDone, final.Status)
	assert.Equal(t, rollout.Counts{Succeeded: n}, final.Counts, "nothing lost, nothing counted twice")

	resp, err := http.Get(upstream + "/sandbox/calls")
	require.NoError(t, err)
	var calls []wechattest.Call
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&calls))
	_ = resp.Body.Close()
	perApp := map[string]int{}
	for _, call := range calls {
		if call.API == "modify_wxa_jump_domain" {
			perApp[call.AppID]++
		}
	}
	extra := 0
	for _, a := range apps {
		require.GreaterOrEqual(t, perApp[a], 1, a)
		extra += perApp[a] - 1
	}
	t.Logf("%d platforms, 0 lost, %d repeated calls (tasks running at the kill)", n, extra)
	assert.LessOrEqual(t, extra, 10, "only tasks that were running at the kill run again")

	// The other rollout commands, as an operator uses them.
	out, _, err = c.run("rollout", "list")
	require.NoError(t, err)
	assert.Regexp(t, r.ID+`\s+kill test\s+add\s+done\s+100/100\s+0`, out)
	out, _, err = c.run("rollout", "failures", r.ID, "--csv")
	require.NoError(t, err)
	assert.Equal(t, "platform,errcode,errmsg,reason,task_id,status,preflight\n", out)
	out, _, err = c.run("rollout", "status", r.ID, "--watch")
	require.NoError(t, err)
	assert.Regexp(t, `^\d\d:\d\d:\d\d 100/100 done: succeeded 100, partial 0, failed 0, canceled 0; queued 0, running 0, retrying 0\n$`, out, "plain lines when not a terminal")
	out, _, err = c.run("rollout", "create", "--action", "add", "--domains", "k.example.com", "--platforms", apps[0]+","+apps[1], "--dry-run")
	require.NoError(t, err)
	assert.Contains(t, out, "would call add k.example.com on "+apps[1])
	survivor.stop(t)
	fake.stop(t)
}
