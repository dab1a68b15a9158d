-- Sets one key of the global context map, bounded, optionally compare-and-set.
--
-- KEYS[1]  the map (pb:{gctx}:map, hash)
-- ARGV[1]  key
-- ARGV[2]  value
-- ARGV[3]  "1" to compare, "0" to set unconditionally
-- ARGV[4]  the expected current value ("": the key must be unset)
-- ARGV[5]  most keys the map may hold
-- ARGV[6]  TTL of the map in ms, refreshed
--
-- Returns "ok" (also when the value is already ARGV[2]: a retry), "stale"
-- or "full" (nothing written in either).
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current == ARGV[2] then
  return 'ok'
end
if ARGV[3] == '1' and (current or '') ~= ARGV[4] then
  return 'stale'
end
if ARGV[3] == '1' and ARGV[4] == '' and current then
  return 'stale'
end
if not current and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return 'full'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 'ok'
