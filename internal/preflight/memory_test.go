package preflight_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/redistest"
)

// fileReads counts the commands that touch a platform's file.
type fileReads struct{ n atomic.Int64 }

func (h *fileReads) see(cmd redis.Cmder) {
	for _, a := range cmd.Args()[1:] {
		if s, ok := a.(string); ok && strings.Contains(s, "confirmfile:") {
			h.n.Add(1)
			return
		}
	}
}

// TestAChangesPreflightReadsTheFileOncePerMinute: the changes of a
// platform checked by one process read its file from Redis once (then
// from memory), while an operator's check reads it afresh.
func TestAChangesPreflightReadsTheFileOncePerMinute(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.ServeFile("good.example.com", "abc123.txt", "verify-abc123")
	c := redis.NewClient(b.rdb.Client.(*redis.Client).Options())
	t.Cleanup(func() { _ = c.Close() })
	reads := &fileReads{}
	c.AddHook(redistest.Seen(reads.see))
	var fetches atomic.Int32
	p := &preflight.Preflight{
		Files: preflight.NewFiles(c, b.rdb.Prefix, func(context.Context, string) (string, string, error) {
			fetches.Add(1)
			return "abc123.txt", "verify-abc123", nil
		}),
		Checker: preflight.NewChecker(c, b.rdb.Prefix, b.server.CheckerConfig()),
	}
	ctx := context.Background()
	const app = "wx0123456789abcdef"
	for i := 0; i < 5; i++ {
		rep, err := p.Run(ctx, app, []string{"good.example.com"}, false)
		require.NoError(t, err)
		require.True(t, rep.Findings[0].OK(), rep.Findings[0].Detail)
	}
	assert.EqualValues(t, 1, fetches.Load())
	afterChanges := reads.n.Load()
	// The miss, the lock's double check, the fetch's write: then memory.
	assert.LessOrEqual(t, afterChanges, int64(4))

	_, err := p.Run(ctx, app, []string{"good.example.com"}, true)
	require.NoError(t, err)
	assert.Greater(t, reads.n.Load(), afterChanges, "an operator's check reads the file from Redis")
	_, err = p.Files.Get(ctx, app)
	require.NoError(t, err)
	assert.EqualValues(t, 1, fetches.Load())
}

// TestAStaleCopyIsCheckedAgainstTheFleets: a process whose copy of the
// file is older than the one another process fetched uses the fleet's on
// a mismatch, without asking WeChat again.
func TestAStaleCopyIsCheckedAgainstTheFleets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.ServeFile("good.example.com", "abc123.txt", "v2")
	var fetches atomic.Int32
	content := "v1"
	fetch := func(context.Context, string) (string, string, error) {
		fetches.Add(1)
		return "abc123.txt", content, nil
	}
	const app = "wx0123456789abcdef"
	ctx := context.Background()
	stale := &preflight.Preflight{Files: preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, fetch), Checker: b.checker(b.server.CheckerConfig())}
	rep, err := stale.Run(ctx, app, []string{"good.example.com"}, false)
	require.NoError(t, err)
	require.False(t, rep.Findings[0].OK(), "v1 against a domain serving v2")

	// WeChat rotated the file; another process fetched it.
	content = "v2"
	_, err = preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, fetch).Fetch(ctx, app)
	require.NoError(t, err)
	require.EqualValues(t, 2, fetches.Load())

	rep, err = stale.Run(ctx, app, []string{"good.example.com"}, false)
	require.NoError(t, err)
	assert.True(t, rep.Findings[0].OK(), rep.Findings[0].Detail)
	assert.Equal(t, "v2", rep.File.Content)
	assert.EqualValues(t, 2, fetches.Load(), "no call to WeChat of its own")
}
