package redisha_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wxdomain/wxdomain/internal/config"
	"github.com/wxdomain/wxdomain/internal/redisha"
	"github.com/wxdomain/wxdomain/internal/redistest"
)

// TestFailoverIsSaidOnce: a process on a Sentinel URL logs one warning
// when the primary changes, naming the old and new addresses and the
// writes it could not confirm around it (before, and after until it
// settled).
func TestFailoverIsSaidOnce(t *testing.T) {
	t.Parallel()
	g := redistest.StartSentinelGroup(t)
	rdb, err := config.OpenRedis(g.URL(redistest.SentinelSchemeForm))
	require.NoError(t, err)
	t.Cleanup(func() { _ = rdb.Close() })
	core, logs := observer.New(zap.InfoLevel)
	mo := redisha.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go mo.Run(ctx, rdb, 100*time.Millisecond, zap.New(core))
	time.Sleep(300 * time.Millisecond) // it knows the first primary
	old := g.Primary()
	// Writes go unconfirmed all through the failover (the new primary has
	// no replica until the old one rejoins it): all of them count in the
	// one warning, said once the failover settled.
	var made atomic.Int64
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
				mo.Unconfirmed()
				made.Add(1)
			}
		}
	}()
	fctx, fcancel := context.WithTimeout(ctx, 60*time.Second)
	defer fcancel()
	sw, err := g.Failover(fctx)
	close(done)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return logs.FilterMessage("redis primary changed").Len() > 0 }, 20*time.Second, 50*time.Millisecond)
	time.Sleep(time.Second) // no second line for the same change
	lines := logs.FilterMessage("redis primary changed").All()
	require.Len(t, lines, 1)
	f := lines[0].ContextMap()
	assert.Equal(t, old, f["old_addr"])
	assert.Equal(t, sw.New, f["new_addr"])
	assert.Equal(t, made.Load(), f["unconfirmed_writes"])
	assert.Positive(t, made.Load())
	assert.Equal(t, zap.WarnLevel, lines[0].Level)
}
