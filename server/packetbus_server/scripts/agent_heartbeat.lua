-- Keeps an agent alive for another TTL, optionally setting its state.
--
-- KEYS[1]  pb:{agents}:ids       (zset: registered ids)
-- KEYS[2]  pb:{agents}:deadlines (zset: id -> stale-at or removed-at ms)
-- KEYS[3]  pb:{agents}:events    (stream: membership events)
-- KEYS[4]  pb:{agents}:releasing (zset: id -> ms, agents whose tasks are to be released)
-- KEYS[5]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/agents.lua): agent hashes, children and queue sets.
-- ARGV[1]  key prefix "pb:{agents}:"
-- ARGV[2]  most events kept (MAXLEN ~)
-- ARGV[3]  event retention ms
-- ARGV[4]  agent id
-- ARGV[5]  "1" to set the state to ARGV[6], "0" to leave it
-- ARGV[6]  the new state
--
-- A stale agent is live again (RECOVERED); a changed state is a STATE_CHANGED
-- event; the same heartbeat again changes nothing more (safe to retry).
-- Returns the agent hash as a flat list, or {} when the agent is not registered.
local prefix, id = ARGV[1], ARGV[4]
local key = prefix .. 'agent:' .. id
local f = hash_fields(key)
if not f['lv'] then
  return {}
end
local now = clock_ms()
local deadline = now + tonumber(f['ttl'])
redis.call('HSET', key, 'hb', now, 'dl', deadline)
redis.call('ZADD', KEYS[2], deadline, id)
if f['lv'] == 'stale' then
  redis.call('HSET', key, 'lv', 'live')
  emit('recovered', id, hash_fields(key), f['s'], f['s'], 'heartbeat', now)
end
if ARGV[5] == '1' and ARGV[6] ~= f['s'] then
  redis.call('HSET', key, 's', ARGV[6])
  emit('state_changed', id, hash_fields(key), f['s'], ARGV[6], 'heartbeat', now)
end
return redis.call('HGETALL', key)
