-- Work-queue retention after acks: drops the entries every consumer group of
-- the topic has acked (as a prefix: lib/retention.lua). Run after a
-- settlement; a topic without work-queue retention is left alone.
--
-- KEYS[1]  the topic's log stream (pb:{topic}:log)
-- KEYS[2]  the topic's horizon    (pb:{topic}:horizon), which holds the limits
--
-- Returns the number of entries removed, or -1 when the topic has no
-- work-queue retention (the caller then skips the call for a while).
-- Idempotent: what is acked is read from the groups themselves, so a replay
-- finds nothing more to drop.
local log, horizon = KEYS[1], KEYS[2]
if redis.call('HEXISTS', horizon, 'wq') == 0 then
  return -1
end
return rt_work_queue(log, horizon)
