#!lua flags=no-writes
-- Reads a packet's idempotency record, in either form (scripts/lib/records.lua),
-- as one atomic read: the current form keeps its expiry as the key's own
-- (PEXPIRETIME), so the marker and the expiry must be read together.
--
-- KEYS[1]  the packet's idempotency record (pb:{topic}:pkt:<tracking id>)
-- KEYS[2]  on a single Redis only: the packet's location (pb:loc:{<tracking id>}),
--          which may hold its record instead of KEYS[1]
-- ARGV[1]  the topic
--
-- Returns {marker, expiry ms}: the marker is the packet's cursor on its topic,
-- "rejected:<carcel id>" or "held:<held id>"; nil when there is no record.
local existing = record_find(KEYS[1], KEYS[2], ARGV[1])
if not existing then
  return nil
end
return {existing.marker, existing.expiry}
