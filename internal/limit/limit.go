// Package limit paces calls to WeChat per platform, and optionally across
// all platforms, for the whole fleet: every worker process reserves its
// call's moment in Redis.
//
// It is GCRA (the algorithm of go-redis/redis_rate) with reservations:
// redis_rate only answers "allowed now, or retry after", so tasks waiting
// for the same platform would poll and stampede on every free slot; here a
// task that will be allowed within the caller's patience takes its slot at
// once and sleeps until it, and a task that would wait longer takes nothing
// and is told when capacity frees up. Clocks come from Redis (TIME), so
// worker hosts need not agree on the time.
//
// A platform's effective rate also adapts to "system busy" answers
// (multiplicative decrease on a burst of -1, additive increase on success),
// shared by the fleet so that one process's lesson slows them all.
package limit

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Rate is a number of calls per second with a burst. PerSecond 0 means
// unlimited.
type Rate struct {
	PerSecond float64
	Burst     int
}

func (r Rate) intervalMicros() float64 {
	if r.PerSecond <= 0 {
		return 0
	}
	return 1e6 / r.PerSecond
}

func (r Rate) burst() int {
	return max(r.Burst, 1)
}

// Pacing tunes the reaction to "system busy".
type Pacing struct {
	// Decrease multiplies the effective rate on a burst of -1; default 0.7.
	Decrease float64
	// Increase is added to the rate factor (1 = the configured rate) on each
	// success; default 0.05.
	Increase float64
	// MinFactor bounds the decrease; default 0.1.
	MinFactor float64
	// A burst is at least BurstCount busy answers making at least
	// BurstRatio of the calls within one second; defaults 3 and 0.5.
	BurstCount int
	BurstRatio float64
}

func (p Pacing) withDefaults() Pacing {
	if p.Decrease <= 0 || p.Decrease >= 1 {
		p.Decrease = 0.7
	}
	if p.Increase <= 0 {
		p.Increase = 0.05
	}
	if p.MinFactor <= 0 || p.MinFactor > 1 {
		p.MinFactor = 0.1
	}
	if p.BurstCount <= 0 {
		p.BurstCount = 3
	}
	if p.BurstRatio <= 0 {
		p.BurstRatio = 0.5
	}
	return p
}

// Limiter reserves call slots in Redis.
type Limiter struct {
	rdb    redis.UniversalClient
	prefix string
	global Rate
	pacing Pacing
}

// New returns a limiter; global (PerSecond 0 for none) applies across all
// platforms on top of each platform's own rate.
func New(rdb redis.UniversalClient, prefix string, global Rate, pacing Pacing) *Limiter {
	return &Limiter{rdb: rdb, prefix: prefix, global: global, pacing: pacing.withDefaults()}
}

func (l *Limiter) tatKey(appid string) string    { return l.prefix + "limit:" + appid }
func (l *Limiter) factorKey(appid string) string { return l.prefix + "limit_factor:" + appid }
func (l *Limiter) windowKey(appid string) string { return l.prefix + "limit_busy:" + appid }

// No appid can name the global lane: appids are "wx" and 16 hex digits
// wherever they come in (tasks.ValidAppID). The key keeps its name, so that
// workers of different versions share one global limit during an upgrade.
func (l *Limiter) globalKey() string { return l.prefix + "limit:_global" }

// reserveScript: KEYS platform TAT, global TAT, platform factor.
// ARGV platform interval µs, platform burst, global interval µs, global
// burst, max wait µs. Returns {reserved 0|1, wait µs}.
var reserveScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local factor = tonumber(redis.call('GET', KEYS[3]) or '1')
local maxwait = tonumber(ARGV[5])
local s = now
local lanes = {}
local function lane(key, interval, burst)
  if interval <= 0 then return end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local allow = tat - (burst - 1) * interval
  if allow > s then s = allow end
  lanes[#lanes + 1] = {key, tat, interval}
end
lane(KEYS[1], tonumber(ARGV[1]) / factor, tonumber(ARGV[2]))
lane(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
local wait = s - now
if wait > maxwait then return {0, math.floor(wait)} end
for _, l in ipairs(lanes) do
  local tat = math.max(l[2], s) + l[3]
  redis.call('SET', l[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {1, math.floor(wait)}
`)

// Reservation is the answer to Reserve.
type Reservation struct {
	// OK: a slot is reserved; the call may go out after Wait.
	// Not OK: nothing is reserved; capacity frees up in about Wait.
	OK   bool
	Wait time.Duration
}

// Reserve asks for a call slot for the platform within maxWait.
func (l *Limiter) Reserve(ctx context.Context, appid string, r Rate, maxWait time.Duration) (Reservation, error) {
	if r.PerSecond <= 0 && l.global.PerSecond <= 0 {
		return Reservation{OK: true}, nil
	}
	res, err := reserveScript.Run(ctx, l.rdb,
		[]string{l.tatKey(appid), l.globalKey(), l.factorKey(appid)},
		r.intervalMicros(), r.burst(), l.global.intervalMicros(), l.global.burst(), maxWait.Microseconds(),
	).Int64Slice()
	if err != nil {
		return Reservation{}, fmt.Errorf("reserve a call slot for %s: %w", appid, err)
	}
	return Reservation{OK: res[0] == 1, Wait: time.Duration(res[1]) * time.Microsecond}, nil
}

// feedbackScript: KEYS factor, busy window. ARGV busy 0|1, decrease,
// increase, min factor, burst count, burst ratio. Returns the factor ×1e6.
var feedbackScript = redis.NewScript(`
local factor = tonumber(redis.call('GET', KEYS[1]) or '1')
if ARGV[1] == '1' then
  local calls = redis.call('HINCRBY', KEYS[2], 'calls', 1)
  local busy = redis.call('HINCRBY', KEYS[2], 'busy', 1)
  if calls == 1 then redis.call('PEXPIRE', KEYS[2], 1000) end
  if busy >= tonumber(ARGV[5]) and busy >= calls * tonumber(ARGV[6]) and redis.call('HSETNX', KEYS[2], 'decreased', 1) == 1 then
    factor = math.max(tonumber(ARGV[4]), factor * tonumber(ARGV[2]))
    redis.call('SET', KEYS[1], tostring(factor), 'EX', 600)
  end
else
  if redis.call('HINCRBY', KEYS[2], 'calls', 1) == 1 then redis.call('PEXPIRE', KEYS[2], 1000) end
  if factor < 1 then
    factor = math.min(1, factor + tonumber(ARGV[3]))
    if factor >= 1 then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], tostring(factor), 'EX', 600) end
  end
end
return math.floor(factor * 1000000)
`)

// Feedback tells the limiter how a call went: busy for errcode -1.
func (l *Limiter) Feedback(ctx context.Context, appid string, busy bool) error {
	b := "0"
	if busy {
		b = "1"
	}
	p := l.pacing
	err := feedbackScript.Run(ctx, l.rdb, []string{l.factorKey(appid), l.windowKey(appid)},
		b, p.Decrease, p.Increase, p.MinFactor, p.BurstCount, p.BurstRatio).Err()
	if err != nil {
		return fmt.Errorf("record pacing feedback for %s: %w", appid, err)
	}
	return nil
}

// Factor is the platform's current share of its configured rate (1 = full).
func (l *Limiter) Factor(ctx context.Context, appid string) (float64, error) {
	v, err := l.rdb.Get(ctx, l.factorKey(appid)).Result()
	if err == redis.Nil {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read pacing of %s: %w", appid, err)
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) {
		return 1, nil
	}
	return f, nil
}
