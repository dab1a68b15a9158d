-- Heartbeats, releases, completes or fails a claimed task, fenced by its token.
--
-- KEYS[1]  the queue's leases        (pb:{queue}:leases)
-- KEYS[2]  the queue's status events (pb:{queue}:taskevents)
-- KEYS[3]  the queue's carcel        (pb:{queue}:carcel, as a topic's carcel)
-- KEYS[4]  the task packet's custody hops (pb:{queue}:hops:<tracking id>)
-- KEYS[5]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/tasks.lua): task hashes, ready sets and results, the
-- custody hops of tasks whose lease ran out.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  task id
-- ARGV[3]  kind: "heartbeat", "release", "lapse" (a release that counts a failed
--          attempt: its worker's agent went stale or left), "complete", "fail"
--          or "carcel" (the last failure)
-- ARGV[4]  fencing token
-- ARGV[5]  hops the packet has before this one's (unused by heartbeat)
-- ARGV[6]  the serialized, signed custody entry ("" for heartbeat, or when not signing)
-- ARGV[7]  its hash
-- ARGV[8]  heartbeat: lease ms (0: the claim's); release/lapse/fail/carcel: the reason
-- ARGV[9]  complete/fail/carcel: the serialized TaskResult to keep ("" for none:
--          a carcel move by the server, for a worker whose agent went stale)
-- ARGV[10] carcel retention ms
-- ARGV[11] the request's digest (hex, not empty): what the caller asked,
--          without its time, to tell a replay of this settlement from another
-- ARGV[12] the request's class (unused by heartbeat): "complete", "fail" (fail
--          and carcel), "release" (a worker's), or "server" (a release or carcel
--          move by the server, for a worker whose agent went stale or left)
--
-- Returns {outcome, value, extra, ids of tasks whose "carceled" hop is pending
-- (lib/tasks.lua; run-out leases are counted first, by expire_leases)}; outcome:
--   "ok"          value: heartbeat the lease end ms; carcel the carcel entry id
--   "again"       this token settled the task before with this very request (a
--                 replay): value the kind it was settled as, extra its value
--   "conflict"    this token settled the task before with a request of the same
--                 class and another digest: value the kind it was settled as
--   "settled"     this token settled the task before with another class of
--                 request: value the kind it was settled as
--   "gone"        no such task
--   "stale_fence" not the current holder, or its lease ran out: value the
--                 status, extra the current token
--   "stale"       the chain has other hops: value their count, extra the newest
--                 one's hash (sign again)
-- Checked in full before anything is written.
local prefix, task_id, kind, fence = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local digest = ARGV[11]
local key = prefix .. 'task:' .. task_id
local memo_field = 's:' .. fence
local head = redis.call('HMGET', key, 'st', memo_field)
if not head[1] then
  return {'gone', '', '', {}}
end
local class = ARGV[12]
if kind ~= 'heartbeat' and head[2] then
  local done_class, done_digest, done_kind, done_value =
    string.match(head[2], '^(%S+) (%S+) (%S+) ?(.*)$')
  if done_class ~= class then
    return {'settled', done_kind, done_value, {}}
  elseif done_digest ~= digest then
    return {'conflict', done_kind, done_value, {}}
  end
  return {'again', done_kind, done_value, {}}
end
local now = clock_ms()
local retention = tonumber(ARGV[10])
expire_leases(prefix, KEYS[1], KEYS[2], KEYS[3], now, retention)
local carceled = pending_carcel_hops(prefix)
local f = hash_fields(key)
if f['st'] ~= 'claimed' or f['f'] ~= fence or tonumber(f['lu']) <= now then
  return {'stale_fence', f['st'], f['f'], carceled}
end
local hops, entry = KEYS[4], ARGV[6]
if kind ~= 'heartbeat' and entry ~= '' and hop_count(hops) ~= tonumber(ARGV[5]) then
  return {'stale', tostring(hop_count(hops)), redis.call('HGET', hops, 'h') or '', carceled}
end
local expiry = tonumber(f['x'])
local value = ''
if kind == 'heartbeat' then
  local lease_ms = tonumber(ARGV[8])
  if lease_ms == 0 then lease_ms = tonumber(f['lease']) end
  local lease_until = now + lease_ms
  redis.call('HSET', key, 'lu', lease_until, 'ua', now)
  redis.call('ZADD', KEYS[1], lease_until, task_id)
  return {'ok', tostring(lease_until), '', carceled}
end
redis.call('ZREM', KEYS[1], task_id)
if kind == 'release' or kind == 'lapse' then
  if kind == 'lapse' then
    redis.call('HINCRBY', key, 'fails', 1)
  end
  redis.call('HSET', key, 'st', 'queued', 'w', '', 'ua', now)
  redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
  event(KEYS[2], task_id, 'claimed', 'queued', f['w'], fence, ARGV[8])
else
  if ARGV[9] ~= '' then
    local results = prefix .. 'results:' .. task_id
    redis.call('RPUSH', results, ARGV[9])
    keep_until(results, expiry)
  end
  if kind == 'complete' then
    redis.call('HSET', key, 'st', 'completed', 'ua', now)
    event(KEYS[2], task_id, 'claimed', 'completed', f['w'], fence, '')
  elseif kind == 'fail' then
    redis.call('HINCRBY', key, 'fails', 1)
    redis.call('HSET', key, 'st', 'queued', 'w', '', 'ua', now)
    redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
    event(KEYS[2], task_id, 'claimed', 'queued', f['w'], fence, ARGV[8])
  else
    redis.call('HINCRBY', key, 'fails', 1)
    value = carcel_task(prefix, KEYS[3], task_id, f, now, retention, 'max attempts', ARGV[8])
    expiry = now + retention
    event(KEYS[2], task_id, 'claimed', 'carceled', f['w'], fence, ARGV[8])
  end
end
redis.call('HSET', key, memo_field, class .. ' ' .. digest .. ' ' .. kind .. ' ' .. value)
if entry ~= '' then
  append_hop(hops, tonumber(ARGV[5]), entry, ARGV[7], expiry)
end
return {'ok', value, '', carceled}
