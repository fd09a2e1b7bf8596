package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/redistest"
)

const doctorPlatforms = "platforms:\n  - appid: " + appID + "\n    secret: s\n"

// statusOf is the exit status of a finished run of the binary.
func statusOf(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "the binary did not run: %v", err)
	return ee.ExitCode()
}

// doctorJSON runs `doctor --json` and decodes its report.
func doctorJSON(t *testing.T, c *cli) (doctorReport, int) {
	t.Helper()
	out, errOut, err := c.run("doctor", "--json")
	var r doctorReport
	require.NoError(t, json.Unmarshal([]byte(out), &r), "stdout:\n%s\nstderr:\n%s", out, errOut)
	return r, statusOf(t, err)
}

// markersLeft counts doctor's marker keys under the prefix.
func markersLeft(t *testing.T, rdb redis.UniversalClient, prefix string) int {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), prefix+"doctor:*").Result()
	require.NoError(t, err)
	return len(keys)
}

// TestDoctorOnAStandaloneRedis: the shared Redis has no replica, so a
// required replica makes durable acknowledgement impossible.
func TestDoctorOnAStandaloneRedis(t *testing.T) {
	t.Parallel()
	t.Run("one replica required", func(t *testing.T) {
		t.Parallel()
		rb := redistest.Real(t) // its own prefix: the other subtest counts its markers
		c := newCLI(t, rb, doctorPlatforms, "WXDOMAIN_REDIS_MIN_REPLICAS=1", "WXDOMAIN_REDIS_WAIT_TIMEOUT=100ms")
		out, errOut, err := c.run("doctor")
		assert.Equal(t, exitNotAllSucceeded, statusOf(t, err), "stdout:\n%s\nstderr:\n%s", out, errOut)
		assert.Regexp(t, `writes go to +127\.0\.0\.1:\d+, role master`, out)
		assert.Regexp(t, `durable ack +cannot work: WXDOMAIN_REDIS_MIN_REPLICAS=1`, out)
		assert.Contains(t, out, "WARNING: durable acknowledgement cannot work: WXDOMAIN_REDIS_MIN_REPLICAS=1 but 0 replicas online")
		assert.Regexp(t, `live test +SET `+rb.Prefix+`doctor:[0-9a-f]+, WAIT 1 100: 0 of 1 replicas confirmed`, out)
		assert.Contains(t, out, "(exit status 3)")

		r, status := doctorJSON(t, c)
		assert.Equal(t, exitNotAllSucceeded, status)
		assert.Equal(t, exitNotAllSucceeded, r.ExitStatus)
		assert.Equal(t, durableCannot, r.DurableAck.State)
		assert.Equal(t, 1, r.DurableAck.Test.Asked)
		assert.Zero(t, r.DurableAck.Test.Confirmed)
		assert.Empty(t, r.DurableAck.Test.Error)
	})

	t.Run("none required", func(t *testing.T) {
		t.Parallel()
		rb := redistest.Real(t)
		c := newCLI(t, rb, doctorPlatforms, "WXDOMAIN_REDIS_MIN_REPLICAS=0")
		out, errOut, err := c.run("doctor")
		// Whether the shared Redis persists decides between 0 and 3 (warnings).
		assert.Contains(t, []int{0, exitNotAllSucceeded}, statusOf(t, err), "stdout:\n%s\nstderr:\n%s", out, errOut)
		assert.Regexp(t, `writes go to +127\.0\.0\.1:\d+, role master`, out)
		assert.Regexp(t, `replicas +none connected`, out)
		assert.Regexp(t, `durable ack +off: WXDOMAIN_REDIS_MIN_REPLICAS=0`, out)
		assert.NotContains(t, out, "WARNING: durable")

		r, _ := doctorJSON(t, c)
		assert.Equal(t, "master", r.Role)
		assert.Empty(t, r.Replicas)
		assert.NotEmpty(t, r.Version)
		assert.Equal(t, durableOff, r.DurableAck.State)
		assert.Zero(t, r.DurableAck.Test.Asked)
		assert.Empty(t, r.DurableAck.Test.Error)
		assert.Zero(t, markersLeft(t, rb.Client, rb.Prefix), "the marker is deleted")
	})
}

// startRedisServer starts a redis-server of the test's own on a free port
// and returns a client of it; the process is killed when the test ends.
func startRedisServer(t *testing.T, args ...string) *redis.Client {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv(redistest.EnvRequire) == "1" || os.Getenv("CI") == "true" {
			t.Fatalf("redis-server required: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	dir := t.TempDir()
	cmd := exec.Command(bin, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir}, args...)...)
	cmd.Dir = dir
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	require.Eventually(t, func() bool { return c.Ping(context.Background()).Err() == nil }, 10*time.Second, 20*time.Millisecond,
		"redis-server on port %d does not answer", port)
	return c
}

