// Package redistest gives tests a Redis: an in-process miniredis, or the real
// server named by WXDOMAIN_TEST_REDIS_URL, each with a namespace of its own
// (key prefix and queue name) that is cleaned up after the test.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// EnvURL names the real Redis for tests, e.g. redis://127.0.0.1:6379/15.
// EnvRequire, when set to 1 (as .ci/run does), turns a missing real Redis
// into a failure instead of a skip.
const (
	EnvURL     = "WXDOMAIN_TEST_REDIS_URL"
	EnvRequire = "WXDOMAIN_REQUIRE_REDIS"
	defaultURL = "redis://127.0.0.1:6379/15"
)

// Bundle is one test's Redis and namespace.
type Bundle struct {
	Client redis.UniversalClient
	// Addr is host:port, for starting subprocesses.
	URL string
	// Prefix for wxdomain keys and Queue for asynq, unique to the test.
	Prefix string
	Queue  string
	// Mini is set for miniredis backends.
	Mini *miniredis.Miniredis
}

// Backend opens a Redis for a test.
type Backend struct {
	Name string
	Open func(t testing.TB) Bundle
}

// Backends returns miniredis and the real server, for tests that must hold on both.
func Backends() []Backend {
	return []Backend{{"miniredis", Mini}, {"redis", Real}}
}

// Mini starts a miniredis for the test.
func Mini(t testing.TB) Bundle {
	t.Helper()
	m := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	id := randomID()
	return Bundle{Client: c, URL: "redis://" + m.Addr() + "/0", Prefix: "wxdt:" + id + ":", Queue: "wxdt_" + id, Mini: m}
}

// Real connects to the real Redis, or skips (fails when required).
func Real(t testing.TB) Bundle {
	t.Helper()
	url := os.Getenv(EnvURL)
	if url == "" {
		url = defaultURL
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("%s=%q: %v", EnvURL, url, err)
	}
	c := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv(EnvRequire) == "1" || os.Getenv("CI") == "true" {
			t.Fatalf("real Redis required but %s does not answer: %v", url, err)
		}
		t.Skipf("real Redis at %s does not answer (%v); set %s or start redis-server", url, err, EnvURL)
	}
	id := randomID()
	b := Bundle{Client: c, URL: url, Prefix: "wxdt:" + id + ":", Queue: "wxdt_" + id}
	t.Cleanup(func() {
		cleanup(c, b)
		_ = c.Close()
	})
	return b
}

// cleanup deletes the test's keys and asynq's keys of its queues.
func cleanup(c redis.UniversalClient, b Bundle) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, pattern := range []string{b.Prefix + "*", "asynq:{" + b.Queue + "*"} {
		iter := c.Scan(ctx, 0, pattern, 500).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		for len(keys) > 0 {
			n := min(len(keys), 500)
			c.Del(ctx, keys[:n]...)
			keys = keys[n:]
		}
	}
	qs, _ := c.SMembers(ctx, "asynq:queues").Result()
	for _, q := range qs {
		if len(q) >= len(b.Queue) && q[:len(b.Queue)] == b.Queue {
			c.SRem(ctx, "asynq:queues", q)
		}
	}
}

func randomID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
