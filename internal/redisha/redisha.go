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

// settleQuiet: a failover is over, for the count of unconfirmed writes,
// once this long passed without one (or after settleMax in all). The new
// primary often has no replica for a while after a graceful failover (the
// old one rejoins it), and most unconfirmed writes fall there.
const (
	settleQuiet = 3 * time.Second
	settleMax   = 2 * time.Minute
)

// change is a change of primary seen: when, and since when no write was
// left unconfirmed (count is the total then).
type change struct {
	old, new      Primary
	seen, quietAt time.Time
	count         int64
}

// Run looks at the primary every interval until ctx ends. When it changed,
// it logs one warning once the failover has settled (no unconfirmed write
// for a few seconds): the old and new addresses, when the change was seen,
// and how many writes this process could not confirm since the last one.
func (mo *Monitor) Run(ctx context.Context, rdb redis.UniversalClient, interval time.Duration, log *zap.Logger) {
	var (
		last     Primary
		reported int64
		// pending is a change seen and not yet said.
		pending *change
	)
	t := time.NewTicker(interval)
	defer t.Stop()
	say := func() {
		n := mo.unconfirmed.Load()
		msg := "redis primary changed"
		if pending.new.Addr == pending.old.Addr {
			msg = "redis primary restarted" // same address, a new process: without persistence, a loss
		}
		log.Warn(msg, zap.String("old_addr", pending.old.Addr), zap.String("new_addr", pending.new.Addr),
			zap.Int64("unconfirmed_writes", n-reported), zap.Time("seen_at", pending.seen), zap.String("new_role", pending.new.Role))
		reported = n
		pending = nil
	}
	for {
		ictx, cancel := context.WithTimeout(ctx, interval+time.Second)
		pr, err := Identify(ictx, rdb)
		cancel()
		now := time.Now()
		if err == nil && pr.RunID != "" {
			if last.RunID != "" && pr.RunID != last.RunID {
				if pending != nil {
					say() // a second change before the first settled
				}
				mo.metrics.Load().RedisFailover()
				pending = &change{old: last, new: pr, seen: now, quietAt: now, count: mo.unconfirmed.Load()}
			}
			last = pr
		}
		if pending != nil {
			if c := mo.unconfirmed.Load(); c != pending.count {
				pending.count, pending.quietAt = c, now
			}
			if now.Sub(pending.quietAt) >= settleQuiet || now.Sub(pending.seen) >= settleMax {
				say()
			}
		}
		select {
		case <-ctx.Done():
			if pending != nil {
				say()
			}
			return
		case <-t.C:
		}
	}
}
