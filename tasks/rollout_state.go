package tasks

import (
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

// rolloutTransition: KEYS state, counts, rollout; ARGV appid, status, now.
// A rollout running whose platforms are all final becomes done.
var rolloutTransition = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == ARGV[2] then return 0 end
if old == 'succeeded' or old == 'partial' or old == 'failed' or old == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then redis.call('HINCRBY', KEYS[2], old, -1) end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
local fin = 0
for _, s in ipairs({'succeeded', 'partial', 'failed', 'canceled'}) do
  fin = fin + tonumber(redis.call('HGET', KEYS[2], s) or '0')
end
if total > 0 and fin >= total and redis.call('HEXISTS', KEYS[3], 'finished_at') == 0 then
  if redis.call('HGET', KEYS[3], 'status') == 'running' then redis.call('HSET', KEYS[3], 'status', 'done') end
  redis.call('HSET', KEYS[3], 'finished_at', ARGV[3])
end
return 1`)
