package tasks

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/internal/limit"
)

// A rollout's per-platform statuses and their counts live next to the
// records, and every record write of a rollout change moves them in the
// same transaction, so counts stay exact under retries, re-deliveries and
// concurrent workers: a platform is counted once, in its latest status, and
// once final it stays so until the rollout is retried.

// RolloutKey is the hash holding a rollout's definition and status.
func RolloutKey(prefix, id string) string { return prefix + "rollout:" + id }

// RolloutStateKey maps each platform of a rollout to its status.
func RolloutStateKey(prefix, id string) string { return prefix + "rollout:" + id + ":state" }

// RolloutCountsKey counts the platforms of a rollout per status.
func RolloutCountsKey(prefix, id string) string { return prefix + "rollout:" + id + ":counts" }

// transitionLua moves one platform of a rollout to a status: a platform
// counts once, in its latest status; a final status stays until a retry; a
// running rollout whose platforms are all final becomes done.
const transitionLua = rolloutKeysLua + `
local function transition(state, counts, rollout, appid, status, now, attempt)
  -- A change speaks for its platform only in the attempt that owns the
  -- platform (the last retry that re-queued it). A platform no retry of
  -- this version re-queued has no owner: any attempt speaks for it (attempt
  -- 0, or the attempt of a retry by a version that kept no owners, which
  -- would otherwise never finish).
  local owner = redis.call('HGET', rollout .. ':owner', appid)
  if attempt and attempt ~= '' and owner and tonumber(owner) ~= tonumber(attempt) then return 0 end
  local old = redis.call('HGET', state, appid)
  if old == status then return 0 end
  if old == 'succeeded' or old == 'partial' or old == 'failed' or old == 'canceled' then return 0 end
  redis.call('HSET', state, appid, status)
  if old then redis.call('HINCRBY', counts, old, -1) end
  redis.call('HINCRBY', counts, status, 1)
  local total = tonumber(redis.call('HGET', rollout, 'total') or '0')
  local fin = 0
  for _, s in ipairs({'succeeded', 'partial', 'failed', 'canceled'}) do
    fin = fin + tonumber(redis.call('HGET', counts, s) or '0')
  end
  if total > 0 and fin >= total and redis.call('HEXISTS', rollout, 'finished_at') == 0 then
    if redis.call('HGET', rollout, 'status') == 'running' then redis.call('HSET', rollout, 'status', 'done') end
    redis.call('HSET', rollout, 'finished_at', now)
    -- A finished rollout expires (WXDOMAIN_ROLLOUT_TTL), with every key
    -- of every attempt; a retry makes them persist again.
    local ttl = tonumber(redis.call('HGET', rollout, 'ttl_ms') or '0')
    if ttl > 0 then
      for _, k in ipairs(rolloutKeys(rollout, state, counts)) do redis.call('PEXPIRE', k, ttl) end
    end
  end
  return 1
end
`

// rolloutKeysLua lists a rollout's keys, its attempts' platform lists and
// fan-out cursors included (named from the rollout's key, as
// RolloutKeys does).
const rolloutKeysLua = `
local function rolloutKeys(rollout, state, counts)
  local keys = {rollout, state, counts, rollout .. ':owner', rollout .. ':preflight'}
  local attempt = tonumber(redis.call('HGET', rollout, 'attempt') or '0')
  for a = 0, attempt do
    keys[#keys + 1] = rollout .. ':platforms:' .. a
    keys[#keys + 1] = rollout .. ':fanned:' .. a
  end
  return keys
end
`

// RolloutListKey lists the platforms of a rollout's attempt, in fan-out order.
func RolloutListKey(prefix, id string, attempt int) string {
	return RolloutKey(prefix, id) + ":platforms:" + strconv.Itoa(attempt)
}

// RolloutCursorKey counts the platforms of an attempt already fanned out.
func RolloutCursorKey(prefix, id string, attempt int) string {
	return RolloutKey(prefix, id) + ":fanned:" + strconv.Itoa(attempt)
}

// RolloutOwnerKey maps each platform a retry re-queued to the attempt
// that owns it now; a platform not in it belongs to any attempt (attempt 0,
// or a retry by a version before owners).
func RolloutOwnerKey(prefix, id string) string { return RolloutKey(prefix, id) + ":owner" }

// RolloutPreflightKey holds the platforms of a rollout whose change
// found a domain failing its preflight check (in its latest record).
func RolloutPreflightKey(prefix, id string) string { return RolloutKey(prefix, id) + ":preflight" }

