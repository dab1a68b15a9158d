-- Leases up to ARGV[3] of a consumer group's packets to one consumer: first
-- deliveries whose lease ran out (raising their delivery count), then packets
-- the group has not seen yet.
--
-- KEYS[1]  the topic's log stream      (pb:{topic}:log)
-- KEYS[2]  the topic's group registry  (pb:{topic}:groups); the field
--          "<group>:next" keeps where the scan for run-out leases goes on
-- ARGV[1]  group name
-- ARGV[2]  consumer name
-- ARGV[3]  most entries to lease
-- ARGV[4]  "1" to look for run-out leases first, "0" not to: XAUTOCLAIM walks
--          the whole pending list, so the caller does not ask for it on every
--          pull
--
-- Returns {now ms, ack deadline ms, max attempts, the log's newest entry id
-- ("0-0" if none: wait for entries after it), 1 if the look for run-out leases
-- reached the end of the pending list (else 0), then 6 values per leased entry:
-- cursor, delivery count, tracking id, packet bytes, content length, TTL ms},
-- or {'nogroup'}. A delivery count above max attempts means the
-- packet is to go to the carcel, not to the consumer.
-- Skipped (and acked for the group): entries past their TTL, and entries
-- requeued for another group. Entries trimmed from the log while leased are
-- dropped from the group by XAUTOCLAIM itself.
local log, groups = KEYS[1], KEYS[2]
local group, consumer, wanted, scan = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local settings = redis.call('HGET', groups, group)
if not settings then
  return {'nogroup'}
end
local deadline_ms, max_attempts = string.match(settings, '^(%d+) (%d+) ')
deadline_ms, max_attempts = tonumber(deadline_ms), tonumber(max_attempts)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local out = {now_ms, deadline_ms, max_attempts, '0-0', 0}
local leased = 0

-- Append entry {id, fields} with its delivery count, or settle it for the group
-- if it is not for the consumer.
local function take(entry, count)
  local id, fields = entry[1], entry[2]
  local f = {}
  for j = 1, #fields, 2 do
    f[fields[j]] = fields[j + 1]
  end
  local expired = tonumber(string.match(id, '^(%d+)-')) + tonumber(f['t']) <= now_ms
  if expired or (f['g'] and f['g'] ~= group) then
    redis.call('XACK', log, group, id)
    return
  end
  out[#out + 1] = id
  out[#out + 1] = count
  out[#out + 1] = f['i'] or ''
  out[#out + 1] = f['p']
  out[#out + 1] = f['n']
  out[#out + 1] = f['t']
  leased = leased + 1
end

if scan then
  local scan_key = group .. ':next'
  local start = redis.call('HGET', groups, scan_key) or '0-0'
  local claimed = redis.call('XAUTOCLAIM', log, group, consumer, deadline_ms, start, 'COUNT', wanted)
  redis.call('HSET', groups, scan_key, claimed[1])
  if claimed[1] == '0-0' then
    out[5] = 1
  end
  for _, entry in ipairs(claimed[2]) do
    local pending = redis.call('XPENDING', log, group, entry[1], entry[1], 1)
    take(entry, pending[1][4])
  end
end

if leased < wanted then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', wanted - leased, 'STREAMS', log, '>')
  if fresh then
    for _, entry in ipairs(fresh[1][2]) do
      take(entry, 1)
    end
  end
  local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #newest == 1 then
    out[4] = newest[1][1]
  end
end
return out
