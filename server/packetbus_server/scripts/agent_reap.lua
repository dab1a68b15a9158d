-- One liveness sweep: agents past their deadline turn stale, agents stale for
-- another TTL are removed. Every server replica runs it; being one script, a
-- deadline is acted on once however many run at once.
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
-- ARGV[4]  most agents handled per sweep
--
-- An agent turning stale gets a STALE event and, if it ever claimed tasks, a
-- place in KEYS[4] so its tasks are released; a removed one gets LEFT.
-- Returns {stale ids, removed ids, KEYS[4] as id, ms, id, ms, ...}.
local prefix, limit = ARGV[1], tonumber(ARGV[4])
local now = clock_ms()
local stale, left = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)) do
  local key = prefix .. 'agent:' .. id
  local f = hash_fields(key)
  local ttl = tonumber(f['ttl'] or '0')
  if not f['lv'] then
    redis.call('ZREM', KEYS[2], id)
  elseif f['lv'] == 'live' then
    redis.call('HSET', key, 'lv', 'stale', 'dl', now + ttl)
    redis.call('ZADD', KEYS[2], now + ttl, id)
    if redis.call('EXISTS', prefix .. 'queues:' .. id) == 1 then
      redis.call('ZADD', KEYS[4], now, id)
    end
    emit('stale', id, hash_fields(key), f['s'], f['s'],
      'no heartbeat for ' .. (now - tonumber(f['hb'])) .. 'ms (TTL ' .. ttl .. 'ms)', now)
    stale[#stale + 1] = id
  else
    remove_agent(prefix, id, f, 'stale for ' .. (now - tonumber(f['hb'])) .. 'ms since its last heartbeat', now)
    left[#left + 1] = id
  end
end
return {stale, left, redis.call('ZRANGE', KEYS[4], 0, limit - 1, 'WITHSCORES')}
