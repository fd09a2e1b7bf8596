package token

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/wxdomain/wxdomain/internal/wechat"
)

// Fetcher gets a new component token from WeChat.
type Fetcher interface {
	FetchComponentToken(ctx context.Context, appid, secret, ticket string) (wechat.ComponentToken, error)
}

// FetchError wraps a failure to get a token from WeChat, so that callers can
// tell it from a failure of the call the token was for.
type FetchError struct {
	AppID string
	Err   error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("get component token of %s: %v", e.AppID, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// ErrUnknownPlatform means no secret is configured for the appid.
var ErrUnknownPlatform = errors.New("platform not in the platforms file")

// SourceConfig configures a Source.
type SourceConfig struct {
	Prefix string
	// Margin: a token is refreshed this long before it expires.
	Margin time.Duration
	// Lease bounds how long a crashed refresher can block the others.
	Lease time.Duration
	// Secret returns a platform's app secret.
	Secret func(appid string) (string, bool)
}

// Source hands out each platform's component token. The token lives in
// Redis, shared by every process; one process refreshes it under a lock
// while the others wait for and reuse its result, so a fleet fetches a
// token once per platform per expiry.
type Source struct {
	rdb     redis.UniversalClient
	fetcher Fetcher
	tickets *Tickets
	cfg     SourceConfig
	log     *zap.Logger
	now     func() time.Time
	group   singleflight.Group
}

// NewSource returns a token source.
func NewSource(rdb redis.UniversalClient, f Fetcher, t *Tickets, cfg SourceConfig, log *zap.Logger) *Source {
	if cfg.Lease <= 0 {
		cfg.Lease = 30 * time.Second
	}
	return &Source{rdb: rdb, fetcher: f, tickets: t, cfg: cfg, log: log, now: time.Now}
}

func (s *Source) key(appid string) string     { return s.cfg.Prefix + "token:" + appid }
func (s *Source) lockKey(appid string) string { return s.cfg.Prefix + "token_lock:" + appid }

type entry struct {
	token   string
	expires time.Time
}

func (s *Source) read(ctx context.Context, appid string) (entry, error) {
	v, err := s.rdb.HMGet(ctx, s.key(appid), "token", "expires_at").Result()
	if err != nil {
		return entry{}, fmt.Errorf("read token of %s: %w", appid, err)
	}
	tok, _ := v[0].(string)
	ms, _ := v[1].(string)
	n, _ := strconv.ParseInt(ms, 10, 64)
	return entry{token: tok, expires: time.UnixMilli(n)}, nil
}

func (s *Source) fresh(e entry) bool {
	return e.token != "" && s.now().Add(s.cfg.Margin).Before(e.expires)
}

// Token returns a valid component token for the platform.
func (s *Source) Token(ctx context.Context, appid string) (string, error) {
	e, err := s.read(ctx, appid)
	if err != nil {
		return "", err
	}
	if s.fresh(e) {
		return e.token, nil
	}
	// One refresh per process at a time. The refresh runs under the first
	// caller's context and leaves no goroutine behind; if that caller gives
	// up, the others start a refresh of their own.
	for tries := 1; ; tries++ {
		ch := s.group.DoChan(appid, func() (any, error) {
			rctx, cancel := context.WithTimeout(ctx, 2*s.cfg.Lease)
			defer cancel()
			return s.refresh(rctx, appid)
		})
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case r := <-ch:
			leaderGaveUp := errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, context.DeadlineExceeded)
			if leaderGaveUp && ctx.Err() == nil && tries < 3 {
				continue
			}
			if r.Err != nil {
				return "", r.Err
			}
			return r.Val.(string), nil
		}
	}
}

// refresh fetches a token under the platform's Redis lock, or waits for the
// holder of the lock and reuses what it fetched.
func (s *Source) refresh(ctx context.Context, appid string) (string, error) {
	owner := randomHex()
	wait := 20 * time.Millisecond
	for {
		ok, err := s.rdb.SetNX(ctx, s.lockKey(appid), owner, s.cfg.Lease).Result()
		if err != nil {
			return "", fmt.Errorf("lock token of %s: %w", appid, err)
		}
		// Whether or not we hold the lock, someone may have refreshed it.
		e, err := s.read(ctx, appid)
		if err != nil {
			s.unlock(ctx, appid, owner, ok)
			return "", err
		}
		if s.fresh(e) {
			s.unlock(ctx, appid, owner, ok)
			return e.token, nil
		}
		if ok {
			tok, err := s.fetch(ctx, appid)
			s.unlock(ctx, appid, owner, true)
			return tok, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("wait for token refresh of %s: %w", appid, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

var unlockScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)

func (s *Source) unlock(ctx context.Context, appid, owner string, held bool) {
	if !held {
		return
	}
	// If this fails the lease expires on its own.
	_ = unlockScript.Run(context.WithoutCancel(ctx), s.rdb, []string{s.lockKey(appid)}, owner).Err()
}

func (s *Source) fetch(ctx context.Context, appid string) (string, error) {
	secret, ok := s.cfg.Secret(appid)
	if !ok {
		return "", &FetchError{AppID: appid, Err: ErrUnknownPlatform}
	}
	ticket, err := s.tickets.Get(ctx, appid)
	if err != nil {
		return "", &FetchError{AppID: appid, Err: err}
	}
	started := s.now()
	ct, err := s.fetcher.FetchComponentToken(ctx, appid, secret, ticket.Value)
	if err != nil {
		return "", &FetchError{AppID: appid, Err: err}
	}
	expires := started.Add(ct.ExpiresIn)
	key := s.key(appid)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "token", ct.Token, "expires_at", expires.UnixMilli(), "fetched_at", started.UnixMilli())
		p.HIncrBy(ctx, key, "generation", 1)
		p.PExpireAt(ctx, key, expires)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("store token of %s: %w", appid, err)
	}
	s.log.Info("component token fetched", zap.String("platform", appid), zap.Time("expires_at", expires))
	return ct.Token, nil
}

var invalidateScript = redis.NewScript(`
if redis.call("HGET", KEYS[1], "token") == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)

// Invalidate drops the platform's shared token only if it is still the one
// that failed: a token another process already replaced is kept.
func (s *Source) Invalidate(ctx context.Context, appid, failed string) error {
	if err := invalidateScript.Run(ctx, s.rdb, []string{s.key(appid)}, failed).Err(); err != nil {
		return fmt.Errorf("invalidate token of %s: %w", appid, err)
	}
	return nil
}

func randomHex() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
