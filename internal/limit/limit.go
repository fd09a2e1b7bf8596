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
	"sync/atomic"
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

func (l *Limiter) factorKey(appid string) string { return l.prefix + "limit_factor:" + appid }
func (l *Limiter) windowKey(appid string) string { return l.prefix + "limit_busy:" + appid }

// No appid can name the global lanes: appids are "wx" and 16 hex digits
// wherever they come in (tasks.ValidAppID). The global key keeps its name,
// so that workers of different versions share one limit during an upgrade.
func tatKey(prefix, appid string) string { return prefix + "limit:" + appid }
func globalKey(prefix string) string     { return prefix + "limit:_global" }
func bulkKey(prefix string) string       { return prefix + "limit:_global_bulk" }

// laneKeys are the keys of the three lanes a reservation may hold: the
// platform's, the global one, and the bulk line behind the global one;
// each a TAT and a ledger of who holds which slot.
func laneKeys(prefix, appid string) []string {
	p, g, b := tatKey(prefix, appid), globalKey(prefix), bulkKey(prefix)
	return []string{p, p + ":slots", g, g + ":slots", b, b + ":slots"}
}

// The lanes are GCRA (a theoretical arrival time, TAT, per lane) with a
// ledger beside each TAT: a sorted set of the slots reserved, by holder.
// The ledger lets a task that comes back find its slot again on Redis's
// clock (hosts need not agree on the time), and lets a canceled or paused
// change give its slot back, so that later changes do not wait behind
// ghosts. Bulk work takes real slots only a little ahead (the horizon);
// beyond, it waits in the bulk line, holding neither a platform nor a
// global slot, so that a single change never waits behind bulk work for
// more than the horizon, on its platform or across all of them.
const laneLua = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function tat(key)
  local v = tonumber(redis.call('GET', key) or '0')
  if v < now then v = now end
  return v
end
local function allow(key, iv, burst)
  if iv <= 0 then return now end
  return tat(key) - (burst - 1) * iv
end
local function keep(until_)
  return math.max(1000, math.ceil((until_ - now) / 1000) + 60000)
end
local function take(key, ledger, iv, s, holder)
  if iv <= 0 then return end
  local nt = math.max(tat(key), s) + iv
  local px = keep(nt)
  redis.call('SET', key, string.format('%.0f', nt), 'PX', px)
  redis.call('SET', key .. ':iv', string.format('%.0f', iv), 'PX', px)
  redis.call('ZADD', ledger, string.format('%.0f', s), holder)
  redis.call('PEXPIRE', ledger, px)
end
-- give_back removes holders from a lane's ledger and brings its TAT back
-- to what the slots still in the ledger imply: replayed in order, each
-- slot s makes TAT max(TAT, s) + iv, that is the largest s + m * iv over
-- the slots, m counting from the last one (the last 64 are enough: no
-- more slots than the burst share a moment). A TAT is never raised here.
local function give_back(key, ledger, holders)
  if redis.call('ZREM', ledger, unpack(holders)) == 0 then return 0 end
  local iv = tonumber(redis.call('GET', key .. ':iv') or '0')
  local floor = now
  local top = redis.call('ZREVRANGE', ledger, 0, 63, 'WITHSCORES')
  local m = 0
  for i = 2, #top, 2 do
    m = m + 1
    floor = math.max(floor, tonumber(top[i]) + m * iv)
  end
  local cur = tonumber(redis.call('GET', key) or '0')
  if cur > floor then
    redis.call('SET', key, string.format('%.0f', floor), 'PX', keep(floor))
  end
  return 1
