package tasks

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
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
local function transition(state, counts, rollout, appid, status, now)
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
  local keys = {rollout, state, counts}
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

// RolloutKeys lists every key of a rollout up to an attempt.
func RolloutKeys(prefix, id string, attempt int) []string {
	keys := []string{RolloutKey(prefix, id), RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id)}
	for a := 0; a <= attempt; a++ {
		keys = append(keys, RolloutListKey(prefix, id, a), RolloutCursorKey(prefix, id, a))
	}
	return keys
}

// rolloutTransition: KEYS state, counts, rollout; ARGV appid, status, now.
var rolloutTransition = redis.NewScript(transitionLua + `
return transition(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])`)

// casRecord writes a record only if it is still what was read, and moves
// its rollout platform in the same step. KEYS record, state, counts,
// rollout; ARGV old JSON, new JSON, TTL ms, appid ("" outside rollouts),
// status, now.
var casRecord = redis.NewScript(transitionLua + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] ~= '' then transition(KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6]) end
return 1`)

// MoveRolloutPlatform records a platform's status in a rollout without a
// task record (a platform canceled before its change was queued).
func MoveRolloutPlatform(ctx context.Context, rdb redis.UniversalClient, prefix, id, appid string, status Status) error {
	err := rolloutTransition.Run(ctx, rdb, []string{RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id), RolloutKey(prefix, id)},
		appid, string(status), time.Now().UTC().Format(time.RFC3339Nano)).Err()
	if err != nil {
		return fmt.Errorf("record rollout %s platform %s: %w", id, appid, err)
	}
	return nil
}

// rolloutReset: KEYS state, counts; ARGV appid. A failed or canceled
// platform goes back to queued for a retry.
var rolloutReset = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old ~= 'failed' and old ~= 'canceled' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'queued')
redis.call('HINCRBY', KEYS[2], old, -1)
redis.call('HINCRBY', KEYS[2], 'queued', 1)
return 1`)

// ResetRolloutPlatform puts a failed or canceled platform back to queued.
func ResetRolloutPlatform(ctx context.Context, rdb redis.UniversalClient, prefix, id, appid string) error {
	if err := rolloutReset.Run(ctx, rdb, []string{RolloutStateKey(prefix, id), RolloutCountsKey(prefix, id)}, appid).Err(); err != nil {
		return fmt.Errorf("reset rollout %s platform %s: %w", id, appid, err)
	}
	return nil
}

// RolloutStatus reads a rollout's status ("" if unknown).
func (s *Store) RolloutStatus(ctx context.Context, id string) (string, error) {
	st, err := s.rdb.HGet(ctx, RolloutKey(s.prefix, id), "status").Result()
	if err == redis.Nil {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read rollout %s: %w", id, err)
	}
	return st, nil
}
