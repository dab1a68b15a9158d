#!lua
-- Claims the best claimable task of a queue for a worker, under a lease.
--
-- The shebang (no flags) makes Redis refuse the whole script up front when it
-- is out of memory: without it the first write (ZREM, which Redis does not
-- check for memory) lets the rest run and the claim is made, then the server's
-- "claimed" hop is refused: the worker hears RESOURCE_EXHAUSTED for a task
-- leased to it, whose lease then runs out as a failed attempt.
--
-- KEYS[1]  the queue's task index    (pb:{queue}:tasks)
-- KEYS[2]  the queue's leases        (pb:{queue}:leases, zset: task id -> lease end ms)
-- KEYS[3]  the queue's status events (pb:{queue}:taskevents)
-- KEYS[4]  the queue's carcel        (pb:{queue}:carcel)
-- KEYS[5]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/tasks.lua): task hashes, ready sets, custody hops, and
-- the claim request record <prefix>claimreq:<request id>.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  worker
-- ARGV[3]  lease in ms
-- ARGV[4]  the claim's request id ("" for none): a claim run again with the
--          same id (a retry after a lost reply) returns the task it claimed
--          first, while that claim holds, instead of claiming another
-- ARGV[5]  carcel retention ms
-- ARGV[6..] the worker's capabilities (tasks needing none are always claimable)
--
-- First every lease that ran out counts a failed attempt (lib/tasks.lua
-- expire_leases): its task goes back to its ready set, or to the carcel after
-- its last attempt. Then the lowest ready member over the worker's ready sets
-- (highest priority, then first posted) is claimed: a new fencing token, the
-- lease, an event.
-- Returns {outcome, the claimed task's hash as a flat field/value list ({} when
-- none), ids of tasks whose "carceled" hop is pending (lib/tasks.lua)}; outcome is
-- "new", "again" (this request's claim, made before) or "none", or
-- {"taken", worker} when the request id names another worker's claim.
local prefix, worker, lease_ms, request_id = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = clock_ms()
local request_key = prefix .. 'claimreq:' .. request_id

if request_id ~= '' then
  local made = hash_fields(request_key)
  if made['t'] then
    if made['w'] ~= worker then
      return {'taken', made['w']}
    end
    local key = prefix .. 'task:' .. made['t']
    local f = redis.call('HMGET', key, 'st', 'f', 'w')
    if f[1] == 'claimed' and f[2] == made['f'] and f[3] == worker then
      return {'again', redis.call('HGETALL', key), pending_carcel_hops(prefix)}
    end
    -- That claim no longer holds (its lease ran out, or the worker settled
    -- it): this is a new claim under the same id.
  end
end

expire_leases(prefix, KEYS[2], KEYS[3], KEYS[4], now, tonumber(ARGV[5]))
local carceled = pending_carcel_hops(prefix)

local best, best_ready = nil, nil
local sets = {''}
for j = 6, #ARGV do
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
  return {'none', {}, carceled}
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
if request_id ~= '' then
  redis.call('HSET', request_key, 't', task_id, 'f', fence, 'w', worker)
  redis.call('PEXPIRE', request_key, lease_ms)
end
return {'new', redis.call('HGETALL', key), carceled}
