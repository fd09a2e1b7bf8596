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

	"github.com/wxdomain/wxdomain/internal/feed"
)

// Kind is why a platform is paused, which decides what ends the pause.
type Kind string

// The kinds of pause. Every pause ends at its time or when an operator
// resumes the platform; only the ticket kinds also end when a new
// component_verify_ticket arrives, because only they are cured by one.
const (
	// KindNoTicket: no component_verify_ticket is stored.
	KindNoTicket Kind = "no_ticket"
	// KindTicketRefused: the token API refused the ticket (61005, 61006).
	KindTicketRefused Kind = "ticket_refused"
	// KindIPNotWhitelisted: the token API refused this server's IP (61004).
	KindIPNotWhitelisted Kind = "ip_not_whitelisted"
	// KindCredentialsRefused: a wrong secret or appid (40125, 40013, ...).
	KindCredentialsRefused Kind = "credentials_refused"
	// KindTokenRefused: any other refusal to issue a component token.
	KindTokenRefused Kind = "token_refused"
	// KindMinuteLimit: the per-minute frequency limit (45011).
	KindMinuteLimit Kind = "minute_limit"
	// KindDailyQuota: the daily quota (45009), until 00:00 China time.
	KindDailyQuota Kind = "daily_quota"
)

// EndsWithTicket reports whether a new ticket cures this kind of pause.
func (k Kind) EndsWithTicket() bool { return k == KindNoTicket || k == KindTicketRefused }

// Pause is why and until when a platform's changes wait.
type Pause struct {
	Kind    Kind      `json:"kind"`
	Reason  string    `json:"reason"`
	ErrCode int       `json:"errcode,omitempty"`
	Until   time.Time `json:"until"`
	// EndsWithTicket: a new ticket ends the pause before Until.
	EndsWithTicket bool `json:"ends_with_ticket"`
}

// Store keeps pauses and deferred changes in Redis. While Watch runs, it
// also keeps each platform's pause (or its absence) in memory, dropped
// when any process of the fleet pauses or resumes the platform (every
// change is announced on a pub/sub channel), so that a change's check
// costs no Redis command.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time
	cache  *feed.Cache[kept]
}

// kept is a platform's pause as last read: none, or one in force until
// its time.
type kept struct {
	p      Pause
	paused bool
	readAt time.Time
}

// pausedRecheck: a pause kept in memory is read again after this long (a
// resume by a process that announces nothing, of a version before the
// announcements, is then seen); a platform known not paused is trusted
// until a change is announced.
const pausedRecheck = 5 * time.Second

// NewStore returns a pause store under a key prefix.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, prefix: prefix, now: time.Now, cache: feed.New[kept](rdb, prefix+"pause_changes")}
}

// Watch follows the fleet's pause changes so that pauses can be kept in
// memory; it runs until ctx ends. Without it every Get reads Redis.
func (s *Store) Watch(ctx context.Context) { s.cache.Watch(ctx) }

func (s *Store) key(appid string) string         { return s.prefix + "pause:" + appid }
func (s *Store) deferredKey(appid string) string { return s.prefix + "deferred:" + appid }

// refusalKey is the token source's memory of the token API's last refusal
// (token.RefusalKey); an operator's resume forgets it too.
func (s *Store) refusalKey(appid string) string { return s.prefix + "token_refusal:" + appid }

// Set pauses a platform unless it is already paused, and reports whether
// this call started the pause: the caller that did logs it, once for the
// whole fleet.
func (s *Store) Set(ctx context.Context, appid string, p Pause) (bool, error) {
	ttl := p.Until.Sub(s.now())
	if ttl <= 0 {
		return false, nil
	}
	n, err := setAndAnnounce.Run(ctx, s.rdb, []string{s.key(appid)}, format(p), ttl.Milliseconds(), s.cache.Channel(), appid).Int()
	if err != nil {
		return false, fmt.Errorf("pause platform %s: %w", appid, err)
	}
	s.cache.Forget(appid) // this process need not wait for its own notice
	return n == 1, nil
}

