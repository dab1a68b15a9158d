#!lua flags=no-writes
-- Counts a carcel's entries by why they are there, for a metrics scrape (reads only).
--
-- KEYS[1]  a carcel stream (pb:{topic}:carcel)
-- ARGV[1]  the most entries read (the oldest first); the rest are not classified
--
-- Returns {entries in the carcel, cause, count, cause, count, ...}: cause is
-- "policy" for a packet a policy rule rejected or an approver denied (its reason
-- is the rule's free text, so it is not returned), else the entry's reason (r).
-- Read ten entries at a time: an entry holds its packet (up to a megabyte).
local most = tonumber(ARGV[1])
local counts = {}
local read = 0
local from = '-'
while read < most do
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', math.min(10, most - read))
  if #entries == 0 then
    break
  end
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local origin, reason = '', ''
    for j = 1, #fields, 2 do
      if fields[j] == 'c' then
        origin = fields[j + 1]
      elseif fields[j] == 'r' then
        reason = fields[j + 1]
      end
    end
    local cause = origin == 'policy' and 'policy' or reason
    counts[cause] = (counts[cause] or 0) + 1
    from = '(' .. entry[1]
  end
  read = read + #entries
end
local out = {redis.call('XLEN', KEYS[1])}
for cause, n in pairs(counts) do
  out[#out + 1] = cause
  out[#out + 1] = n
end
return out
