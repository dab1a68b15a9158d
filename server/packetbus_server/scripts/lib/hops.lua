-- Library, prepended to the scripts that append custody hops (never run alone).
--
-- A packet's custody entries after ingest (deliveries, acks, carcel moves...)
-- live in one hash per packet, pb:{topic}:hops:<tracking id>:
--   n          how many hop entries there are
--   h          the newest entry's hash (SHA-256 of 0x00 || its record)
--   "1".."n"   the serialized CustodyEntry of each hop
--   s:<group>  that consumer group's last settlement: "<delivery id> <kind>"
--   rq         the last requeue from the carcel: "<carcel entry id> <call id>
--              <new cursor>" (the call id: the RequeueCarcelEntry call's own)
-- An entry is signed over its place in the chain (its sequence and the hash
-- before it) before the script runs, so it is appended only where its signer
-- put it: as hop number `expected` + 1. Otherwise the caller signs again.

-- Keep `key` until at least `at_ms` (unix ms).
local function keep_until(key, at_ms)
  local current = redis.call('PEXPIRETIME', key)
  if current < at_ms then
    redis.call('PEXPIREAT', key, at_ms)
  end
end

-- The hop count of `key`.
local function hop_count(key)
  return tonumber(redis.call('HGET', key, 'n') or '0')
end

-- Store `entry` as hop `expected` + 1 (and set `field` to `value` with it, when
-- given), the caller having checked that the packet has `expected` hops. The
-- first hop gives the key the packet's expiry, `keep_until_ms`; later ones
-- leave it as it is.
local function put_hop(key, expected, entry, entry_hash, keep_until_ms, field, value)
  if field then
    redis.call('HSET', key, 'n', expected + 1, 'h', entry_hash, tostring(expected + 1), entry, field, value)
  else
    redis.call('HSET', key, 'n', expected + 1, 'h', entry_hash, tostring(expected + 1), entry)
  end
  -- NX: a key without an expiry (the usual first hop) gets one in one call;
  -- one that has an expiry may need it kept longer.
  if expected == 0 and redis.call('PEXPIREAT', key, keep_until_ms, 'NX') == 0 then
    keep_until(key, keep_until_ms)
  end
end

-- Append `entry` as hop `expected` + 1 (see put_hop); false when the packet
-- has another count.
local function append_hop(key, expected, entry, entry_hash, keep_until_ms, field, value)
  if hop_count(key) ~= expected then
    return false
  end
  put_hop(key, expected, entry, entry_hash, keep_until_ms, field, value)
  return true
end
