package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// fleet2 is two `wxdomain worker` processes against fake-wechat on a real
// Redis, with n platforms that have tickets.
type fleet2 struct {
	c        *cli
	rb       redistest.Bundle
	apps     []string
	upstream string
	client   *tasks.Client
}

func startFleet2(t *testing.T, n int, platformRate string, fakeArgs []string, env ...string) *fleet2 {
	t.Helper()
	rb := redistest.Real(t)
	apps := make([]string, n)
	yaml := "platforms:\n"
	for i := range apps {
		apps[i] = fmt.Sprintf("wxc%015x", i)
		yaml += "  - {appid: " + apps[i] + ", secret_env: S, rate: " + platformRate + "}\n"
	}
	c := newCLI(t, rb, yaml, append([]string{"S=s", "WXDOMAIN_RETRY_BASE=100ms", "WXDOMAIN_RETRY_MAX=1s"}, env...)...)
	_, upstream := c.startFake(fakeArgs...)
	tickets := ticket.NewStore(rb.Client, rb.Prefix)
	for _, a := range apps {
		require.NoError(t, tickets.Set(context.Background(), a, "t"))
	}
	for i := 0; i < 2; i++ {
		w := c.start("worker", "--concurrency", "20")
		waitFor(t, w, regexp.MustCompile(`worker started`))
	}
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue, PollInterval: 50 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	return &fleet2{c: c, rb: rb, apps: apps, upstream: upstream, client: client}
}

func (f *fleet2) calls(t *testing.T) []wechattest.Call {
	t.Helper()
	resp, err := http.Get(f.upstream + "/sandbox/calls")
	require.NoError(t, err)
	defer resp.Body.Close()
	var calls []wechattest.Call
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&calls))
	return calls
}

