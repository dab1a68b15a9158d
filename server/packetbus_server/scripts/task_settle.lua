-- Heartbeats, releases, completes or fails a claimed task, fenced by its token.
--
-- KEYS[1]  the queue's leases        (pb:{queue}:leases)
-- KEYS[2]  the queue's status events (pb:{queue}:taskevents)
-- KEYS[3]  the queue's carcel        (pb:{queue}:carcel, as a topic's carcel)
-- KEYS[4]  the task packet's custody hops (pb:{queue}:hops:<tracking id>)
-- Derived keys (see lib/tasks.lua): the task hash and ready set, its results.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  task id
-- ARGV[3]  kind: "heartbeat", "release", "complete", "fail" or "carcel" (the last failure)
-- ARGV[4]  fencing token
-- ARGV[5]  hops the packet has before this one's (unused by heartbeat)
-- ARGV[6]  the serialized, signed custody entry ("" for heartbeat, or when not signing)
-- ARGV[7]  its hash
-- ARGV[8]  heartbeat: lease ms (0: the claim's); release/fail/carcel: the reason
-- ARGV[9]  complete/fail/carcel: the serialized TaskResult to keep
-- ARGV[10] carcel retention ms
--
-- Returns {"ok", value} (heartbeat: the lease end ms; carcel: the carcel entry
-- id), {"gone"} (no such task), {"stale_fence", status, token} (not the
-- current holder, or its lease ran out), or {"stale", hop count, last hop
-- hash} (sign again). Checked in full before anything is written.
local prefix, task_id, kind, fence = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = prefix .. 'task:' .. task_id
local f = hash_fields(key)
if not f['st'] then
  return {'gone'}
end
local now = clock_ms()
if f['st'] ~= 'claimed' or f['f'] ~= fence or tonumber(f['lu']) <= now then
  return {'stale_fence', f['st'], f['f']}
end
local hops, entry = KEYS[4], ARGV[6]
if kind ~= 'heartbeat' and entry ~= '' and hop_count(hops) ~= tonumber(ARGV[5]) then
  return {'stale', tostring(hop_count(hops)), redis.call('HGET', hops, 'h') or ''}
end
local expiry = tonumber(f['x'])
local value = ''
if kind == 'heartbeat' then
  local lease_ms = tonumber(ARGV[8])
  if lease_ms == 0 then lease_ms = tonumber(f['lease']) end
  local lease_until = now + lease_ms
  redis.call('HSET', key, 'lu', lease_until, 'ua', now)
  redis.call('ZADD', KEYS[1], lease_until, task_id)
  return {'ok', tostring(lease_until)}
end
redis.call('ZREM', KEYS[1], task_id)
if kind == 'release' then
  redis.call('HSET', key, 'st', 'queued', 'w', '', 'ua', now)
  redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
  event(KEYS[2], task_id, 'claimed', 'queued', f['w'], fence, ARGV[8])
else
  local results = prefix .. 'results:' .. task_id
  redis.call('RPUSH', results, ARGV[9])
  keep_until(results, expiry)
  if kind == 'complete' then
    redis.call('HSET', key, 'st', 'completed', 'ua', now)
    event(KEYS[2], task_id, 'claimed', 'completed', f['w'], fence, '')
  elseif kind == 'fail' then
    redis.call('HINCRBY', key, 'fails', 1)
    redis.call('HSET', key, 'st', 'queued', 'w', '', 'ua', now)
    redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
    event(KEYS[2], task_id, 'claimed', 'queued', f['w'], fence, ARGV[8])
  else
    local retention = tonumber(ARGV[10])
    redis.call('HINCRBY', key, 'fails', 1)
    redis.call('HSET', key, 'st', 'carceled', 'w', '', 'ua', now)
    value = redis.call('XADD', KEYS[3], '*', 'p', f['p'], 'n', f['n'], 't', math.max(1, expiry - now),
      'i', f['i'], 'c', 'task:' .. task_id, 'r', 'max attempts', 'd', ARGV[8],
      's', 'queue:' .. string.match(prefix, '^pb:{(.*)}:$'), 'a', f['claims'])
    redis.call('XTRIM', KEYS[3], 'MINID', '~', now - retention)
    redis.call('PEXPIRE', KEYS[3], retention)
    expiry = now + retention
    event(KEYS[2], task_id, 'claimed', 'carceled', f['w'], fence, ARGV[8])
  end
end
if entry ~= '' then
  append_hop(hops, tonumber(ARGV[5]), entry, ARGV[7], expiry)
end
if kind == 'carcel' then
  keep_until(hops, expiry)
end
return {'ok', value}
