-- Creates a consumer group on a topic, idempotently.
--
-- KEYS[1]  the topic's log stream      (pb:{topic}:log); the group lives in it
-- KEYS[2]  the topic's group registry  (pb:{topic}:groups)
-- ARGV[1]  group name
-- ARGV[2]  where it starts: "$" (latest), "0" (earliest) or a cursor (after it)
-- ARGV[3]  ack deadline in ms
-- ARGV[4]  max delivery attempts
--
-- Returns {status, settings}: status "created", "exists" (same deadline and
-- attempts) or "conflict" (other settings: nothing changed); settings is
-- "<ack deadline ms> <max attempts> <created ms>".
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  local deadline, attempts = string.match(existing, '^(%d+) (%d+) ')
  if deadline == ARGV[3] and attempts == ARGV[4] then
    return {'exists', existing}
  end
  return {'conflict', existing}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(created.err)
end
local settings = ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. now_ms
redis.call('HSET', KEYS[2], ARGV[1], settings)
-- The group lives in the log, so the log must not expire under it.
redis.call('PERSIST', KEYS[1])
return {'created', settings}
