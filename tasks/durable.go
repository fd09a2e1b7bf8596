package tasks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Durability makes acknowledged writes wait until Redis replicas have them,
// so that a failover cannot take back what a caller was told is done.
//
// Redis replicates asynchronously: for a moment after a failover, clients
// may still write to the old primary, which throws those writes away when
// it rejoins as a replica. A write is acknowledged only after, on one
// connection, the keys it wrote are read back as written, a marker is
// written, and WAIT sees MinReplicas replicas take the marker. Replication
// is one ordered stream, so the marker covers every earlier write on that
// primary (asynq's included), and reading the keys on the same connection
// proves they are on the primary that replicas confirmed.
type Durability struct {
	// MinReplicas is how many replicas must confirm; 0 turns it off.
	MinReplicas int
	// Timeout bounds WAIT; default 1s.
	Timeout time.Duration
	// OnUnconfirmed, if set, is called once per write not confirmed.
	OnUnconfirmed func()
}

// ErrUnconfirmed matches an *UnconfirmedError.
var ErrUnconfirmed = errors.New("not confirmed by Redis replicas")

// UnconfirmedError: Redis took a write but could not confirm that enough
// replicas have it, or the primary no longer has it; a failover may lose
// it. Submitting again with the same idempotency key is safe.
type UnconfirmedError struct {
	What    string // what was written: "change 1f3a…", "rollout …"
	Want    int
	Got     int
	Timeout time.Duration
	// Missing: the write is not on the primary answering now (it went to
	// one that has since been replaced).
	Missing bool
}

func (e *UnconfirmedError) Error() string {
	if e.Missing {
		return fmt.Sprintf("%s not confirmed: the Redis primary answering now does not have it (a failover is under way); submit again with the same idempotency key", e.What)
	}
	return fmt.Sprintf("%s not confirmed: %d of %d Redis replicas took it within %s, so a failover could lose it; submit again with the same idempotency key", e.What, e.Got, e.Want, e.Timeout)
}

// Is makes errors.Is(err, ErrUnconfirmed) hold.
func (e *UnconfirmedError) Is(target error) bool { return target == ErrUnconfirmed }

// Temporary: trying again later may succeed.
func (e *UnconfirmedError) Temporary() bool { return true }

func (d Durability) on() bool { return d.MinReplicas > 0 }

func (d Durability) timeout() time.Duration {
	if d.Timeout <= 0 {
		return time.Second
	}
	return d.Timeout
}

// readBack is what a confirmation reads back, on the connection that
// then WAITs: whether keys exist (asynq's task hashes), the values of
// string keys (records), and whether that shows the write on the primary.
type readBack struct {
	exist  []string
	values []string
	ok     func(exist []bool, values []string) bool
}

// keysExist: the write is there if every key exists.
func keysExist(keys ...string) readBack {
	return readBack{exist: keys, ok: func(e []bool, _ []string) bool {
		for _, x := range e {
			if !x {
				return false
			}
		}
		return true
	}}
}

// confirm reads back, writes the marker and WAITs, all on one connection.
func (d Durability) confirm(ctx context.Context, rdb redis.UniversalClient, prefix, what string, rb readBack) error {
	if !d.on() {
		return nil
	}
	var (
		exists []*redis.IntCmd
		gets   []*redis.StringCmd
		wait   *redis.Cmd
	)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range rb.exist {
			exists = append(exists, p.Exists(ctx, k))
		}
		for _, k := range rb.values {
			gets = append(gets, p.Get(ctx, k))
		}
		p.Set(ctx, prefix+"ack", marker(), time.Minute)
		wait = p.Do(ctx, "WAIT", d.MinReplicas, d.timeout().Milliseconds())
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("confirm %s on Redis replicas: %w", what, err)
	}
	ex := make([]bool, len(exists))
	for i, c := range exists {
		ex[i] = c.Val() == 1
	}
	vals := make([]string, len(gets))
	for i, c := range gets {
		vals[i] = c.Val()
	}
	if !rb.ok(ex, vals) {
		return d.unconfirmed(&UnconfirmedError{What: what, Want: d.MinReplicas, Missing: true})
	}
	n, err := wait.Int()
	if err != nil {
		return fmt.Errorf("confirm %s on Redis replicas: %w", what, err)
	}
	if n < d.MinReplicas {
		return d.unconfirmed(&UnconfirmedError{What: what, Want: d.MinReplicas, Got: n, Timeout: d.timeout()})
	}
	return nil
}

func (d Durability) unconfirmed(e *UnconfirmedError) error {
	if d.OnUnconfirmed != nil {
		d.OnUnconfirmed()
	}
	return e
}

func marker() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Confirm waits until replicas have every write made so far to the keys
// given (which must exist on the primary), for callers outside this
// package (a rollout's creation).
func (d Durability) Confirm(ctx context.Context, rdb redis.UniversalClient, prefix, what string, keys ...string) error {
	return d.confirm(ctx, rdb, prefix, what, keysExist(keys...))
}

// AsynqTaskKey is the key asynq keeps a task under.
func AsynqTaskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// RedisUnavailable tells whether err is Redis not answering for the moment
// (no connection, a timeout, a primary that just became a replica or is
// loading): sending the same request again, with the same idempotency
// key, is safe and may succeed.
func RedisUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) {
		return true
	}
	msg := err.Error()
	for _, p := range []string{"READONLY ", "LOADING ", "MASTERDOWN ", "TRYAGAIN ", "NOREPLICAS ", "redis: all sentinels specified in configuration are unreachable", "connection refused", "i/o timeout"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
