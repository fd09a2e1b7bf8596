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

// Set stores a platform's ticket.
func (t *Store) Set(ctx context.Context, appid, ticket string) error {
	if ticket == "" {
		return errors.New("ticket is empty")
	}
	_, err := t.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, t.key(appid), "ticket", ticket, "received_at", t.now().UnixMilli())
		// A remembered token refusal (token.RefusalKey) was about the old ticket.
		p.Del(ctx, t.prefix+"token_refusal:"+appid)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store ticket of %s: %w", appid, err)
	}
	return nil
}

// Get returns a platform's ticket, or ErrNoTicket.
func (t *Store) Get(ctx context.Context, appid string) (Ticket, error) {
	v, err := t.rdb.HMGet(ctx, t.key(appid), "ticket", "received_at").Result()
	if err != nil {
		return Ticket{}, fmt.Errorf("read ticket of %s: %w", appid, err)
	}
	s, _ := v[0].(string)
	if s == "" {
		return Ticket{}, fmt.Errorf("%w for platform %s", ErrNoTicket, appid)
	}
	ms, _ := v[1].(string)
	n, _ := strconv.ParseInt(ms, 10, 64)
	return Ticket{Value: s, ReceivedAt: time.UnixMilli(n)}, nil
}
