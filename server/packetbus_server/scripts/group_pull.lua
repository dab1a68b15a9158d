#!lua
-- Leases up to ARGV[3] of a consumer group's packets to one consumer, and at
-- most ARGV[5] bytes of them (one reply's worth): first deliveries whose lease
-- ran out (raising their delivery count), then packets the group has not seen
-- yet.
--
-- The shebang (no flags) makes Redis refuse the whole script up front when it
-- is out of memory: without it XREADGROUP (no OOM check) leases the entries,
-- then the server's "delivered" hops are refused, so the consumer hears
-- RESOURCE_EXHAUSTED for deliveries leased to it that later count as attempts.
--
-- KEYS[1]  the topic's log stream      (pb:{topic}:log)
-- KEYS[2]  the topic's group registry  (pb:{topic}:groups); the field
--          "<group>:next" keeps where the scan for run-out leases goes on
-- KEYS[3]  this pull's record (pb:{topic}:pull:<pull id>, list of the cursors
--          it leased, kept a minute): the server's retry of the pull after a
--          lost reply answers those entries again (still leased to the
--          consumer, their counts as they are) instead of leasing others while
--          the first ones wait out a lease nobody saw
-- ARGV[1]  group name
-- ARGV[2]  consumer name
-- ARGV[3]  most entries to lease
-- ARGV[4]  "1" to look for run-out leases first, "0" not to: XAUTOCLAIM walks
--          the whole pending list, so the caller does not ask for it on every
--          pull
-- ARGV[5]  most bytes to lease (packet bytes + content length, summed), except
--          that one entry is always leased, however large, when any is there.
--          What does not fit is given back as if it had not been read: it never
--          counts as a delivery attempt, since it is never sent
--
-- Returns {now ms, ack deadline ms, max attempts, the log's newest entry id
-- ("0-0" if none: wait for entries after it), 1 if the look for run-out leases
-- reached the end of the pending list (else 0), then 7 values per leased entry:
-- cursor, delivery count, tracking id, packet bytes, content length, TTL ms,
-- batch reference ("" for none: _batch_refs)},
-- or {'nogroup'}. A delivery count above max attempts means the
-- packet is to go to the carcel, not to the consumer.
-- Skipped (and acked for the group): entries past their TTL, and entries
-- requeued for another group. Entries trimmed from the log while leased are
-- dropped from the group by XAUTOCLAIM itself.
local log, groups = KEYS[1], KEYS[2]
local group, consumer, wanted, scan = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local budget = tonumber(ARGV[5])
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
local bytes = 0
local record = KEYS[3]

-- Append entry {id, fields} with its delivery count, or settle it for the group
-- if it is not for the consumer. False when it does not fit in the byte budget
-- (then nothing is done with it: the caller gives it back).
local function take(entry, count)
  local id, fields = entry[1], entry[2]
  local f = {}
  for j = 1, #fields, 2 do
    f[fields[j]] = fields[j + 1]
  end
  local expired = tonumber(string.match(id, '^(%d+)-')) + tonumber(f['t']) <= now_ms
  if expired or (f['g'] and f['g'] ~= group) then
    redis.call('XACK', log, group, id)
    return true
  end
  local size = stored_bytes(f) + tonumber(f['n'])
  if leased > 0 and bytes + size > budget then
    return false
  end
  bytes = bytes + size
  out[#out + 1] = id
  out[#out + 1] = count
  out[#out + 1] = f['i'] or ''
  out[#out + 1] = f['p']
  out[#out + 1] = f['n']
  out[#out + 1] = f['t']
  out[#out + 1] = f['b'] or ''
  leased = leased + 1
  return true
end

-- The id just before `id`: the group's read position that makes `id` unread.
local function before(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if seq == '0' then
    return string.format('%.0f-18446744073709551615', tonumber(ms) - 1)
  end
  return ms .. '-' .. string.format('%.0f', tonumber(seq) - 1)
end

-- The log's newest cursor goes in the reply (out[4]): how far the consumer lags.
local function note_newest()
  local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #newest == 1 then
    out[4] = newest[1][1]
  end
end

-- A replay of this pull: what the first run leased, as far as the consumer still
-- holds it, and nothing new (their bytes fit the budget the first time).
local replayed = redis.call('LRANGE', record, 0, -1)
if #replayed > 0 then
  for _, id in ipairs(replayed) do
    local pending = redis.call('XPENDING', log, group, id, id, 1)
    if #pending == 1 and pending[1][2] == consumer then
      local found = redis.call('XRANGE', log, id, id)
      if #found == 1 then
        take(found[1], pending[1][4])
      end
    end
  end
  note_newest()
  return out
end

if scan then
  local scan_key = group .. ':next'
  local start = redis.call('HGET', groups, scan_key) or '0-0'
  local claimed = redis.call('XAUTOCLAIM', log, group, consumer, deadline_ms, start, 'COUNT', wanted)
  redis.call('HSET', groups, scan_key, claimed[1])
  if claimed[1] == '0-0' then
    out[5] = 1
  end
  local full = false
  for _, entry in ipairs(claimed[2]) do
    local pending = redis.call('XPENDING', log, group, entry[1], entry[1], 1)
    if full or not take(entry, pending[1][4]) then
      -- Given back: its count as before the claim, its lease run out, and the
      -- next look for run-out leases starting at the first one given back.
      if not full then
        full = true
        redis.call('HSET', groups, scan_key, entry[1])
        out[5] = 0
      end
      redis.call('XCLAIM', log, group, consumer, 0, entry[1], 'IDLE', deadline_ms,
        'RETRYCOUNT', pending[1][4] - 1, 'JUSTID')
    end
  end
  if full then
    wanted = leased
  end
end

if leased < wanted then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', wanted - leased, 'STREAMS', log, '>')
  if fresh then
    local entries = fresh[1][2]
    for k, entry in ipairs(entries) do
      if not take(entry, 1) then
        -- Give back this entry and the rest as if never read: out of the
        -- pending list, and the group's position moved back before them.
        local ids = {}
        for j = k, #entries do
          ids[#ids + 1] = entries[j][1]
        end
        redis.call('XACK', log, group, unpack(ids))
        redis.call('XGROUP', 'SETID', log, group, before(entry[1]))
        break
      end
    end
  end
  note_newest()
end
if leased > 0 then
  local ids = {}
  -- Each leased entry is 7 values (see Returns), its cursor first.
  for j = 6, #out, 7 do
    ids[#ids + 1] = out[j]
  end
  redis.call('RPUSH', record, unpack(ids))
  redis.call('PEXPIRE', record, 60000)
end
return out
