-- Notes that an agent claims from a task queue, so its tasks can be released
-- when it goes stale or leaves. Written before each claim: an index entry
-- without a task is harmless, a task without one would wait for its lease.
--
-- KEYS[1]  the agent's hash      (pb:{agents}:agent:<id>)
-- KEYS[2]  the agent's queue set (pb:{agents}:queues:<id>)
-- ARGV[1]  the queue
-- ARGV[2]  most queues noted per agent
--
-- Returns 1 when noted (or noted before), 0 when the worker is no registered
-- agent, -1 when its set is full (nothing written either way).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return -1
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
