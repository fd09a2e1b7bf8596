// Package pause keeps, per platform, the conditions under which calling
// WeChat is pointless for a while (an operator must fix something, a quota is
// used up), shared by the whole fleet, and the changes deferred meanwhile so
// that they can run as soon as the condition is lifted.
package pause

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Pause is why and until when a platform's changes wait.
type Pause struct {
	Reason  string    `json:"reason"`
	ErrCode int       `json:"errcode,omitempty"`
	Until   time.Time `json:"until"`
}

// Store keeps pauses and deferred changes in Redis.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time
}

// NewStore returns a pause store under a key prefix.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, prefix: prefix, now: time.Now}
}

func (s *Store) key(appid string) string         { return s.prefix + "pause:" + appid }
func (s *Store) deferredKey(appid string) string { return s.prefix + "deferred:" + appid }

// Set pauses a platform unless it is already paused, and reports whether
// this call started the pause: the caller that did logs it, once for the
// whole fleet.
func (s *Store) Set(ctx context.Context, appid string, p Pause) (bool, error) {
	ttl := p.Until.Sub(s.now())
	if ttl <= 0 {
		return false, nil
	}
	// A hash cannot be written with NX in one command, so the pause is one
	// string: "until_ms|errcode|reason".
	v := strconv.FormatInt(p.Until.UnixMilli(), 10) + "|" + strconv.Itoa(p.ErrCode) + "|" + p.Reason
	ok, err := s.rdb.SetNX(ctx, s.key(appid), v, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("pause platform %s: %w", appid, err)
	}
	return ok, nil
}

// Get returns the platform's pause, if one is in force.
func (s *Store) Get(ctx context.Context, appid string) (Pause, bool, error) {
	v, err := s.rdb.Get(ctx, s.key(appid)).Result()
	if errors.Is(err, redis.Nil) {
		return Pause{}, false, nil
	}
	if err != nil {
		return Pause{}, false, fmt.Errorf("read pause of %s: %w", appid, err)
	}
	p, err := parse(v)
	if err != nil {
		return Pause{}, false, fmt.Errorf("read pause of %s: %w", appid, err)
	}
	if !s.now().Before(p.Until) {
		return Pause{}, false, nil
	}
	return p, true, nil
}

func parse(v string) (Pause, error) {
	parts := strings.SplitN(v, "|", 3)
	if len(parts) != 3 {
		return Pause{}, fmt.Errorf("malformed pause %q", v)
	}
	ms, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return Pause{}, fmt.Errorf("malformed pause %q", v)
	}
	code, _ := strconv.Atoi(parts[1])
	return Pause{Until: time.UnixMilli(ms), ErrCode: code, Reason: parts[2]}, nil
}

// Deferred is a change waiting for its platform's pause to end.
type Deferred struct {
	TaskID string
	Queue  string
}

// AddDeferred remembers a deferred change of a platform.
func (s *Store) AddDeferred(ctx context.Context, appid string, d Deferred) error {
	key := s.deferredKey(appid)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, d.TaskID, d.Queue)
		p.Expire(ctx, key, 7*24*time.Hour)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remember deferred change %s: %w", d.TaskID, err)
	}
	return nil
}

// Lift ends a platform's pause and returns its deferred changes, which the
// caller runs at once.
func (s *Store) Lift(ctx context.Context, appid string) ([]Deferred, error) {
	var all *redis.MapStringStringCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.key(appid))
		all = p.HGetAll(ctx, s.deferredKey(appid))
		p.Del(ctx, s.deferredKey(appid))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lift pause of %s: %w", appid, err)
	}
	out := make([]Deferred, 0, len(all.Val()))
	for id, q := range all.Val() {
		out = append(out, Deferred{TaskID: id, Queue: q})
	}
	return out, nil
}

// Resume lifts a platform's pause and runs its deferred changes now (after
// a new ticket arrives, say). It reports how many it started.
func (s *Store) Resume(ctx context.Context, inspector *asynq.Inspector, appid string) (int, error) {
	deferred, err := s.Lift(ctx, appid)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range deferred {
		// Tasks that ran meanwhile are no longer waiting; skip them.
		if inspector.RunTask(d.Queue, d.TaskID) == nil {
			n++
		}
	}
	return n, nil
}
