-- Appends an entry to a capped log (a memory log or a trace), once per entry id.
--
-- KEYS[1]  the log (pb:{mem:<h>}:log or pb:{trc:<h>}:log, list of
--          "<entry id>\n<LogEntry bytes>")
-- KEYS[2]  the fingerprints of its entries (pb:{mem:<h>}:logfp or
--          pb:{trc:<h>}:logfp, hash: entry id -> fingerprint)
-- ARGV[1]  the entry: "<entry id>\n<LogEntry bytes>"
-- ARGV[2]  "L": newest first (memory), "R": oldest first (traces)
-- ARGV[3]  most entries kept (older ones drop, their fingerprints too)
-- ARGV[4]  TTL of the log in ms, refreshed
-- ARGV[5]  the entry id
-- ARGV[6]  the entry's fingerprint: what it means, without the moment it was
--          recorded (a rebuilt entry is stamped again), so a retry or a rebuild
--          matches and other contents under the same id do not
--
-- Returns {1, length}, {0, length} when the entry is already in the log (a
-- retry or a rebuild: nothing written), or {-1, length} when the log holds
-- another entry under the same id (nothing written).
local known = redis.call('HGET', KEYS[2], ARGV[5])
if known then
  return {known == ARGV[6] and 0 or -1, redis.call('LLEN', KEYS[1])}
end
-- Appended before fingerprints were kept: the very same bytes again.
if redis.call('LPOS', KEYS[1], ARGV[1]) then
  return {0, redis.call('LLEN', KEYS[1])}
end
local cap = tonumber(ARGV[3])
local dropped
if ARGV[2] == 'L' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  dropped = redis.call('LRANGE', KEYS[1], cap, -1)
  redis.call('LTRIM', KEYS[1], 0, cap - 1)
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
  dropped = redis.call('LRANGE', KEYS[1], 0, -cap - 1)
  redis.call('LTRIM', KEYS[1], -cap, -1)
end
for _, gone in ipairs(dropped) do
  redis.call('HDEL', KEYS[2], string.match(gone, '^([^\n]*)'))
end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, redis.call('LLEN', KEYS[1])}
