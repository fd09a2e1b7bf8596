// Package redisha watches the Redis primary a process writes to, so that a
// failover (or a restart) is seen and said once, with what it may have cost.
package redisha

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/metrics"
)

// Monitor counts the writes Redis replicas did not confirm and notices when
// the primary changes. Its zero value is not usable; use New.
type Monitor struct {
	metrics     atomic.Pointer[metrics.Metrics]
	unconfirmed atomic.Int64
}

// New returns a monitor.
func New() *Monitor { return &Monitor{} }

// SetMetrics makes the monitor count in m (nil: nowhere).
func (mo *Monitor) SetMetrics(m *metrics.Metrics) { mo.metrics.Store(m) }

// Unconfirmed counts a write that replicas did not confirm (for
// tasks.Durability.OnUnconfirmed).
func (mo *Monitor) Unconfirmed() {
	mo.unconfirmed.Add(1)
	mo.metrics.Load().RedisUnconfirmedWrite()
}

// Primary identifies the server a client writes to: its run id (new at
// every start) and its address as the server sees it.
type Primary struct {
	RunID string
	Addr  string
	Role  string
}

// Identify asks the server the client writes to who it is, on one
// connection.
func Identify(ctx context.Context, rdb redis.UniversalClient) (Primary, error) {
	var info, client, role *redis.Cmd
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		info = p.Do(ctx, "INFO", "server")
		client = p.Do(ctx, "CLIENT", "INFO")
		role = p.Do(ctx, "ROLE")
		return nil
	})
	if err != nil {
		return Primary{}, err
	}
	var pr Primary
	s, _ := info.Text()
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			pr.RunID = v
		}
	}
	c, _ := client.Text()
	for _, f := range strings.Fields(c) {
		if v, ok := strings.CutPrefix(f, "laddr="); ok {
			pr.Addr = v
		}
	}
	if r, err := role.Slice(); err == nil && len(r) > 0 {
		pr.Role, _ = r[0].(string)
	}
	return pr, nil
}

// Run looks at the primary every interval until ctx ends, and logs one
// warning when it changed: the old and new addresses and how many writes
// this process could not confirm since the last change.
func (mo *Monitor) Run(ctx context.Context, rdb redis.UniversalClient, interval time.Duration, log *zap.Logger) {
	var last Primary
	reported := int64(0)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, interval+time.Second)
		pr, err := Identify(ictx, rdb)
		cancel()
		if err == nil && pr.RunID != "" {
			if last.RunID != "" && pr.RunID != last.RunID {
				n := mo.unconfirmed.Load()
				msg := "redis primary changed"
				if pr.Addr == last.Addr {
					msg = "redis primary restarted" // same address, a new process: without persistence, a loss
				}
				log.Warn(msg, zap.String("old_addr", last.Addr), zap.String("new_addr", pr.Addr),
					zap.Int64("unconfirmed_writes", n-reported), zap.String("new_role", pr.Role))
				reported = n
				mo.metrics.Load().RedisFailover()
			}
			last = pr
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