end
`

// reserveScript: KEYS the six lane keys, the platform factor. ARGV
// platform interval µs (before pacing), platform burst, global interval
// µs (0: none), global burst, max ahead µs, holder, bulk 0|1, horizon µs,
// tolerance µs, name of an anonymous holder. Returns {kind, wait µs}:
// kind 1 a slot (call after wait, never negative), 2 bulk work waiting
// its turn (come back after wait), 0 nothing reserved (capacity frees up
// in about wait).
var reserveScript = redis.NewScript(laneLua + `
local factor = tonumber(redis.call('GET', KEYS[7]) or '1')
local piv = tonumber(ARGV[1])
if piv > 0 then piv = piv / factor end
local pburst, giv, gburst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local maxahead, holder, bulk = tonumber(ARGV[5]), ARGV[6], ARGV[7] == '1'
local horizon, tol = tonumber(ARGV[8]), tonumber(ARGV[9])
-- A slot is the holder's a little past its time, at most a quarter of the
-- lane's interval, so that a late call cannot bunch with the next one. A
-- turn in the bulk line is kept a minute past its time, for a task that
-- comes back late.
local function ltol(iv)
  if iv > 0 then return math.min(tol, iv / 4) end
  return tol
end
local P = {KEYS[1], KEYS[2], piv, pburst, ltol(piv)}
local G = {KEYS[3], KEYS[4], giv, gburst, ltol(giv)}
local B = {KEYS[5], KEYS[6], giv, gburst, 60000000}
local lanes = {P, G, B}
-- Slots long past are forgotten.
for _, l in ipairs(lanes) do
  redis.call('ZREMRANGEBYSCORE', l[2], '-inf', string.format('%.0f', now - math.max(l[5], l[3] * l[4]) - 1))
end
local function free(l) return math.max(now, allow(l[1], l[3], l[4])) end
local function grab(l, s, h) take(l[1], l[2], l[3], s, h) end
-- place finds a new place: a platform and a global slot together; for
-- bulk work further ahead than the horizon, the platform's slot alone if
-- the platform's own backlog is the longer wait (its global slot is taken
-- when it comes back), else a turn in the bulk line.
local function place(h)
  local sp = free(P)
  local s = sp
  if giv > 0 then s = math.max(s, free(G)) end
  if s - now > maxahead then return {0, s - now} end
  if h == '' then h = ARGV[10] end
  if not bulk or giv <= 0 or s - now <= horizon then
    grab(P, s, h)
    grab(G, s, h)
    return {1, s - now}
  end
  if sp - now > horizon then
    grab(P, sp, h)
    return {2, sp - now}
  end
  local turn = math.max(s, free(B))
  if turn - now > maxahead then return {0, turn - now} end
  grab(B, turn, h)
  return {2, turn - now}
end
if holder == '' then return place(holder) end
local held = {}
for i, l in ipairs(lanes) do
  held[i] = tonumber(redis.call('ZSCORE', l[2], holder))
  -- One held longer past its time than the lane's tolerance is lost.
  if held[i] and held[i] < now - l[5] then held[i] = nil end
end
local hp, hg, hb = held[1], held[2], held[3]
if hb then
  -- In the bulk line: back early, it keeps its turn; at its turn it
  -- leaves the line (the turn is spent, as a call spends a slot) and
  -- finds its slots.
  if hb - now > horizon then return {2, hb - now} end
  redis.call('ZREM', B[2], holder)
  redis.call('ZADD', B[2], string.format('%.0f', hb), '~' .. holder)
  if hp then give_back(P[1], P[2], {holder}) end
  if hg then give_back(G[1], G[2], {holder}) end
  return place(holder)
end
if not (hp or hg) then return place(holder) end
-- A lane without a limit keeps no ledger: nothing to hold there.
if (piv <= 0 or hp) and (giv <= 0 or hg) then
  return {1, math.max(0, math.max(hp or now, hg or now) - now)}
