package token

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/wxdomain/wxdomain/internal/feed"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	// TicketReceivedAt names the ticket the fetch used (zero: none was
	// stored), so that a refusal is not held against a newer ticket.
	TicketReceivedAt time.Time
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("get component token of %s: %v", e.AppID, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// BusyError means the token API was busy (-1) or could not be reached, now
// or moments ago: the whole fleet asks again after RetryIn, with backoff,
// and the change that waits uses no attempt.
type BusyError struct {
	RetryIn time.Duration
	// Err is the answer, or nil when the fleet is still backing off.
	Err error
}

func (e *BusyError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("the token API was busy moments ago; asking again in %s", e.RetryIn.Round(time.Millisecond))
	}
	return fmt.Sprintf("%v; asking again in %s", e.Err, e.RetryIn.Round(time.Millisecond))
}

func (e *BusyError) Unwrap() error { return e.Err }

// ErrUnknownPlatform means no secret is configured for the appid.
var ErrUnknownPlatform = errors.New("no secret for this platform in this process: it is not in the platforms file, or its secret_env variable is not set here")

// SourceConfig configures a Source.
type SourceConfig struct {
	Prefix string
	// Margin: a token is refreshed this long before it expires, plus a
	// jitter of up to a fifth of it, the same in every process for a given
	// token, so that platforms don't all refresh at once.
	Margin time.Duration
	// Lease bounds how long a crashed refresher can block the others.
	Lease time.Duration
	// Secret returns a platform's app secret.
	Secret func(appid string) (string, bool)
	// Observe, if set, is told of every fetch from WeChat and its outcome
	// (for metrics).
	Observe func(appid string, err error)
	// RetryCodes are the token API's errcodes that mean "busy, ask again":
	// they are not remembered as refusals; default -1.
	RetryCodes []int
}

// Source hands out each platform's component token. The token lives in
// Redis, shared by every process; one process refreshes it under a lock
// while the others wait for and reuse its result, so a fleet fetches a
// token once per platform per expiry. While Watch runs, each process also
// keeps tokens in memory and answers without a Redis round trip until the
// shared entry changes (announced on a pub/sub channel) or nears expiry.
type Source struct {
	rdb     redis.UniversalClient
	fetcher Fetcher
	tickets *ticket.Store
	cfg     SourceConfig
	log     *zap.Logger
	now     func() time.Time
	group   singleflight.Group

	// local keeps tokens in memory while the fleet's token changes are
	// followed (Watch).
	local *feed.Cache[entry]
	// inflight counts refreshes under way, which outlive their callers.
	inflight sync.WaitGroup
	// draining is closed by Drain: refreshes waiting for another
	// process's lock give up.
	draining  chan struct{}
	drainOnce sync.Once
}

// Drain waits for the fetches under way to end (each is bounded by the
// HTTP timeout and the lock's lease), so that a stopping process stores a
// token WeChat issued. A refresh that is only waiting for another
// process's fetch gives up at once: nothing of its own is at stake.
func (s *Source) Drain() {
	s.drainOnce.Do(func() { close(s.draining) })
	s.inflight.Wait()
}

// errDraining: the process is stopping, and the refresh was only waiting.
var errDraining = errors.New("the process is stopping")

// NewSource returns a token source.
func NewSource(rdb redis.UniversalClient, f Fetcher, t *ticket.Store, cfg SourceConfig, log *zap.Logger) *Source {
	if cfg.Lease <= 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Observe == nil {
		cfg.Observe = func(string, error) {}
	}
	if cfg.RetryCodes == nil {
		cfg.RetryCodes = []int{-1}
	}
	return &Source{rdb: rdb, fetcher: f, tickets: t, cfg: cfg, log: log, now: time.Now, local: feed.New[entry](rdb, cfg.Prefix+"token_changes"), draining: make(chan struct{})}
}

func (s *Source) key(appid string) string     { return s.cfg.Prefix + "token:" + appid }
func (s *Source) lockKey(appid string) string { return s.cfg.Prefix + "token_lock:" + appid }
func (s *Source) channel() string             { return s.local.Channel() }
func (s *Source) fetchesKey(appid string, t time.Time) string {
	return s.cfg.Prefix + "token_fetches:" + appid + ":" + t.In(chinaTime).Format("20060102")
}

