-- Puts a carceled task back in its queue, its failures forgiven (and its claims
-- so far noted, field rc: its next carcel entry counts the claims after).
--
-- KEYS[1]  the queue's carcel        (pb:{queue}:carcel)
-- KEYS[2]  the queue's status events (pb:{queue}:taskevents)
-- KEYS[3]  the task packet's custody hops (pb:{queue}:hops:<tracking id>)
-- KEYS[4]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/tasks.lua): the task hash and its ready set.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  the carcel entry id
-- ARGV[3]  the task id
-- ARGV[4]  hops the packet has before the "requeued" one
-- ARGV[5]  the serialized, signed "requeued" custody entry ("" when not signing)
-- ARGV[6]  its hash
-- ARGV[7]  the id of the RequeueCarcelEntry call (the same for the server's own
--          retries of this script within it; no spaces)
--
-- Returns {"ok"}, {"gone"} (no such carcel entry, or the task expired),
-- {"stale", hop count, last hop hash} (sign again) or {"not_carceled", status}.
-- The task keeps the carcel entry it was last requeued from and the call that
-- did it (field rq: "<carcel entry id> <call id>"), so the same call's retry
-- after a lost reply answers {"ok"} again; another call (sent again by a client,
-- or at the same time) finds the entry gone, as the proto says.
local prefix, task_id = ARGV[1], ARGV[3]
local key = prefix .. 'task:' .. task_id
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  if redis.call('HGET', key, 'rq') == ARGV[2] .. ' ' .. ARGV[7] then
    return {'ok'}
  end
  return {'gone'}
end
local f = hash_fields(key)
if not f['st'] then
  return {'gone'}
end
if f['st'] ~= 'carceled' then
  return {'not_carceled', f['st']}
end
if ARGV[5] ~= '' and hop_count(KEYS[3]) ~= tonumber(ARGV[4]) then
  return {'stale', tostring(hop_count(KEYS[3])), redis.call('HGET', KEYS[3], 'h') or ''}
end
local now = clock_ms()
redis.call('HSET', key, 'st', 'queued', 'fails', 0, 'w', '', 'ua', now,
  'rq', ARGV[2] .. ' ' .. ARGV[7], 'rc', f['claims'])
redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
redis.call('XDEL', KEYS[1], ARGV[2])
event(KEYS[2], task_id, 'carceled', 'queued', 'carcel', f['f'], 'requeued')
if ARGV[5] ~= '' then
  append_hop(KEYS[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(f['x']))
end
return {'ok'}
