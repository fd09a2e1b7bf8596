// Package ticket keeps each platform's component_verify_ticket in Redis,
// shared by every wxdomain process.
package ticket

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNoTicket means no component_verify_ticket was stored for a platform.
var ErrNoTicket = errors.New("no component_verify_ticket stored")

// Ticket is the last component_verify_ticket received for a platform.
type Ticket struct {
	Value      string
	ReceivedAt time.Time
	// CreatedAt is when WeChat created it (the push's CreateTime), or when
	// it was stored if no time was given.
	CreatedAt time.Time
}

// Store keeps one ticket per platform (never one key for all), with the
// time it was received. WeChat pushes a new one every 10 minutes; each stays
// valid for 12 hours, so the last one is kept until WeChat rejects it.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time
}

// NewStore returns the ticket store under a key prefix.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, prefix: prefix, now: time.Now}
}

func (t *Store) key(appid string) string { return t.prefix + "ticket:" + appid }

// setScript stores a ticket unless the stored one was created later (or
// at the same second): KEYS ticket, refusal; ARGV ticket, received ms,
// created s, "1" if created is a time WeChat gave. It returns {stored 0|1,
// created s of the ticket in force, 1 if that ticket is this one}.
var setScript = redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '0')
local created = tonumber(ARGV[3])
if ARGV[4] == '1' and cur >= created then
  local same = 0
  if redis.call('HGET', KEYS[1], 'ticket') == ARGV[1] then same = 1 end
  return {0, cur, same}
end
redis.call('HSET', KEYS[1], 'ticket', ARGV[1], 'received_at', ARGV[2], 'created_at', ARGV[3])
redis.call('DEL', KEYS[2])
return {1, created, 1}`)

// Set stores a platform's ticket, replacing whatever is stored (an
// operator's ticket, given without a time).
func (t *Store) Set(ctx context.Context, appid, ticket string) error {
	_, _, err := t.SetAt(ctx, appid, ticket, time.Time{})
	return err
}

// SetAt stores a platform's ticket created at a time (the push's
// CreateTime): a ticket created no later than the stored one changes
// nothing, and stored is false, so a replayed push cannot put back an old
// ticket. inForce is the creation time of the ticket now stored. A zero
// created means now, and always stores.
func (t *Store) SetAt(ctx context.Context, appid, ticket string, created time.Time) (stored bool, inForce time.Time, err error) {
	r, err := t.set(ctx, appid, ticket, created)
	return r.Stored, r.InForce, err
}

// SetResult is what storing a ticket found.
type SetResult struct {
	// Stored: this ticket replaced the stored one.
	Stored bool
	// InForce is the creation time of the ticket now stored.
	InForce time.Time
	// Same: the ticket now stored is this one (stored now, or earlier by
	// the same push).
	Same bool
}

// SetWithResult is SetAt, also saying whether the ticket in force is this one.
func (t *Store) SetWithResult(ctx context.Context, appid, ticket string, created time.Time) (SetResult, error) {
	return t.set(ctx, appid, ticket, created)
}

func (t *Store) set(ctx context.Context, appid, ticket string, created time.Time) (SetResult, error) {
	if ticket == "" {
		return SetResult{}, errors.New("ticket is empty")
	}
	now := t.now()
	timed := "1"
	if created.IsZero() {
		created, timed = now, "0"
	}
	// A remembered token refusal (token.RefusalKey) was about the old ticket.
	res, err := setScript.Run(ctx, t.rdb, []string{t.key(appid), t.prefix + "token_refusal:" + appid},
		ticket, now.UnixMilli(), created.Unix(), timed).Int64Slice()
	if err != nil {
		return SetResult{}, fmt.Errorf("store ticket of %s: %w", appid, err)
	}
	return SetResult{Stored: res[0] == 1, InForce: time.Unix(res[1], 0), Same: res[2] == 1}, nil
}

// Get returns a platform's ticket, or ErrNoTicket.
func (t *Store) Get(ctx context.Context, appid string) (Ticket, error) {
	v, err := t.rdb.HMGet(ctx, t.key(appid), "ticket", "received_at", "created_at").Result()
	if err != nil {
		return Ticket{}, fmt.Errorf("read ticket of %s: %w", appid, err)
	}
	s, _ := v[0].(string)
	if s == "" {
		return Ticket{}, fmt.Errorf("%w for platform %s", ErrNoTicket, appid)
	}
	num := func(i int) int64 {
		str, _ := v[i].(string)
		n, _ := strconv.ParseInt(str, 10, 64)
		return n
	}
	tk := Ticket{Value: s, ReceivedAt: time.UnixMilli(num(1))}
	if c := num(2); c > 0 {
		tk.CreatedAt = time.Unix(c, 0)
	}
	return tk, nil
}