// refusalMemory is how long a token API refusal is answered from memory.
const refusalMemory = 30 * time.Second

// RefusalKey remembers the token API's last refusal for a platform; storing
// a new ticket deletes it.
func RefusalKey(prefix, appid string) string { return prefix + "token_refusal:" + appid }

// countFetch counts a call of the token API: every call counts against its
// daily quota, even a refused one.
func (s *Source) countFetch(ctx context.Context, appid string, at time.Time) {
	fetches := s.fetchesKey(appid, at)
	_, err := s.rdb.TxPipelined(context.WithoutCancel(ctx), func(p redis.Pipeliner) error {
		p.Incr(ctx, fetches)
		p.Expire(ctx, fetches, 48*time.Hour)
		return nil
	})
	if err != nil {
		s.log.Warn("could not count a token fetch", zap.String("platform", appid), zap.Error(err))
	}
}

func (s *Source) busyKey(appid string) string { return s.cfg.Prefix + "token_busy:" + appid }

// Backoff of the token API when busy: 500ms, doubling, at most 30s.
const (
	busyBase = 500 * time.Millisecond
	busyMax  = 30 * time.Second
)

// backOffScript: KEYS busy; ARGV base ms, max ms. Counts one more busy
// answer and returns the backoff in ms, on Redis's clock.
var backOffScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local backoff = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) * 2 ^ (math.min(n, 30) - 1))
redis.call('HSET', KEYS[1], 'until', now + backoff)
redis.call('PEXPIRE', KEYS[1], backoff + 60000)
return backoff`)

// backingOffScript: KEYS busy. The ms left of the backoff, or 0.
var backingOffScript = redis.NewScript(`
local u = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if u > now then return u - now end
return 0`)

func (s *Source) backOff(ctx context.Context, appid string) (time.Duration, error) {
	ms, err := backOffScript.Run(ctx, s.rdb, []string{s.busyKey(appid)}, busyBase.Milliseconds(), busyMax.Milliseconds()).Int64()
	if err != nil {
		return busyBase, fmt.Errorf("record the token API's busy answer for %s: %w", appid, err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func (s *Source) backingOff(ctx context.Context, appid string) (time.Duration, error) {
	ms, err := backingOffScript.Run(ctx, s.rdb, []string{s.busyKey(appid)}).Int64()
	if err != nil {
		return 0, fmt.Errorf("read the token API's backoff for %s: %w", appid, err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// ticketKey is ticket.Store's key of a platform's ticket.
func ticketKey(prefix, appid string) string { return prefix + "ticket:" + appid }

// rememberRefusal: KEYS ticket, refusal; ARGV the refused ticket's
// received_at ms, the refusal, its lifetime ms.
var rememberRefusal = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'received_at') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1`)

// chinaTime is UTC+8, where WeChat's days (and quotas) start.
var chinaTime = time.FixedZone("UTC+8", 8*3600)

type entry struct {
	token      string
	expires    time.Time
	fetched    time.Time
	generation int64
}

func (s *Source) read(ctx context.Context, appid string) (entry, error) {
	v, err := s.rdb.HMGet(ctx, s.key(appid), "token", "expires_at", "fetched_at", "generation").Result()
	if err != nil {
		return entry{}, fmt.Errorf("read token of %s: %w", appid, err)
	}
	num := func(i int) int64 {
		str, _ := v[i].(string)
		n, _ := strconv.ParseInt(str, 10, 64)
		return n
	}
	tok, _ := v[0].(string)
	return entry{token: tok, expires: time.UnixMilli(num(1)), fetched: time.UnixMilli(num(2)), generation: num(3)}, nil
}

// refreshAt is when a token is due for refresh: the same moment in every
// process, since the jitter comes from the token itself.
func (s *Source) refreshAt(e entry) time.Time {
	h := fnv.New32a()
	_, _ = h.Write([]byte(e.token))
	// A short-lived token (a sandbox's, say) is refreshed at mid-life at
	// the latest, or it would never count as fresh.
	margin := min(s.cfg.Margin, e.expires.Sub(e.fetched)/2)
	jitter := time.Duration(0)
	if span := int64(margin / 5); span > 0 {
		jitter = time.Duration(int64(h.Sum32()) % span)
	}
	return e.expires.Add(-margin - jitter)
}

func (s *Source) fresh(e entry) bool {
	return e.token != "" && s.now().Before(s.refreshAt(e))
}