// RolloutKeys lists every key of a rollout up to an attempt.
func RolloutKeys(prefix, id string, attempt int) []string {
	keys := []string{RolloutKey(prefix, id), RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id), RolloutOwnerKey(prefix, id), RolloutPreflightKey(prefix, id)}
	for a := 0; a <= attempt; a++ {
		keys = append(keys, RolloutListKey(prefix, id, a), RolloutCursorKey(prefix, id, a))
	}
	return keys
}

// rolloutTransition: KEYS state, counts, rollout; ARGV appid, status, now,
// attempt ("" for any).
var rolloutTransition = redis.NewScript(transitionLua + `
return transition(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])`)

// casRecord writes a record only if it is still what was read, and moves
// its rollout platform in the same step. KEYS record, state, counts,
// rollout; ARGV old JSON, new JSON, TTL ms, appid ("" outside rollouts),
// status, now, attempt, rollout status required, preflight failed ("1"
// or "0"): a platform that moved is counted among the rollout's
// preflight failures as its latest record says; then the platform's
// lists (KEYS[5]) when ARGV[10] holds them; ARGV[11] "1": a missing
// record is taken to be the old JSON; ARGV[12] "1": refused (-3) while
// the rollout is canceled or a later attempt owns the platform; ARGV[13]
// on: the limiter's feedback of the change's call (limit.FeedbackLua),
// given in the same step as the write, KEYS[6..9] and ARGV[13..19] its
// keys and arguments. Returns 1 when written; the record as it stands when it is not the old
// JSON; -1 when the rollout is not in the status required; -2 when the
// record is missing; -3 when refused by ARGV[12].
var casRecord = redis.NewScript(transitionLua + limit.FeedbackLua + `
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  if cur then return cur end
  if ARGV[11] ~= '1' then return -2 end
end
if ARGV[8] and ARGV[8] ~= '' and redis.call('HGET', KEYS[4], 'status') ~= ARGV[8] then return -1 end
if ARGV[12] == '1' then
  if redis.call('HGET', KEYS[4], 'status') == 'canceled' then return -3 end
  local owner = redis.call('HGET', KEYS[4] .. ':owner', ARGV[4])
  if owner and ARGV[7] ~= '' and tonumber(owner) > tonumber(ARGV[7]) then return -3 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[10] and ARGV[10] ~= '' then redis.call('SET', KEYS[5], ARGV[10], 'PX', ARGV[3]) end
if ARGV[4] ~= '' and transition(KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6], ARGV[7]) == 1 then
  if ARGV[9] == '1' then
    redis.call('SADD', KEYS[4] .. ':preflight', ARGV[4])
    -- The move may have finished the rollout and begun its expiry.
    local ttl = redis.call('PTTL', KEYS[4])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[4] .. ':preflight', ttl) end
  else
    redis.call('SREM', KEYS[4] .. ':preflight', ARGV[4])
  end
end
if ARGV[13] and ARGV[13] ~= '' then
  pacingFeedback(KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19])
end
return 1`)

// MoveRolloutPlatform records a platform's status in a rollout without a
// task record (a platform canceled before its change was queued).
func MoveRolloutPlatform(ctx context.Context, rdb redis.UniversalClient, prefix, id string, attempt int, appid string, status Status) error {
	err := rolloutTransition.Run(ctx, rdb, []string{RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id), RolloutKey(prefix, id)},
		appid, string(status), time.Now().UTC().Format(time.RFC3339Nano), strconv.Itoa(attempt)).Err()
	if err != nil {
		return fmt.Errorf("record rollout %s platform %s: %w", id, appid, err)
	}
	return nil
}

// rolloutMoveUnqueued: KEYS state, counts, rollout; ARGV status, now, attempt, then
// pairs of appid and the key of its change's record in this attempt. A
// platform whose record exists is left alone and returned.
var rolloutMoveUnqueued = redis.NewScript(transitionLua + `
local have = {}
for i = 4, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[i + 1]) == 0 then
    transition(KEYS[1], KEYS[2], KEYS[3], ARGV[i], ARGV[1], ARGV[2], ARGV[3])
  else
    have[#have + 1] = ARGV[i]
  end
end
return have`)

// MoveUnqueuedRolloutPlatforms records a status (canceled, failed) for the
// platforms of an attempt that have no change record, in one step per
// batch, and returns those that have one: their change was queued, and
// its record decides.
func MoveUnqueuedRolloutPlatforms(ctx context.Context, rdb redis.UniversalClient, prefix, id string, attempt int, appids []string, status Status) ([]string, error) {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	var have []string
	for len(appids) > 0 {
		batch := appids[:min(len(appids), 500)]
		appids = appids[len(batch):]
		args := []any{string(status), now, strconv.Itoa(attempt)}
		for _, a := range batch {
			args = append(args, a, prefix+"record:"+RolloutTaskID(id, attempt, a))
		}
		keys := []string{RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id), RolloutKey(prefix, id)}
		got, err := rolloutMoveUnqueued.Run(ctx, rdb, keys, args...).StringSlice()
		if err != nil {
			return nil, fmt.Errorf("record rollout %s platforms: %w", id, err)
		}
		have = append(have, got...)
	}
	return have, nil
}

