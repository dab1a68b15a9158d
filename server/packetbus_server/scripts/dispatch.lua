#!lua
-- Stores a batch of packets on one topic, idempotently by tracking id.
--
-- The shebang (no flags) makes Redis refuse the whole script up front when it
-- is out of memory, instead of failing halfway through a batch.
--
-- KEYS[1]  the topic's log stream (pb:{topic}:log); each entry has p = packet
--          bytes, n = the length of their content prefix (the packet without its
--          chain of custody), t = TTL in ms (it expires at the entry id's ms + t)
--          and i = the tracking id
-- KEYS[2]  the topic's consumer groups (pb:{topic}:groups): while the topic has
--          any, its log does not expire as a whole (the groups live in it)
-- KEYS[3]  the topic's horizon (pb:{topic}:horizon), what subscribers need to
--          tell a gap: t = the newest entry retention trimmed, x = the newest
--          entry lost with a log that expired as a whole, l = the newest entry
--          this script appended
-- KEYS[4]  the call's sealed batch (pb:{topic}:batch:<id>, _batch_refs): stored
--          once when some packet is new, expiring with the newest packet
--          referring to it (never sooner: PEXPIREAT GT)
-- then, for packet i, ARGV[2] keys:
--   KEYS[5 + w(i-1)]      packet i's idempotency record   (pb:{topic}:pkt:<tracking id>,
--                         either form: scripts/lib/records.lua)
--   KEYS[6 + w(i-1)]      packet i's location             (pb:loc:{<tracking id>}), only
--                         when w = 2: on a single Redis the location is claimed here,
--                         and a new packet's record is kept in it, not under the
--                         topic (one key per packet: scripts/lib/records.lua);
--                         on a Redis Cluster it lives in another slot and the caller
--                         claims it beforehand (w = 1: _cluster_claims)
--   KEYS[7 + w(i-1)]      packet i's place                (pb:place:{<tracking id>}), only
--                         when w = 3 (a single Redis): a tracking id a task, finding
--                         or record holds (_placed_packets) is refused here
-- ARGV[1]  retention in ms: log entries older than now - retention are trimmed
--          (exactly, so the horizon names exactly the newest entry that went)
-- ARGV[2]  w, keys per packet: 1 (a Redis Cluster) or 3 (a single Redis)
-- ARGV[3]  the topic
-- ARGV[4]  the sealed batch's bytes ("" for none: packets stored whole)
-- ARGV[5]  the sealed batch's id ("" for none)
-- ARGV[6]  per packet, 8 digits: the leaf of its "received" entry in the batch;
--          a new packet's log entry gets b = "<batch id> <leaf>", its packet
--          bytes hold content and the client's chain only
-- ARGV[6 + i]  packet i, as one string (one argument per packet keeps the
--              command small to encode): the 32 bytes of its fingerprint (the
--              SHA-256 of what the sender means: _ingest.fingerprint, raw as the
--              record keeps it), its TTL in ms as 12 digits,
--              the length of its content prefix as 8 digits, its tracking id
--              (36 characters), then its serialized bytes: content, then chain
--              of custody
--
-- Returns one {status, cursor, expiry ms} per packet, in order:
--   status "new"       stored now
--   status "dup"       stored before with the same fingerprint: the original cursor and expiry
--   status "conflict"  the tracking id holds a different packet (of this topic,
--                      another topic, or a task, finding or record): nothing written
-- Everything about a packet is read before anything is written for it, so
-- replaying the script after a lost reply stores nothing twice. A record a
-- governance decision left (cursor "rejected:<id>" or "held:<id>") answers
-- "dup" with that cursor too: the caller reports the decision.
--
-- The log's horizon, trimming and expiry: scripts/lib/log.lua; the topic's own
-- retention limits (kept in the horizon hash): scripts/lib/retention.lua.
local log = KEYS[1]
local groups = KEYS[2]
local horizon = KEYS[3]
local retention_ms = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local topic = ARGV[3]
local batch_key, batch, batch_id, leaves = KEYS[4], ARGV[4], ARGV[5], ARGV[6]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)

local results = {}
local newest_expiry = 0
local newest_cursor = nil
for i = 1, (#KEYS - 4) / width do
  local record_key = KEYS[5 + width * (i - 1)]
  local location_key = width == 3 and KEYS[6 + width * (i - 1)] or nil
  local place_key = width == 3 and KEYS[7 + width * (i - 1)] or nil
  local packet = ARGV[6 + i]
  local fingerprint = string.sub(packet, 1, 32)
  local owner, located = nil, nil
  if location_key then
    owner, located = location_read(location_key)
  end
  local existing = located or record_read(record_key)
  if owner and owner ~= topic then
    results[i] = {'conflict', '', '0'}
  elseif existing then
    if existing.fp == fingerprint then
      results[i] = {'dup', existing.marker, existing.expiry}
    else
      results[i] = {'conflict', existing.marker, existing.expiry}
    end
  elseif place_key and redis.call('EXISTS', place_key) == 1 then
    -- After the record: a retry of a packet stored before the place was noted
    -- still answers "dup" (a post refuses an id a topic holds, so that is rare).
    results[i] = {'conflict', '', '0'}
  else
    local ttl_ms = tonumber(string.sub(packet, 33, 44))
    local content_length = tonumber(string.sub(packet, 45, 52))
    local tracking_id = string.sub(packet, 53, 88)
    local cursor
    if batch_id ~= '' then
      local leaf = tonumber(string.sub(leaves, 8 * i - 7, 8 * i))
      cursor = redis.call('XADD', log, '*', 'p', string.sub(packet, 89), 'n', content_length,
        't', ttl_ms, 'i', tracking_id, 'b', batch_id .. ' ' .. leaf)
    else
      cursor = redis.call(
        'XADD', log, '*', 'p', string.sub(packet, 89), 'n', content_length, 't', ttl_ms, 'i', tracking_id)
    end
    -- Expiry counts from the cursor's millisecond (the packet's stored_at),
    -- which XADD may take from the last id rather than from TIME.
    local expiry = tonumber(string.match(cursor, '^(%d+)-')) + ttl_ms
    if location_key then
      -- One key per packet on a single Redis: the record rides in the location.
      location_write(location_key, topic, fingerprint, cursor, expiry)
    else
      record_write(record_key, fingerprint, cursor, expiry)
    end
    if expiry > newest_expiry then
      newest_expiry = expiry
    end
    newest_cursor = cursor
    results[i] = {'new', cursor, tostring(expiry)}
  end
end

if newest_expiry > 0 and batch_id ~= '' then
  -- Another chunk of the same call may have stored it already: keep the
  -- bytes, only ever extend the expiry (stored now, it has this one already).
  if not redis.call('SET', batch_key, batch, 'NX', 'PXAT', newest_expiry) then
    redis.call('PEXPIREAT', batch_key, newest_expiry, 'GT')
  end
end
if newest_expiry > 0 then
  after_append(log, groups, horizon, oldest, newest_cursor, newest_expiry, now_ms, retention_ms)
end
return results
