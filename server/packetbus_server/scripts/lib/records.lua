-- A packet's idempotency record (pb:{topic}:pkt:<tracking id>, _keys.py), read
-- and written in one place: every script that keeps one uses these.
--
-- The record is a string in one of two forms:
--   current  the 32 bytes of the packet's fingerprint (SHA-256, raw), then its
--            marker: the cursor on the topic, or "rejected:<carcel id>" or
--            "held:<held id>". The key expires exactly with the packet (SET
--            PXAT), so PEXPIRETIME is the packet's expiry: it is not stored.
--   old      "<64 hex digits of fingerprint> <marker> <expiry ms>" (before
--            issue 16: 94 bytes instead of ~47). A store upgraded in place
--            keeps these for up to their TTL; they are read as they are and
--            rewritten in their own form, so their answers never change.
-- The two cannot be mistaken for each other: an old record always has a space
-- at byte 65 (after the 64 hex digits); a current one has its marker's 33rd
-- character there, and markers never hold a space.

local function record_hex_to_raw(hex)
  return (string.gsub(hex, '%x%x', function(pair)
    return string.char(tonumber(pair, 16))
  end))
end

-- The record at `key`: nil when there is none, else {fp = the 32-byte
-- fingerprint, marker = cursor or decision, expiry = ms as a string,
-- old = true for an old-form record, hex = its fingerprint as stored}.
local function record_read(key)
  local value = redis.call('GET', key)
  if not value then
    return nil
  end
  if string.byte(value, 65) == 32 then
    local hex, marker, expiry = string.match(value, '^(%x+) (%S+) (%d+)$')
    return {fp = record_hex_to_raw(hex), marker = marker, expiry = expiry, old = true, hex = hex}
  end
  return {
    fp = string.sub(value, 1, 32),
    marker = string.sub(value, 33),
    expiry = tostring(redis.call('PEXPIRETIME', key)),
    old = false,
  }
end

-- A new record: `fingerprint` (32 bytes) with `marker`, expiring at `expiry` ms.
local function record_write(key, fingerprint, marker, expiry)
  redis.call('SET', key, fingerprint .. marker, 'PXAT', expiry)
end

-- `rec` (from record_read) with a new marker, in its own form and keeping its
-- expiry: an old record keeps its stored expiry, which its answers quoted.
local function record_remark(key, rec, marker)
  if rec.old then
    redis.call('SET', key, rec.hex .. ' ' .. marker .. ' ' .. rec.expiry, 'KEEPTTL')
  else
    redis.call('SET', key, rec.fp .. marker, 'KEEPTTL')
  end
end

-- On a single Redis (no slots to respect) a dispatched packet's record is kept
-- in its location key instead (pb:loc:{<tracking id>}): one key per packet, not
-- two. That value is a NUL byte, the 32-byte fingerprint, the marker, a space
-- and the topic; otherwise the location is the bare topic (always on a
-- cluster, where the caller claims it beforehand; and beside a record kept
-- under the topic). Topics never start with NUL nor hold a space
-- (_field_rules._TOPIC), markers never hold a space.

-- The location at `key`: the topic owning the tracking id (nil: none), and the
-- record it holds (nil: a bare topic).
local function location_read(key)
  local value = redis.call('GET', key)
  if not value then
    return nil, nil
  end
  if string.byte(value, 1) ~= 0 then
    return value, nil
  end
  local marker, topic = string.match(string.sub(value, 34), '^(%S+) (.+)$')
  local expiry = tostring(redis.call('PEXPIRETIME', key))
  return topic, {fp = string.sub(value, 2, 33), marker = marker, expiry = expiry, old = false}
end

-- A new record kept in the location key (single Redis only).
local function location_write(key, topic, fingerprint, marker, expiry)
  redis.call('SET', key, '\0' .. fingerprint .. marker .. ' ' .. topic, 'PXAT', expiry)
end

-- The record of a packet on `topic`: under the topic, else (single Redis, when
-- `location_key` is given) in its location if that names `topic`.
local function record_find(record_key, location_key, topic)
  local found = record_read(record_key)
  if found or not location_key then
    return found
  end
  local owner, located = location_read(location_key)
  if owner == topic then
    return located
  end
  return nil
end