// TestDoctorJudgesEvictionAndPersistence runs doctor against a Redis of
// its own, started with allkeys-lru, changing its settings between runs.
func TestDoctorJudgesEvictionAndPersistence(t *testing.T) {
	t.Parallel()
	rdb := startRedisServer(t, "--maxmemory-policy", "allkeys-lru", "--appendonly", "yes", "--save", "")
	rb := redistest.Bundle{URL: "redis://" + rdb.Options().Addr + "/0", Prefix: "wxdoctor:", Queue: "wxdoctor"}
	c := newCLI(t, rb, doctorPlatforms)
	tests := []struct {
		name       string
		give       []string // CONFIG SET name value pairs before the run
		wantStatus int
		want       string
	}{
		{"allkeys", nil, exitNotAllSucceeded, "WARNING: maxmemory-policy allkeys-lru: when memory is full Redis silently deletes any key, queued changes included"},
		{"volatile", []string{"maxmemory-policy", "volatile-ttl"}, exitNotAllSucceeded, "WARNING: maxmemory-policy volatile-ttl: when memory is full Redis deletes keys that have a TTL"},
		{"noeviction and AOF", []string{"maxmemory-policy", "noeviction"}, 0, "\nno warnings\n"},
		{"RDB only", []string{"appendonly", "no", "save", "3600 1"}, 0, `note: only RDB snapshots (save "3600 1")`},
		{"no persistence", []string{"save", ""}, exitNotAllSucceeded, "WARNING: neither AOF nor RDB is on"},
	}
	for _, tt := range tests {
		// In order: each case changes the server from the previous one's settings.
		for i := 0; i+1 < len(tt.give); i += 2 {
			require.NoError(t, rdb.ConfigSet(context.Background(), tt.give[i], tt.give[i+1]).Err(), tt.name)
		}
		out, errOut, err := c.run("doctor")
		assert.Equal(t, tt.wantStatus, statusOf(t, err), "%s: stdout:\n%s\nstderr:\n%s", tt.name, out, errOut)
		assert.Contains(t, out, tt.want, tt.name)
	}
	assert.Zero(t, markersLeft(t, rdb, rb.Prefix), "the markers are deleted")
}

// TestDoctorThroughSentinels: both Sentinel URL forms, where a replica is
// required by default and confirms the live test.
func TestDoctorThroughSentinels(t *testing.T) {
	t.Parallel()
	g := redistest.StartSentinelGroup(t)
	primary := g.Client()
	t.Cleanup(func() { _ = primary.Close() })
	// The group persists nothing; with AOF on, doctor has nothing to warn of.
	require.NoError(t, primary.ConfigSet(context.Background(), "appendonly", "yes").Err())

	for _, form := range []redistest.SentinelURLForm{redistest.MasterNameForm, redistest.SentinelSchemeForm} {
		t.Run(form.String(), func(t *testing.T) {
			rb := redistest.Bundle{URL: g.URL(form), Prefix: "wxdoctor:", Queue: "wxdoctor"}
			c := newCLI(t, rb, doctorPlatforms)
			out, errOut, err := c.run("doctor")
			require.Equal(t, 0, statusOf(t, err), "stdout:\n%s\nstderr:\n%s", out, errOut)
			assert.Regexp(t, `writes go to +`+g.Primary()+`, role master`, out)
			assert.Regexp(t, `replicas +1 connected, 1 online`, out)
			assert.Regexp(t, `sentinel +master `+redistest.SentinelMaster+`: flags master, quorum 2, 3 sentinels and 1 replica known`, out)
			assert.Regexp(t, `durable ack +ok: WXDOMAIN_REDIS_MIN_REPLICAS=1`, out)
			assert.Contains(t, out, "1 of 1 replicas confirmed")

			r, status := doctorJSON(t, c)
			assert.Equal(t, 0, status)
			require.NotNil(t, r.Sentinel)
			require.Len(t, r.Sentinel.Views, 3)
			for _, v := range r.Sentinel.Views {
				assert.Equal(t, g.Primary(), v.Master, v.Addr)
			}
			require.Len(t, r.Replicas, 1)
			assert.Equal(t, "online", r.Replicas[0].State)
			assert.Equal(t, durableOK, r.DurableAck.State)
			assert.Equal(t, 1, r.DurableAck.Test.Confirmed)
			assert.Zero(t, markersLeft(t, primary, rb.Prefix), "the marker is deleted")
		})
	}
}

// TestDoctorCannotConnect: exit status 1, and the password stays hidden.
func TestDoctorCannotConnect(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	const password = "never-print-this-pw"
	rb := redistest.Bundle{URL: "redis://:" + password + "@" + addr + "/0", Prefix: "wxdoctor:", Queue: "wxdoctor"}
	c := newCLI(t, rb, doctorPlatforms)

	out, errOut, err := c.run("doctor")
	assert.Equal(t, 1, statusOf(t, err))
	assert.Contains(t, errOut, "cannot connect to Redis at redis://:xxxxx@"+addr)
	assert.NotContains(t, out+errOut, password)

	out, errOut, err = c.run("doctor", "--json")
	assert.Equal(t, 1, statusOf(t, err))
	assert.Contains(t, out, `"error": "cannot connect to Redis`)
	assert.NotContains(t, out+errOut, password)
}

func TestDoctorRedactsRedisURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want string
	}{
		{"redis://:pw@h:6379/0", "redis://:xxxxx@h:6379/0"},
		{"redis://user:pw@h:6379/0", "redis://user:xxxxx@h:6379/0"},
		{"redis://h:26379/0?master_name=m&password=pw", "redis://h:26379/0?master_name=m&password=xxxxx"},
		{"redis-sentinel://:pw@h1:26379,h2:26379/0?master=m", "redis-sentinel://:xxxxx@h1:26379,h2:26379/0?master=m"},
		{"redis://h:6379/0", "redis://h:6379/0"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, config.RedactURL(tt.give), tt.give)
	}
}