// rolloutRetry starts a new attempt over a rollout's failed and canceled
// platforms, in one step: KEYS rollout, state, counts. Returns {n, attempt}:
// n platforms reset to queued for the attempt; 0 when none failed; -1 when
// the attempt is still fanning out (resume it); -2 when there is no rollout.
var rolloutRetry = redis.NewScript(rolloutKeysLua + `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-2, 0} end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if st == 'fanning_out' then return {-1, attempt} end
local again = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i + 1] == 'failed' or all[i + 1] == 'canceled' then again[#again + 1] = all[i] end
end
if #again == 0 then return {0, attempt} end
table.sort(again)
attempt = attempt + 1
for _, a in ipairs(again) do
  local old = redis.call('HGET', KEYS[2], a)
  redis.call('HSET', KEYS[2], a, 'queued')
  redis.call('HSET', KEYS[1] .. ':owner', a, attempt)
  redis.call('SREM', KEYS[1] .. ':preflight', a)
  redis.call('HINCRBY', KEYS[3], old, -1)
  redis.call('HINCRBY', KEYS[3], 'queued', 1)
end
local list = KEYS[1] .. ':platforms:' .. attempt
for i = 1, #again, 1000 do
  redis.call('RPUSH', list, unpack(again, i, math.min(i + 999, #again)))
end
redis.call('SET', KEYS[1] .. ':fanned:' .. attempt, 0)
redis.call('HSET', KEYS[1], 'attempt', attempt, 'status', 'fanning_out')
redis.call('HDEL', KEYS[1], 'finished_at', 'error')
-- Running again: nothing of it expires.
for _, k in ipairs(rolloutKeys(KEYS[1], KEYS[2], KEYS[3])) do redis.call('PERSIST', k) end
return {#again, attempt}`)

// RetryOutcome is what RetryRollout did.
type RetryOutcome int

// The outcomes of RetryRollout other than a count of platforms.
const (
	RetryNothing  RetryOutcome = 0  // no platform failed or was canceled
	RetryUnderWay RetryOutcome = -1 // the attempt is still fanning out
	RetryNoSuch   RetryOutcome = -2 // no such rollout
)

// RetryRollout starts a new attempt of a rollout over its failed and
// canceled platforms: their state, the counts, the attempt's platform list
// and the rollout's status move in one step, so a failure part-way leaves
// nothing half done. It returns how many platforms the attempt covers (or
// a RetryOutcome) and the rollout's attempt.
func RetryRollout(ctx context.Context, rdb redis.UniversalClient, prefix, id string) (RetryOutcome, int, error) {
	res, err := rolloutRetry.Run(ctx, rdb, []string{RolloutKey(prefix, id), RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id)}).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("retry rollout %s: %w", id, err)
	}
	return RetryOutcome(res[0]), int(res[1]), nil
}

// RolloutStatus reads a rollout's status ("" if unknown).
func (s *Store) RolloutStatus(ctx context.Context, id string) (string, error) {
	st, _, err := s.RolloutState(ctx, id)
	return st, err
}

// RolloutState reads a rollout's status ("" if unknown) and current attempt.
func (s *Store) RolloutState(ctx context.Context, id string) (string, int, error) {
	v, err := s.rdb.HMGet(ctx, RolloutKey(s.prefix, id), "status", "attempt").Result()
	if err != nil {
		return "", 0, fmt.Errorf("read rollout %s: %w", id, err)
	}
	st, _ := v[0].(string)
	a, _ := v[1].(string)
	attempt, _ := strconv.Atoi(a)
	return st, attempt, nil
}

// RolloutPlatform reads a rollout's status ("" if unknown) and the attempt
// that owns a platform: a change of another attempt no longer runs.
func (s *Store) RolloutPlatform(ctx context.Context, id, appid string) (string, int, error) {
	var st, owner *redis.StringCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		st = p.HGet(ctx, RolloutKey(s.prefix, id), "status")
		owner = p.HGet(ctx, RolloutOwnerKey(s.prefix, id), appid)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", 0, fmt.Errorf("read rollout %s: %w", id, err)
	}
	attempt, _ := strconv.Atoi(owner.Val())
	return st.Val(), attempt, nil
}
