-- Claims the best claimable task of a queue for a worker, under a lease.
--
-- KEYS[1]  the queue's task index    (pb:{queue}:tasks)
-- KEYS[2]  the queue's leases        (pb:{queue}:leases, zset: task id -> lease end ms)
-- KEYS[3]  the queue's status events (pb:{queue}:taskevents)
-- Derived keys (see lib/tasks.lua): task hashes and ready sets.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  worker
-- ARGV[3]  lease in ms
-- ARGV[4..] the worker's capabilities (tasks needing none are always claimable)
--
-- First every lease that ran out puts its task back in its ready set. Then the
-- lowest ready member over the worker's ready sets (highest priority, then
-- first posted) is claimed: a new fencing token, the lease, an event.
-- Returns the claimed task's hash as a flat field/value list, or {} when none.
local prefix, worker, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = clock_ms()

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, task_id in ipairs(expired) do
  local key = prefix .. 'task:' .. task_id
  local f = hash_fields(key)
  redis.call('ZREM', KEYS[2], task_id)
  if f['st'] == 'claimed' and tonumber(f['lu']) <= now then
    redis.call('HSET', key, 'st', 'queued', 'w', '', 'ua', now)
    redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
    event(KEYS[3], task_id, 'claimed', 'queued', 'server', f['f'], 'lease expired')
  end
end

local best, best_ready = nil, nil
local sets = {''}
for j = 4, #ARGV do
  sets[#sets + 1] = ARGV[j]
end
for _, capability in ipairs(sets) do
  local ready = prefix .. 'ready:' .. capability
  local head = redis.call('ZRANGE', ready, 0, 0)
  if #head == 1 and (best == nil or head[1] < best) then
    best, best_ready = head[1], ready
  end
end
if best == nil then
  return {}
end
redis.call('ZREM', best_ready, best)
local task_id = string.match(best, '^%d+:%d+:(.*)$')
local key = prefix .. 'task:' .. task_id
local fence = redis.call('HINCRBY', key, 'f', 1)
redis.call('HINCRBY', key, 'claims', 1)
local lease_until = now + lease_ms
redis.call('HSET', key, 'st', 'claimed', 'w', worker, 'lu', lease_until, 'lease', lease_ms, 'ua', now)
redis.call('ZADD', KEYS[2], lease_until, task_id)
keep_until(KEYS[2], tonumber(redis.call('HGET', key, 'x')))
event(KEYS[3], task_id, 'queued', 'claimed', worker, fence, '')
return redis.call('HGETALL', key)
