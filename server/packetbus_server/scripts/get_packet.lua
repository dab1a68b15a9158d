#!lua flags=no-writes
-- Reads one packet by its idempotency record, with its custody hops.
--
-- KEYS[1]  the packet's idempotency record  (pb:{topic}:pkt:<tracking id>,
--          either form: scripts/lib/records.lua)
-- KEYS[2]  the topic's log stream           (pb:{topic}:log)
-- KEYS[3]  the packet's custody hops        (pb:{topic}:hops:<tracking id>)
-- KEYS[4]  on a single Redis only: the packet's location (pb:loc:{<tracking id>}),
--          which may hold its record instead of KEYS[1]
-- ARGV[1]  the topic
--
-- Returns {cursor, expiry ms, packet bytes, content length, batch reference ("" for
-- none: _batch_refs), hop entries...},
-- or nil when the record or its log entry is gone (expired or trimmed).
local existing = record_find(KEYS[1], KEYS[4], ARGV[1])
if not existing then
  return nil
end
local cursor, expiry = existing.marker, existing.expiry
if not string.match(cursor, '^%d+%-%d+$') then
  -- A governance decision's record ("rejected:<id>", "held:<id>"): not on the topic.
  return nil
end
local entries = redis.call('XRANGE', KEYS[2], cursor, cursor)
if #entries == 0 then
  return nil
end
local fields = entries[1][2]
local found = {}
for j = 1, #fields, 2 do
  found[fields[j]] = fields[j + 1]
end
local reply = {cursor, expiry, found['p'], found['n'], found['b'] or ''}
local hops = tonumber(redis.call('HGET', KEYS[3], 'n') or '0')
for j = 1, hops do
  reply[5 + j] = redis.call('HGET', KEYS[3], tostring(j))
end
return reply
