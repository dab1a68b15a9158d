-- Registers an agent, or updates its registration; counts as a heartbeat.
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
-- ARGV[5]  the registration (a serialized Agent, deterministic bytes)
-- ARGV[6]  parent id ("" for none)
-- ARGV[7]  state
-- ARGV[8]  heartbeat TTL ms
-- ARGV[9]  fingerprint of this registration
-- ARGV[10] most agents registered at once
--
-- The same registration again (same fingerprint) only heartbeats and answers
-- what it answered first, so a retry after a lost reply is safe.
-- Returns {"new" | "updated", the agent hash as a flat list}, or, with nothing
-- written: {"full"}, {"no_parent"} (not registered) or {"cycle"} (the parent
-- descends from the agent).
local prefix, id, spec, parent, state = ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ttl = tonumber(ARGV[8])
local key = prefix .. 'agent:' .. id
local f = hash_fields(key)
local now = clock_ms()
if f['lv'] and f['rf'] == ARGV[9] then
  redis.call('HSET', key, 'hb', now, 'dl', now + ttl)
  redis.call('ZADD', KEYS[2], now + ttl, id)
  if f['lv'] == 'stale' then
    redis.call('HSET', key, 'lv', 'live')
    emit('recovered', id, hash_fields(key), f['s'], f['s'], 'registered again', now)
  end
  return {f['rn'] == '1' and 'new' or 'updated', unpack(redis.call('HGETALL', key))}
end
if not f['lv'] and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[10]) then
  return {'full'}
end
if parent ~= '' then
  if redis.call('EXISTS', prefix .. 'agent:' .. parent) == 0 then
    return {'no_parent'}
  end
  local up, steps = parent, 0
  while up and up ~= '' and steps <= tonumber(ARGV[10]) do
    if up == id then
      return {'cycle'}
    end
    up = redis.call('HGET', prefix .. 'agent:' .. up, 'par')
    steps = steps + 1
  end
end
local created = not f['lv']
if f['par'] and f['par'] ~= '' and f['par'] ~= parent then
  redis.call('SREM', prefix .. 'children:' .. f['par'], id)
end
if parent ~= '' then
  redis.call('SADD', prefix .. 'children:' .. parent, id)
end
redis.call('HSET', key, 'p', spec, 'par', parent, 's', state, 'ttl', ttl, 'lv', 'live',
  'ra', f['ra'] or now, 'hb', now, 'dl', now + ttl, 'rf', ARGV[9], 'rn', created and 1 or 0)
redis.call('ZADD', KEYS[1], 0, id)
redis.call('ZADD', KEYS[2], now + ttl, id)
local after = hash_fields(key)
if created then
  emit('joined', id, after, '', state, 'registered', now)
else
  if f['lv'] == 'stale' then
    emit('recovered', id, after, f['s'], state, 'registered again', now)
  end
  if f['p'] ~= spec then
    emit('updated', id, after, f['s'], state, 'registered again', now)
  end
  if f['s'] ~= state then
    emit('state_changed', id, after, f['s'], state, 'registered again', now)
  end
end
return {created and 'new' or 'updated', unpack(redis.call('HGETALL', key))}