// Token returns a valid component token for the platform.
func (s *Source) Token(ctx context.Context, appid string) (string, error) {
	e, seen, ok := s.local.Get(appid)
	if ok && s.fresh(e) {
		return e.token, nil
	}
	e, err := s.read(ctx, appid)
	if err != nil {
		return "", err
	}
	if s.fresh(e) {
		s.local.Remember(appid, e, seen)
		return e.token, nil
	}
	// One refresh per process at a time. It runs under a context of its
	// own, bounded by the lock's lease: a caller that gives up (a canceled
	// change, a shutdown) does not throw away a token WeChat is issuing.
	ch := make(chan singleflight.Result, 1)
	s.inflight.Add(1)
	go func() {
		defer s.inflight.Done()
		v, err, shared := s.group.Do(appid, func() (any, error) {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.Lease)
			defer cancel()
			seen := s.local.Seen(appid)
			e, err := s.refresh(rctx, appid)
			return fetched{e, seen}, err
		})
		ch <- singleflight.Result{Val: v, Err: err, Shared: shared}
	}()
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		f := r.Val.(fetched)
		// Kept only if no change notice arrived since the refresh began,
		// whoever joined it later.
		s.local.Remember(appid, f.e, f.seen)
		return f.e.token, nil
	}
}

// fetched is a refresh's result and the change count when it began.
type fetched struct {
	e    entry
	seen uint64
}

// Watch follows the fleet's token changes so that tokens can be kept in
// memory; it runs until ctx ends. Without it every Token call reads Redis.
func (s *Source) Watch(ctx context.Context) { s.local.Watch(ctx) }

// refresh fetches a token under the platform's Redis lock, or waits for the
// holder of the lock and reuses what it fetched.
func (s *Source) refresh(ctx context.Context, appid string) (entry, error) {
	owner := randomHex()
	wait := 20 * time.Millisecond
	for {
		ok, err := s.rdb.SetNX(ctx, s.lockKey(appid), owner, s.cfg.Lease).Result()
		if err != nil {
			return entry{}, fmt.Errorf("lock token of %s: %w", appid, err)
		}
		// Whether or not we hold the lock, someone may have refreshed it.
		e, err := s.read(ctx, appid)
		if err != nil {
			s.unlock(ctx, appid, owner, ok)
			return entry{}, err
		}
		if s.fresh(e) {
			s.unlock(ctx, appid, owner, ok)
			return e, nil
		}
		if ok {
			e, err := s.fetch(ctx, appid)
			s.cfg.Observe(appid, err)
			s.unlock(ctx, appid, owner, true)
			return e, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return entry{}, fmt.Errorf("wait for token refresh of %s: %w", appid, ctx.Err())
		case <-s.draining:
			t.Stop()
			return entry{}, fmt.Errorf("wait for token refresh of %s: %w", appid, errDraining)
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

func (s *Source) fetch(ctx context.Context, appid string) (entry, error) {
	secret, ok := s.cfg.Secret(appid)
	if !ok {
		return entry{}, &FetchError{AppID: appid, Err: ErrUnknownPlatform}
	}
	ticket, err := s.tickets.Get(ctx, appid)
	if err != nil {
		return entry{}, &FetchError{AppID: appid, Err: err}
	}
	// A refusal moments ago would only be repeated: answer it again rather
	// than spend the token API's quota (a new ticket clears it).
	if v, err := s.rdb.Get(ctx, RefusalKey(s.cfg.Prefix, appid)).Result(); err == nil {
		if code, msg, ok := strings.Cut(v, "|"); ok {
			n, _ := strconv.Atoi(code)
			return entry{}, &FetchError{AppID: appid, Err: &wechat.APIError{Code: n, Msg: msg}, TicketReceivedAt: ticket.ReceivedAt}
		}
	}
	// Busy moments ago: the fleet backs off together.
	if wait, err := s.backingOff(ctx, appid); err != nil || wait > 0 {
		if err != nil {
			return entry{}, err
		}
		return entry{}, &FetchError{AppID: appid, Err: &BusyError{RetryIn: wait}, TicketReceivedAt: ticket.ReceivedAt}
	}
	started := s.now()
	ct, err := s.fetcher.FetchComponentToken(ctx, appid, secret, ticket.Value)
	var (
		refused   *wechat.APIError
		transport *wechat.TransportError
	)
	if (errors.As(err, &refused) && slices.Contains(s.cfg.RetryCodes, refused.Code)) || (errors.As(err, &transport) && transport.Transient()) {
		// Busy, or no answer for now: not a refusal. Asked again after a
		// backoff that grows while it lasts, by one process for the fleet.
		// A failure that will not pass by itself (a redirect, a 4xx, a
		// certificate refused) is the change's error, and uses attempts.
		wait, berr := s.backOff(context.WithoutCancel(ctx), appid)
		s.countFetch(ctx, appid, started)
		return entry{}, &FetchError{AppID: appid, Err: errors.Join(&BusyError{RetryIn: wait, Err: err}, berr), TicketReceivedAt: ticket.ReceivedAt}
	}
	if errors.As(err, &refused) {
		// Remembered only while the refused ticket is still the stored one:
		// a ticket stored meanwhile deserves its own try.
		_ = rememberRefusal.Run(ctx, s.rdb, []string{ticketKey(s.cfg.Prefix, appid), RefusalKey(s.cfg.Prefix, appid)},
			ticket.ReceivedAt.UnixMilli(), strconv.Itoa(refused.Code)+"|"+refused.Msg, refusalMemory.Milliseconds()).Err()
	}
	s.countFetch(ctx, appid, started)
	if err != nil {
		return entry{}, &FetchError{AppID: appid, Err: err, TicketReceivedAt: ticket.ReceivedAt}
	}
	e := entry{token: ct.Token, expires: started.Add(ct.ExpiresIn), fetched: started}
	// WeChat issued it: store it even if our caller gives up now, or the
	// next caller fetches another and this one is wasted.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	key := s.key(appid)
	var gen *redis.IntCmd
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "token", e.token, "expires_at", e.expires.UnixMilli(), "fetched_at", e.fetched.UnixMilli())
		gen = p.HIncrBy(ctx, key, "generation", 1)
		p.PExpireAt(ctx, key, e.expires)
		p.Publish(ctx, s.channel(), appid)
		p.Del(ctx, s.busyKey(appid))
		return nil
	})
	if err != nil {
		return entry{}, fmt.Errorf("store token of %s: %w", appid, err)
	}
	e.generation = gen.Val()
	s.log.Info("component token fetched", zap.String("platform", appid), zap.Time("expires_at", e.expires), zap.Int64("generation", e.generation))
	return e, nil
}

