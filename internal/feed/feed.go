// Package feed keeps values read from Redis in process memory while a
// pub/sub channel announces every change to them: a process answers from
// memory until the fleet says a value changed, and trusts nothing it kept
// while the channel is not followed (the notices of that time are lost).
package feed

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache holds values by key, each dropped when a notice names its key (or
// names none: everything).
type Cache[V any] struct {
	rdb     redis.UniversalClient
	channel string

	mu    sync.RWMutex
	local map[string]V
	// changes counts the notices per key ("" for all), so that a value
	// read before a notice is not kept after it.
	changes map[string]uint64
	live    atomic.Bool // the channel is followed: kept values can be trusted
}

// New returns a cache fed by the notices on channel.
func New[V any](rdb redis.UniversalClient, channel string) *Cache[V] {
	return &Cache[V]{rdb: rdb, channel: channel, local: map[string]V{}, changes: map[string]uint64{}}
}

// Channel is the channel that announces changes: a writer publishes the
// key it changed on it, in the same step as the change.
func (c *Cache[V]) Channel() string { return c.channel }

// Get returns the value kept for key, if the channel is followed and one
// is kept, and the notice count to give Remember with a value read now.
func (c *Cache[V]) Get(key string) (v V, seen uint64, ok bool) {
	c.mu.RLock()
	v, ok = c.local[key]
	seen = c.changes[key] + c.changes[""]
	c.mu.RUnlock()
	return v, seen, ok && c.live.Load()
}

// Seen is the notice count for key now (see Get).
func (c *Cache[V]) Seen(key string) uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.changes[key] + c.changes[""]
}

// Remember keeps a value read when the notice count was seen, unless the
// channel is not followed or a notice for the key arrived since.
func (c *Cache[V]) Remember(key string, v V, seen uint64) {
	if !c.live.Load() {
		return
	}
	c.mu.Lock()
	if c.changes[key]+c.changes[""] == seen {
		c.local[key] = v
	}
	c.mu.Unlock()
}

// Forget drops the value of key (all of them for "").
func (c *Cache[V]) Forget(key string) {
	c.mu.Lock()
	if key == "" {
		clear(c.local)
	} else {
		delete(c.local, key)
	}
	c.changes[key]++
	c.mu.Unlock()
}

// Live reports whether the channel is followed now.
func (c *Cache[V]) Live() bool { return c.live.Load() }

// ping is how long the channel may stay silent before it is pinged.
const ping = 30 * time.Second

// Watch follows the channel until ctx ends, subscribing again after a
// failure. Without it nothing is kept: every Get misses.
func (c *Cache[V]) Watch(ctx context.Context) {
	defer c.live.Store(false)
	for ctx.Err() == nil {
		c.follow(ctx)
		// Notices may have been missed: trust nothing kept so far.
		c.live.Store(false)
		c.Forget("")
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// follow reads one subscription until it fails or ctx ends.
func (c *Cache[V]) follow(ctx context.Context) {
	ps := c.rdb.Subscribe(ctx, c.channel)
	defer ps.Close()
	// Receive does not return on ctx's end by itself; closing the
	// subscription makes it.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, ping)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !pinged {
			// Silent for a while: make sure the connection is alive.
			if ps.Ping(ctx) != nil {
				return
			}
			pinged = true
			continue
		}
		if err != nil {
			return // including a ping left unanswered: the connection is dead
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			c.Forget("")
			c.live.Store(m.Kind == "subscribe")
		case *redis.Message:
			c.Forget(m.Payload)
		}
	}
}
