package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
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
	dir := t.TempDir()
	platformsFile := filepath.Join(dir, "platforms.yaml")
	yaml := "platforms:\n"
	for _, a := range apps {
		yaml += fmt.Sprintf("  - {appid: %s, secret_env: SECRET_%s, rate: 1000}\n", a, a)
	}
	require.NoError(t, os.WriteFile(platformsFile, []byte(yaml), 0o600))
	c := &cli{t: t, env: []string{
		"PATH=" + os.Getenv("PATH"),
		"WXDOMAIN_REDIS_URL=" + rb.URL,
		"WXDOMAIN_KEY_PREFIX=" + rb.Prefix,
		"WXDOMAIN_QUEUE=" + rb.Queue,
		"WXDOMAIN_PLATFORMS_FILE=" + platformsFile,
		"WXDOMAIN_RETRY_BASE=50ms",
	}}
	for _, a := range apps {
		c.env = append(c.env, "SECRET_"+a+"=secret-"+a)
	}
	fake := c.start("fake-wechat", "--addr", "127.0.0.1:0", "--latency", "5ms")
	upstream := waitFor(t, fake, regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`))[1]
	c.env = append(c.env, "WXDOMAIN_WECHAT_BASE_URL="+upstream)
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
	var report []platform.Status
	require.NoError(t, json.Unmarshal([]byte(out), &report))
	require.Len(t, report, 3)
	for _, s := range report {
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