// invalidateScript drops the token only if it is still the one that failed,
// and tells every process.
var invalidateScript = redis.NewScript(`
if redis.call("HGET", KEYS[1], "token") == ARGV[1] then
  redis.call("HDEL", KEYS[1], "token", "expires_at")
  redis.call("HINCRBY", KEYS[1], "generation", 1)
  redis.call("PUBLISH", KEYS[2], ARGV[2])
  return 1
end
return 0`)

// Invalidate drops the platform's shared token only if it is still the one
// that failed: a token another process already replaced is kept.
func (s *Source) Invalidate(ctx context.Context, appid, failed string) error {
	s.local.Forget(appid)
	if err := invalidateScript.Run(ctx, s.rdb, []string{s.key(appid), s.channel()}, failed, appid).Err(); err != nil {
		return fmt.Errorf("invalidate token of %s: %w", appid, err)
	}
	return nil
}

// Status is what an operator sees of a platform's token; never the token.
type Status struct {
	Valid        bool      `json:"valid"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"`
	FetchedAt    time.Time `json:"fetched_at,omitzero"`
	Generation   int64     `json:"generation"`
	FetchesToday int64     `json:"fetches_today"`
}

// Status reports the platform's shared token state.
func (s *Source) Status(ctx context.Context, appid string) (Status, error) {
	e, err := s.read(ctx, appid)
	if err != nil {
		return Status{}, err
	}
	n, err := s.rdb.Get(ctx, s.fetchesKey(appid, s.now())).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Status{}, fmt.Errorf("read token fetches of %s: %w", appid, err)
	}
	st := Status{Valid: e.token != "" && s.now().Before(e.expires), Generation: e.generation, FetchesToday: n}
	if e.token != "" {
		st.ExpiresAt, st.FetchedAt = e.expires.UTC(), e.fetched.UTC()
	}
	return st, nil
}

func randomHex() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
