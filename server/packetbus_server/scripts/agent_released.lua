-- Marks an agent's claimed tasks as released (after the reaper released them).
--
-- KEYS[1]  pb:{agents}:releasing (zset: id -> ms it was marked)
-- KEYS[2]  the agent's hash      (pb:{agents}:agent:<id>)
-- KEYS[3]  the agent's queue set (pb:{agents}:queues:<id>)
-- ARGV[1]  agent id
-- ARGV[2]  the mark (ms) the release started from
--
-- Only that mark is cleared: an agent marked again meanwhile (it recovered and
-- went stale again) stays for the next sweep. The queue set of an agent no
-- longer registered goes with it. Returns 1 when cleared, else 0.
local mark = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mark or tonumber(mark) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
end
return 1
