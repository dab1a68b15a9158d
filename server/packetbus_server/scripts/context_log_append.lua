-- Appends an entry to a capped log (a memory log or a trace), once.
--
-- KEYS[1]  the log (pb:{mem:<h>}:log or pb:{trc:<h>}:log, list)
-- ARGV[1]  the entry: "<entry id>\n<LogEntry bytes>"
-- ARGV[2]  "L": newest first (memory), "R": oldest first (traces)
-- ARGV[3]  most entries kept (older ones drop)
-- ARGV[4]  TTL of the log in ms, refreshed
--
-- Returns {1, length}, or {0, length} when the entry is already in the log
-- (a retry; nothing written).
if redis.call('LPOS', KEYS[1], ARGV[1]) then
  return {0, redis.call('LLEN', KEYS[1])}
end
local cap = tonumber(ARGV[3])
if ARGV[2] == 'L' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, cap - 1)
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], -cap, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, redis.call('LLEN', KEYS[1])}