// setAndAnnounce: KEYS pause; ARGV pause, TTL ms, the change channel, the
// appid. Pauses unless paused, and announces it in the same step.
var setAndAnnounce = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0`)

// setIfTicket: KEYS pause, ticket; ARGV pause, TTL ms, the received_at of
// the ticket the pause is about ("" for none), the change channel, the
// appid. Returns -1 when another ticket is stored now, 1 when this call
// paused, 0 when a pause was in force.
var setIfTicket = redis.NewScript(`
if (redis.call('HGET', KEYS[2], 'received_at') or '') ~= ARGV[3] then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0`)

// ErrTicketChanged is returned by SetForTicket when the ticket a pause was
// about is no longer the stored one: the new ticket deserves a try.
var ErrTicketChanged = errors.New("a new component_verify_ticket was stored meanwhile")

// SetForTicket is Set for a pause about a ticket (none stored, or one
// refused): it pauses only if that ticket, received at receivedAt (zero:
// none), is still the stored one, so that a refusal of an old ticket
// arriving after a new one cannot pause the platform.
func (s *Store) SetForTicket(ctx context.Context, appid string, p Pause, receivedAt time.Time) (bool, error) {
	ttl := p.Until.Sub(s.now())
	if ttl <= 0 {
		return false, nil
	}
	stamp := ""
	if !receivedAt.IsZero() {
		stamp = strconv.FormatInt(receivedAt.UnixMilli(), 10)
	}
	n, err := setIfTicket.Run(ctx, s.rdb, []string{s.key(appid), s.prefix + "ticket:" + appid}, format(p), ttl.Milliseconds(), stamp, s.cache.Channel(), appid).Int()
	if err != nil {
		return false, fmt.Errorf("pause platform %s: %w", appid, err)
	}
	s.cache.Forget(appid)
	if n < 0 {
		return false, ErrTicketChanged
	}
	return n == 1, nil
}

// Get returns the platform's pause, if one is in force: from memory while
// Watch follows the fleet's changes, else from Redis.
func (s *Store) Get(ctx context.Context, appid string) (Pause, bool, error) {
	k, seen, ok := s.cache.Get(appid)
	if ok && k.paused && s.now().Sub(k.readAt) > pausedRecheck {
		ok = false
	}
	if ok {
		if k.paused && s.now().Before(k.p.Until) {
			return k.p, true, nil
		}
		return Pause{}, false, nil // none, or ended at its time (its key expired then)
	}
	p, _, paused, err := s.get(ctx, appid)
	if err == nil {
		s.cache.Remember(appid, kept{p: p, paused: paused, readAt: s.now()}, seen)
	}
	return p, paused, err
}

// Read returns the platform's pause, if one is in force, from Redis; what
// it read is kept in memory too (it may be newer than what was kept).
func (s *Store) Read(ctx context.Context, appid string) (Pause, bool, error) {
	seen := s.cache.Seen(appid)
	p, _, paused, err := s.get(ctx, appid)
	if err == nil {
		s.cache.Remember(appid, kept{p: p, paused: paused, readAt: s.now()}, seen)
	}
	return p, paused, err
}

// get also returns the pause as stored, for compare-and-delete.
func (s *Store) get(ctx context.Context, appid string) (Pause, string, bool, error) {
	v, err := s.rdb.Get(ctx, s.key(appid)).Result()
	if errors.Is(err, redis.Nil) {
		return Pause{}, "", false, nil
	}
	if err != nil {
		return Pause{}, "", false, fmt.Errorf("read pause of %s: %w", appid, err)
	}
	p, err := parse(v)
	if err != nil {
		return Pause{}, "", false, fmt.Errorf("read pause of %s: %w", appid, err)
	}
	if !s.now().Before(p.Until) {
		return Pause{}, "", false, nil
	}
	return p, v, true, nil
}

// A hash cannot be written with NX in one command, so a pause is one
// string: "until_ms|errcode|kind|reason". Versions before kinds read it as
// "until_ms|errcode|reason", the kind then being part of the reason.
func format(p Pause) string {
	return strconv.FormatInt(p.Until.UnixMilli(), 10) + "|" + strconv.Itoa(p.ErrCode) + "|" + string(p.Kind) + "|" + p.Reason
}

func parse(v string) (Pause, error) {
	parts := strings.SplitN(v, "|", 4)
	if len(parts) < 3 {
		return Pause{}, fmt.Errorf("malformed pause %q", v)
	}
	ms, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return Pause{}, fmt.Errorf("malformed pause %q", v)
	}
	p := Pause{Until: time.UnixMilli(ms)}
	p.ErrCode, _ = strconv.Atoi(parts[1])
	if len(parts) == 4 && known(Kind(parts[2])) {
		p.Kind, p.Reason = Kind(parts[2]), parts[3]
	} else {
		// Written before pauses had kinds: the rest is the reason.
		p.Kind, p.Reason = kindOfCode(p.ErrCode), strings.Join(parts[2:], "|")
	}
	p.EndsWithTicket = p.Kind.EndsWithTicket()
	return p, nil
}

func known(k Kind) bool {
	switch k {
	case KindNoTicket, KindTicketRefused, KindIPNotWhitelisted, KindCredentialsRefused, KindTokenRefused, KindMinuteLimit, KindDailyQuota:
		return true
	}
	return false
}

// kindOfCode is the kind of a pause written before pauses had kinds.
func kindOfCode(code int) Kind {
	switch code {
	case 0:
		return KindNoTicket
	case 61005, 61006:
		return KindTicketRefused
	case 61004:
		return KindIPNotWhitelisted
	case 45011:
		return KindMinuteLimit
	case 45009:
		return KindDailyQuota
	}
	return KindTokenRefused
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

// liftScript ends a pause and hands back the deferred changes, in one
// step: KEYS pause, deferred, refusal; ARGV the pause as read ("*": any),
// whether to forget the token refusal too. It returns false if the pause
// changed since it was read, else {pause or "", deferred field/values...}.
// ARGV[3], ARGV[4]: the change channel and the appid, announced.
var liftScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if ARGV[1] ~= '*' and (v or '') ~= ARGV[1] then return false end
local out = {v or ''}
for _, x in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = x end
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[2] == '1' then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return out`)

