#!lua flags=no-writes
-- Reads a packet's idempotency record, in either form (scripts/lib/records.lua),
-- as one atomic read: the current form keeps its expiry as the key's own
-- (PEXPIRETIME), so the marker and the expiry must be read together.
--
-- KEYS[1]  the packet's idempotency record (pb:{topic}:pkt:<tracking id>)
--
-- Returns {marker, expiry ms}: the marker is the packet's cursor on its topic,
-- "rejected:<carcel id>" or "held:<held id>"; nil when there is no record.
local existing = record_read(KEYS[1])
if not existing then
  return nil
end
return {existing.marker, existing.expiry}
