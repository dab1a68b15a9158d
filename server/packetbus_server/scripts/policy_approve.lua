#!lua
-- Stores a held packet on its topic: an agent approved it.
--
-- KEYS[1]  the topic's approval queue     (pb:{topic}:held)
-- KEYS[2]  the topic's log stream         (pb:{topic}:log)
-- KEYS[3]  the topic's consumer groups    (pb:{topic}:groups)
-- KEYS[4]  the topic's horizon            (pb:{topic}:horizon)
-- KEYS[5]  the packet's idempotency record (pb:{topic}:pkt:<tracking id>,
--          either form: scripts/lib/records.lua; rewritten in the current one)
-- KEYS[6]  the topic's governance counts  (pb:{topic}:polstats)
-- KEYS[7]  the topic's decision log       (pb:{topic}:decisions)
-- KEYS[8]  the packet's location          (pb:loc:{<tracking id>}), on a single
--          Redis only (on a Redis Cluster the caller claims it beforehand)
-- KEYS[9]  the packet's place             (pb:place:{<tracking id>}), on a single
--          Redis only: a task, finding or record that took the tracking id while
--          the packet was held refuses the approval (on a cluster the caller
--          reads it beforehand)
-- ARGV[1]  log retention in ms (as scripts/dispatch.lua)
-- ARGV[2]  carcel retention in ms (counts and decision log)
-- ARGV[3]  the held entry id the approval was signed for
-- ARGV[4]  the topic
-- ARGV[5]  the approver's agent id
-- ARGV[6]  the packet bytes: content, then its chain ending with the
--          approver's "approved" entry and the server's "dispatched" one
--
-- Returns:
--   {"ok", cursor, expiry ms}       stored now
--   {"stored", cursor, expiry ms}   stored before (a replay)
--   {"denied", carcel entry id}     denied before, or rejected, never held
--   {"gone"}                        no such held packet (never held, or expired)
--   {"moved", marker}               held again under another entry (sign again)
--   {"taken", topic}                its tracking id belongs to another topic
--   {"placed"}                      a task, finding or record holds its tracking id
local held, log, groups, horizon = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local record_key, stats, decisions, location_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local place_key = KEYS[9]
local retention_ms, carcel_retention_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local held_id, topic, approver, payload = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now_ms = clock_ms()

local existing = record_find(record_key, location_key, topic)
if not existing then
  return {'gone'}
end
local marker = existing.marker
if string.match(marker, '^%d+%-%d+$') then
  return {'stored', marker, existing.expiry}
end
local what, id = string.match(marker, '^(%a+):(.+)$')
if what == 'rejected' then
  return {'denied', id}
end
if id ~= held_id then
  return {'moved', marker}
end
local found = redis.call('XRANGE', held, held_id, held_id)
if #found == 0 then
  return {'gone'}
end
local f = field_table(found[1][2])
if location_key then
  -- The owning topic, whichever form the location holds: a packet stored on a
  -- single Redis keeps its record there ("\0<fingerprint><marker> <topic>"),
  -- which a bare GET would compare, and answer, as if it were a topic name.
  local owner = location_read(location_key)
  if owner and owner ~= topic then
    return {'taken', owner}
  end
  if not owner and place_key and redis.call('EXISTS', place_key) == 1 then
    return {'placed'}
  end
end

local ttl_ms = tonumber(f['t'])
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
local cursor = redis.call('XADD', log, '*', 'p', payload, 'n', f['n'], 't', ttl_ms, 'i', f['i'])
-- Stored as if newly allowed: its TTL counts from now.
local new_expiry = id_ms(cursor) + ttl_ms
record_write(record_key, existing.fp, cursor, new_expiry)
if location_key then
  redis.call('SET', location_key, topic, 'PX', ttl_ms)
end
redis.call('XDEL', held, held_id)
after_append(log, groups, horizon, oldest, cursor, new_expiry, now_ms, retention_ms)

redis.call('HINCRBY', stats, 'decision:approved', 1)
redis.call('PEXPIRE', stats, carcel_retention_ms)
redis.call('XADD', decisions, '*', 'k', 'approved', 'i', f['i'], 'u', f['u'], 'r', f['r'],
  'v', f['v'], 'a', approver, 'h', cursor)
redis.call('XTRIM', decisions, 'MINID', '~', now_ms - carcel_retention_ms)
redis.call('PEXPIRE', decisions, carcel_retention_ms)
return {'ok', cursor, tostring(new_expiry)}