func (s *Store) lift(ctx context.Context, appid, expect string, forgetRefusal bool) (ended string, deferred []Deferred, ok bool, err error) {
	forget := "0"
	if forgetRefusal {
		forget = "1"
	}
	res, err := liftScript.Run(ctx, s.rdb, []string{s.key(appid), s.deferredKey(appid), s.refusalKey(appid)}, expect, forget, s.cache.Channel(), appid).StringSlice()
	if errors.Is(err, redis.Nil) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("lift pause of %s: %w", appid, err)
	}
	s.cache.Forget(appid)
	for i := 1; i+1 < len(res); i += 2 {
		deferred = append(deferred, Deferred{TaskID: res[i], Queue: res[i+1]})
	}
	return res[0], deferred, true, nil
}

// Resumed is what ending a pause did.
type Resumed struct {
	// Ended is the pause that ended, if one was in force.
	Ended *Pause
	// Kept is the pause left in force (a new ticket does not cure it).
	Kept *Pause
	// Started counts the waiting changes run at once.
	Started int
}

// Resume is an operator's: it ends whatever pause the platform is in,
// forgets the token API's last refusal, and runs the waiting changes now.
func (s *Store) Resume(ctx context.Context, inspector *asynq.Inspector, appid string) (Resumed, error) {
	v, deferred, _, err := s.lift(ctx, appid, "*", true)
	if err != nil {
		return Resumed{}, err
	}
	out := Resumed{Started: run(inspector, deferred)}
	if p, err := parse(v); err == nil && s.now().Before(p.Until) {
		out.Ended = &p
	}
	return out, nil
}

// ResumeForTicket follows a new ticket: it ends the platform's pause only
// if a ticket cures it (no ticket, a refused ticket) and then runs the
// waiting changes. Any other pause (quota, frequency, IP whitelist, wrong
// secret) stays until its time or an operator's resume.
func (s *Store) ResumeForTicket(ctx context.Context, inspector *asynq.Inspector, appid string) (Resumed, error) {
	for i := 0; i < 10; i++ {
		p, raw, paused, err := s.get(ctx, appid)
		if err != nil || !paused {
			return Resumed{}, err
		}
		if !p.Kind.EndsWithTicket() {
			return Resumed{Kept: &p}, nil
		}
		_, deferred, ok, err := s.lift(ctx, appid, raw, false)
		if err != nil {
			return Resumed{}, err
		}
		if ok {
			return Resumed{Ended: &p, Started: run(inspector, deferred)}, nil
		}
		// The pause changed meanwhile: look again.
	}
	return Resumed{}, fmt.Errorf("resume %s after a new ticket: its pause keeps changing", appid)
}

// runAgainAfter: a change found running when its pause ended is being
// deferred at that moment; it is run again once asynq has put it back.
var runAgainAfter = 1500 * time.Millisecond

// alreadyPending: asynq's answer for a task that is ready to run already
// (it has no error value for it, only this message).
func alreadyPending(err error) bool {
	return err != nil && strings.Contains(err.Error(), "already in pending state")
}

func run(inspector *asynq.Inspector, deferred []Deferred) int {
	n := 0
	var running []Deferred
	for _, d := range deferred {
		switch err := inspector.RunTask(d.Queue, d.TaskID); {
		case err == nil, alreadyPending(err):
			n++
		case !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound):
			// Running: its handler may be deferring it right now, after it
			// read the pause, so it would wait out the whole pause.
			running = append(running, d)
		}
		// Not found: it ran and finished meanwhile.
	}
	if len(running) > 0 {
		time.Sleep(runAgainAfter)
		for _, d := range running {
			if err := inspector.RunTask(d.Queue, d.TaskID); err == nil || alreadyPending(err) {
				n++
			}
		}
	}
	return n
}