func (f *fleet2) modifyTimes(t *testing.T) []time.Time {
	var out []time.Time
	for _, c := range f.calls(t) {
		if c.API == "modify_wxa_jump_domain" {
			out = append(out, c.Time)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

func mostInOneSecond(times []time.Time) int {
	best, lo := 0, 0
	for hi := range times {
		for times[hi].Sub(times[lo]) >= time.Second {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// TestConcurrencyFromOutside measures, with two worker processes, what
// issue 11 promises.
func TestConcurrencyFromOutside(t *testing.T) {
	t.Parallel()

	t.Run("ensure rollout of 60 platforms under a global 20/s", func(t *testing.T) {
		t.Parallel()
		f := startFleet2(t, 60, "1000", nil, "WXDOMAIN_GLOBAL_RATE=20")
		out, errOut, err := f.c.run("rollout", "create", "--action", "add", "--domains", "e.example.com", "--all", "--ensure", "--wait", "--json")
		require.NoError(t, err, errOut)
		assert.Contains(t, out, `"succeeded":60`)
		times := f.modifyTimes(t)
		adds, gets := map[string]int{}, 0
		for _, c := range f.calls(t) {
			switch {
			case c.API != "modify_wxa_jump_domain":
			case c.Action == "add":
				adds[c.AppID]++
			case c.Action == "get":
				gets++
			}
		}
		// Each platform changed once. A change handed back between its get
		// and its add (its second slot lost to a wait) reads again: an
		// extra get, never an extra change.
		assert.Len(t, adds, 60)
		for a, n := range adds {
			assert.Equal(t, 1, n, "platform %s changed %d times", a, n)
		}
		assert.GreaterOrEqual(t, gets, 60)
		assert.LessOrEqual(t, gets, 63, "a get again is rare")
		most := mostInOneSecond(times)
		t.Logf("%d calls (%d gets) in %s, at most %d in any second", len(times), gets, times[len(times)-1].Sub(times[0]).Round(time.Millisecond), most)
		assert.LessOrEqual(t, most, 21)
	})

	t.Run("one -1 from the token API", func(t *testing.T) {
		t.Parallel()
		f := startFleet2(t, 1, "5", nil, "WXDOMAIN_MAX_ATTEMPTS=2")
		setFaults(t, f.upstream, f.apps[0], `{"token_script":[-1]}`)
		start := time.Now()
		out, errOut, err := f.c.run("enqueue", "--platform", f.apps[0], "--action", "get", "--wait", "--timeout", "30s")
		require.NoError(t, err, errOut)
		rec := decodeRecord(t, out)
		took := time.Since(start)
		t.Logf("succeeded after %s with %d attempt(s)", took.Round(time.Millisecond), rec.Attempts)
		assert.Equal(t, tasks.StatusSucceeded, rec.Status)
		assert.Equal(t, 1, rec.Attempts)
		assert.Less(t, took, 5*time.Second)
	})

	t.Run("a new change after cancelling a 40-change backlog at 5/s", func(t *testing.T) {
		t.Parallel()
		f := startFleet2(t, 1, "5", nil)
		ctx := context.Background()
		var ids []string
		for i := 0; i < 40; i++ {
			rec, err := f.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: f.apps[0], Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("b%d.example.com", i)}}, tasks.EnqueueOptions{})
			require.NoError(t, err)
			ids = append(ids, rec.TaskID)
		}
		require.Eventually(t, func() bool {
			n := 0
			for _, id := range ids {
				if r, err := f.client.Get(ctx, id); err == nil && r.Status == tasks.StatusRetrying {
					n++
				}
			}
			return n >= 25
		}, 10*time.Second, 20*time.Millisecond)
		for _, id := range ids {
			if _, err := f.client.Cancel(ctx, id); err != nil && !errors.Is(err, tasks.ErrFinal) {
				require.NoError(t, err)
			}
		}
		before := len(f.modifyTimes(t))
		lastCall := time.Time{}
		if ts := f.modifyTimes(t); len(ts) > 0 {
			lastCall = ts[len(ts)-1]
		}
		start := time.Now()
		out, errOut, err := f.c.run("enqueue", "--platform", f.apps[0], "--action", "add", "--domains", "next.example.com", "--wait", "--timeout", "30s")
		require.NoError(t, err, errOut)
		assert.Equal(t, tasks.StatusSucceeded, decodeRecord(t, out).Status)
		times := f.modifyTimes(t)
		require.Len(t, times, before+1)
		call := times[len(times)-1]
		slot := start
		if next := lastCall.Add(200 * time.Millisecond); next.After(slot) {
			slot = next // 5/s after the last call made
		}
		t.Logf("submitted %s after the last call; called %s after its slot", start.Sub(lastCall).Round(time.Millisecond), call.Sub(slot).Round(time.Millisecond))
		assert.Less(t, call.Sub(slot), time.Second)
	})

	t.Run("cancel mid-fan-out, then retry, over 300 platforms, 5 runs", func(t *testing.T) {
		t.Parallel()
		// Fan-out steps of 20: the cancel lands while most platforms are
		// still to be queued.
		f := startFleet2(t, 300, "1000", []string{"--latency", "20ms"}, "WXDOMAIN_FANOUT_BATCH=20")
		cfg, err := config.FromEnv(func(k string) string {
			for _, kv := range f.c.env {
				if v, ok := strings.CutPrefix(kv, k+"="); ok {
					return v
				}
			}
			return ""
		})
		require.NoError(t, err)
		platforms, err := config.LoadPlatformsFrom(cfg.PlatformsFile, cfg.PlatformsFileFrom)
		require.NoError(t, err)
		svc, client := rolloutService(f.rb.Client, cfg, tasks.Durability{}, platforms, nil, nil)
		t.Cleanup(func() { _ = svc.Close(); _ = client.Close() })
		ctx := context.Background()
		twice := 0
		for run := 0; run < 5; run++ {
			domain := fmt.Sprintf("run%d.example.com", run)
			r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{domain}, All: true})
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				n, err := f.rb.Client.Exists(ctx, f.rb.Prefix+"record:"+rollout.TaskID(r.ID, 0, f.apps[30])).Result()
				return err == nil && n > 0
			}, 20*time.Second, time.Millisecond)
			fanned, err := f.rb.Client.Get(ctx, tasks.RolloutCursorKey(f.rb.Prefix, r.ID, 0)).Int()
			require.NoError(t, err)
			_, err = svc.Cancel(ctx, r.ID)
			require.NoError(t, err)
			t.Logf("run %d: canceled when %d of 300 platforms were queued", run, fanned)
			require.Less(t, fanned, 300, "the cancel came mid-fan-out")
			_, err = svc.Retry(ctx, r.ID)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				got, err := svc.Get(ctx, r.ID)
				return err == nil && got.FinishedAt != nil
			}, 90*time.Second, 100*time.Millisecond)
			got, err := svc.Get(ctx, r.ID)
			require.NoError(t, err)
			assert.Equal(t, 300, got.Counts.Succeeded, "run %d: %+v", run, got.Counts)
			per := map[string]int{}
			for _, c := range f.calls(t) {
				if c.API == "modify_wxa_jump_domain" && c.Domains == domain {
					per[c.AppID]++
				}
			}
			n := 0
			for _, a := range f.apps {
				if per[a] > 1 {
					n++
				}
			}
			t.Logf("run %d: %d platforms called twice", run, n)
			twice += n
		}
		assert.Zero(t, twice)
	})
}
