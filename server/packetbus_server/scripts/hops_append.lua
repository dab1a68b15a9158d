-- Appends custody hops to packets, each where its signer put it.
--
-- KEYS[1], KEYS[2], ...  each packet's custody hops  (pb:{topic}:hops:<tracking id>)
-- then 4 per item in ARGV:
--   expected    hops the packet has before this one
--   entry       the serialized, signed custody entry
--   entry hash  SHA-256(0x00 || the entry's record)
--   keep until  unix ms the hops must be kept until (the packet's expiry)
--
-- Returns one reply per item: {} when appended (or appended before: this very
-- entry is the hop after `expected`, as when the script is run again after its
-- reply was lost), or, when the packet has other hops now, {hash of the last,
-- entry 1, ..., entry n} so the caller can sign again after them.
local results = {}
for i = 1, #KEYS do
  local base = 4 * (i - 1)
  local key = KEYS[i]
  local expected, entry = tonumber(ARGV[base + 1]), ARGV[base + 2]
  if append_hop(key, expected, entry, ARGV[base + 3], tonumber(ARGV[base + 4])) then
    results[i] = {}
  elseif redis.call('HGET', key, tostring(expected + 1)) == entry then
    results[i] = {}
  else
    local n = hop_count(key)
    local reply = {redis.call('HGET', key, 'h')}
    for j = 1, n do
      reply[j + 1] = redis.call('HGET', key, tostring(j))
    end
    results[i] = reply
  end
end
return results