end
if hp and not hg then
  -- A platform slot alone (bulk work behind its platform's backlog): the
  -- global slot is taken now, at the same moment, or the platform slot
  -- is given back and the change finds a new place.
  if bulk and hp - now > horizon then return {2, hp - now} end
  local s = math.max(hp, free(G))
  if s - now <= horizon and s <= hp + P[5] then
    grab(G, s, holder)
    return {1, s - now}
  end
  give_back(P[1], P[2], {holder})
  return place(holder)
end
if hg then give_back(G[1], G[2], {holder}) end
return place(holder)
`)

// releaseScript: KEYS the six lane keys; ARGV holders. Each lane's TAT
// falls back to what the slots still held imply, if that is earlier.
var releaseScript = redis.NewScript(laneLua + `
local released = 0
for i = 1, 5, 2 do
  released = released + give_back(KEYS[i], KEYS[i + 1], ARGV)
end
return released
`)

// Request asks for a call slot.
type Request struct {
	Platform string
	// Holder names who holds the slot, normally the task id: a task that
	// comes back finds its slot again, and Release gives it up. Empty: an
	// anonymous slot, for a call that goes out at once.
	Holder string
	Rate   Rate
	// MaxAhead: a slot further away than this is not reserved.
	MaxAhead time.Duration
	// Bulk work takes a real global slot at most Horizon ahead; beyond,
	// it waits in the bulk line, behind other bulk work, and takes its
	// global slot when it comes back.
	Bulk    bool
	Horizon time.Duration
	// Tolerance: a slot held this long in the past still belongs to its
	// holder (a task back a moment late); an older one is forgotten.
	Tolerance time.Duration
}

// Reservation is the answer to Reserve.
type Reservation struct {
	// OK: a slot is reserved; the call may go out after Wait.
	OK bool
	// Queued: bulk work waits its turn (in the bulk line, or holding its
	// platform's slot alone); it comes back after Wait and reserves again
	// (it then gets its slots).
	Queued bool
	// Wait, when neither: nothing is reserved; capacity frees up in about Wait.
	Wait time.Duration
}

var anonymous atomic.Uint64

// Reserve asks for a call slot for the platform. A holder that already
// has one gets it back, with the wait on Redis's clock.
func (l *Limiter) Reserve(ctx context.Context, req Request) (Reservation, error) {
	if req.Rate.PerSecond <= 0 && l.global.PerSecond <= 0 {
		return Reservation{OK: true}, nil
	}
	bulk := "0"
	if req.Bulk {
		bulk = "1"
	}
	anon := "~" + strconv.FormatUint(anonymous.Add(1), 36) + "." + strconv.FormatInt(time.Now().UnixNano(), 36)
	res, err := reserveScript.Run(ctx, l.rdb, append(laneKeys(l.prefix, req.Platform), l.factorKey(req.Platform)),
		req.Rate.intervalMicros(), req.Rate.burst(), l.global.intervalMicros(), l.global.burst(), req.MaxAhead.Microseconds(),
		req.Holder, bulk, req.Horizon.Microseconds(), req.Tolerance.Microseconds(), anon,
	).Int64Slice()
	if err != nil {
		return Reservation{}, fmt.Errorf("reserve a call slot for %s: %w", req.Platform, err)
	}
	return Reservation{OK: res[0] == 1, Queued: res[0] == 2, Wait: max(0, time.Duration(res[1])*time.Microsecond)}, nil
}

// Release gives up the slots holders have for a platform (a change
// canceled, paused or failed before its call): later changes take them.
func (l *Limiter) Release(ctx context.Context, appid string, holders ...string) error {
	return Release(ctx, l.rdb, l.prefix, appid, holders...)
}

// Release is Limiter.Release for callers without a limiter (a producer
// canceling a change).
func Release(ctx context.Context, rdb redis.UniversalClient, prefix, appid string, holders ...string) error {
	if len(holders) == 0 {
		return nil
	}
	args := make([]any, len(holders))
	for i, h := range holders {
		args[i] = h
	}
	if err := releaseScript.Run(ctx, rdb, laneKeys(prefix, appid), args...).Err(); err != nil {
		return fmt.Errorf("release the call slots of %s: %w", holders[0], err)
	}
	return nil
}

// FeedbackLua defines pacingFeedback(factor, busy window, platform
// ledger, global ledger keys; busy 0|1 (- for no answer), decrease,
// increase, min factor, burst count, burst ratio, holder), for scripts
// that tell the limiter how a call went in the same step as their own
// write (tasks' record script). It returns the factor ×1e6. The holder's
// slots are spent: they stay in the ledgers (later slots keep their
// distance) under another name, so that the holder cannot find them again.
const FeedbackLua = `
local function pacingFeedback(kfactor, kwindow, kledger, kglobal, busy, dec, inc, minf, bcount, bratio, holder)
  if holder ~= '' then
    for _, k in ipairs({kledger, kglobal}) do
      local s = redis.call('ZSCORE', k, holder)
      if s then
        redis.call('ZREM', k, holder)
        redis.call('ZADD', k, s, '~' .. holder)
      end
    end
  end
  local factor = tonumber(redis.call('GET', kfactor) or '1')
  if busy == '-' then
    -- No answer came back: no lesson about WeChat's pace.
  elseif busy == '1' then
    local calls = redis.call('HINCRBY', kwindow, 'calls', 1)
    local n = redis.call('HINCRBY', kwindow, 'busy', 1)
    if calls == 1 then redis.call('PEXPIRE', kwindow, 1000) end
    if n >= tonumber(bcount) and n >= calls * tonumber(bratio) and redis.call('HSETNX', kwindow, 'decreased', 1) == 1 then
      factor = math.max(tonumber(minf), factor * tonumber(dec))
      redis.call('SET', kfactor, tostring(factor), 'EX', 600)
    end
  else
    if redis.call('HINCRBY', kwindow, 'calls', 1) == 1 then redis.call('PEXPIRE', kwindow, 1000) end
    if factor < 1 then
      factor = math.min(1, factor + tonumber(inc))
      if factor >= 1 then redis.call('DEL', kfactor) else redis.call('SET', kfactor, tostring(factor), 'EX', 600) end
    end
  end
  return math.floor(factor * 1000000)
end
`

// feedbackScript: KEYS factor, busy window, platform ledger, global
// ledger; ARGV as pacingFeedback's after its keys.
var feedbackScript = redis.NewScript(FeedbackLua + `
return pacingFeedback(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
`)

// FeedbackArgs are the keys and arguments of a call's pacingFeedback.
type FeedbackArgs struct {
	Keys [4]string
	Args [7]any
}

// feedbackArgs is what Feedback and Answered hand to pacingFeedback.
func (l *Limiter) feedbackArgs(appid, holder string, o Outcome) FeedbackArgs {
	b := [...]string{Answered: "0", Busy: "1", NoAnswer: "-"}[o]
	p := l.pacing
	lanes := laneKeys(l.prefix, appid)
	return FeedbackArgs{
		Keys: [4]string{l.factorKey(appid), l.windowKey(appid), lanes[1], lanes[3]},
		Args: [7]any{b, p.Decrease, p.Increase, p.MinFactor, p.BurstCount, p.BurstRatio, holder},
	}
}

// Answered is the feedback of a call WeChat answered (not busy), for a
// script that gives it in its own step (see FeedbackLua) instead of
// Feedback.
func (l *Limiter) Answered(appid, holder string) FeedbackArgs {
	return l.feedbackArgs(appid, holder, Answered)
}

// Outcome is how a call went, for pacing.
type Outcome int

// The outcomes of a call.
const (
	// Answered: WeChat answered, not busy.
	Answered Outcome = iota
	// Busy: WeChat answered -1.
	Busy
	// NoAnswer: the call failed before an answer; no lesson about pace.
	NoAnswer
)

// Feedback tells the limiter how a call went, so that the platform's pace
// adapts, and spends the holder's slot: the holder cannot find it again.
func (l *Limiter) Feedback(ctx context.Context, appid, holder string, o Outcome) error {
	f := l.feedbackArgs(appid, holder, o)
	if err := feedbackScript.Run(ctx, l.rdb, f.Keys[:], f.Args[:]...).Err(); err != nil {
		return fmt.Errorf("record pacing feedback for %s: %w", appid, err)
	}
	return nil
}

// Factor is the platform's current share of its configured rate (1 = full).
// Factors reads the pacing factor of many platforms in one round trip
// (1 where none is kept: the platform runs at its rate).
func (l *Limiter) Factors(ctx context.Context, appids []string) (map[string]float64, error) {
	out := make(map[string]float64, len(appids))
	if len(appids) == 0 {
		return out, nil
	}
	keys := make([]string, len(appids))
	for i, a := range appids {
		keys[i] = l.factorKey(a)
	}
	vals, err := l.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("read pacing: %w", err)
	}
	for i, v := range vals {
		out[appids[i]] = 1
		if s, ok := v.(string); ok {
			if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(f) {
				out[appids[i]] = f
			}
		}
	}
	return out, nil
}

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
