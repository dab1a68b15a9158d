-- Stores a swarm record, idempotently by record id and packet fingerprint.
--
-- KEYS[1]  the record             (pb:{rec:<kind>}:r:<id>, string)
-- KEYS[2]  its fingerprint        (pb:{rec:<kind>}:fp:<id>, string)
-- KEYS[3]  the kind's index       (pb:{rec:<kind>}:index, zset: id -> insertion order, lib/order.lua)
-- ARGV[1]  record id
-- ARGV[2]  the packet's fingerprint
-- ARGV[3]  the record: its content length as 8 digits, then the packet bytes
-- ARGV[4]  stored at, unix ms
-- ARGV[5]  expiry, unix ms
--
-- Returns {"new"}, {"dup", the stored record} (the same packet was stored
-- before) or {"conflict"} (the id holds another packet; nothing written).
local fingerprint = redis.call('GET', KEYS[2])
if fingerprint then
  if fingerprint ~= ARGV[2] then
    return {'conflict'}
  end
  local stored = redis.call('GET', KEYS[1])
  if stored then
    return {'dup', stored}
  end
end
local expiry = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[3], 'PXAT', expiry)
redis.call('SET', KEYS[2], ARGV[2], 'PXAT', expiry)
redis.call('ZADD', KEYS[3], insertion_order(KEYS[3], tonumber(ARGV[4])), ARGV[1])
keep_until(KEYS[3], expiry)
return {'new'}
