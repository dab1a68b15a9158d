-- Stores a finding of a task, idempotently by finding id and packet fingerprint,
-- and answers with the findings of the task posted before it (to compare).
--
-- KEYS[1]  the task's findings (pb:{fnd:<task hash>}:findings, hash: id -> packet)
-- KEYS[2]  the task's facts    (pb:{fnd:<task hash>}:facts, hash: id ->
--          "<fingerprint> <refutes 0|1> <confidence> <subject>")
-- KEYS[3]  posting order       (pb:{fnd:<task hash>}:order, list of ids)
-- ARGV[1]  finding id
-- ARGV[2]  the fact line, as stored in KEYS[2]
-- ARGV[3]  the packet: its content length as 8 digits, then its bytes
-- ARGV[4]  expiry, unix ms (the packet's)
--
-- Returns {status, id, fact, id, fact, ...}: status "new" or "dup" (the same
-- packet was posted before), then each finding posted before this one with its
-- fact; or {"conflict"} when the id holds another packet (nothing written).
local id, fact = ARGV[1], ARGV[2]
local existing = redis.call('HGET', KEYS[2], id)
if existing then
  if string.match(existing, '^(%S+)') ~= string.match(fact, '^(%S+)') then
    return {'conflict'}
  end
end
local order = redis.call('LRANGE', KEYS[3], 0, -1)
local reply = {existing and 'dup' or 'new'}
for _, other in ipairs(order) do
  if other == id then
    break
  end
  reply[#reply + 1] = other
  reply[#reply + 1] = redis.call('HGET', KEYS[2], other)
end
if not existing then
  redis.call('HSET', KEYS[1], id, ARGV[3])
  redis.call('HSET', KEYS[2], id, fact)
  redis.call('RPUSH', KEYS[3], id)
  local expiry = tonumber(ARGV[4])
  for j = 1, 3 do
    keep_until(KEYS[j], expiry)
  end
end
return reply
