-- Settles a consumer group's deliveries: ack, nack, extend, or move to the carcel.
--
-- KEYS[1]      the topic's log stream      (pb:{topic}:log)
-- KEYS[2]      the topic's group registry  (pb:{topic}:groups)
-- KEYS[3]      the topic's carcel          (pb:{topic}:carcel)
-- (a carceled entry's sealed batch is built from KEYS[1]: lib/batches.lua)
-- KEYS[3 + i]  item i's custody hops       (pb:{topic}:hops:<tracking id>)
-- ARGV[1]      group name
-- ARGV[2]      carcel retention in ms
-- then 3 per item:
--   what        "<kind> <cursor> <count> <expected> <expiry> <argument>", one string
--               (one argument instead of six: this runs for every ack):
--     kind      "ack", "nack", "release" (a nack that does not count the attempt,
--               for the first max(max attempts, 10) releases of the packet in the group:
--               field "r:<group>" of its hops counts them), "extend" or "carcel"
--     cursor    the packet's log entry
--     count     the delivery count the settlement answers (the lease's fence)
--     expected  hops the packet has before this settlement's own (unused by extend)
--     expiry    unix ms the packet expires at: its hops are kept until then
--     argument  nack: redeliver after this many ms; carcel:
--               "reason\ndetail\nsource\ndeliveries" (the deliveries made: the
--               count, or one less when the lease of the last one ran out, the
--               pull that found it having counted a delivery it did not make);
--               otherwise empty
--   entry       its serialized, signed custody entry (empty for extend, and when
--               the server does not sign custody entries)
--   entry hash  SHA-256(0x00 || the entry's record)
--
-- Returns one {status, value} per item:
--   "ok"     done; value = the new lease end in ms (extend), the carcel entry id (carcel)
--   "gone"   not outstanding (settled before, carceled, or never delivered);
--            value = the group's last settlement of the packet ("<cursor>:<count> <kind>")
--   "lost"   delivered again since; value = the delivery count now
--   "stale"  the packet's chain has other hops now: value = their count, then the
--            newest one's hash (sign again after it)
-- An item is checked in full before anything is written for it, and a settled
-- delivery is recorded, so replaying the script after a lost reply answers
-- "gone" with this very settlement instead of doing it twice.
--
-- Cost: this runs for every ack, so the pending entries of the batch are read
-- with one XPENDING over the range from its first cursor to its last (bounded:
-- what it does not cover is read item by item), and the acks' XACK is one call
-- at the end; an item settled earlier in the same run is answered from what
-- this run did.
local log, groups, carcel = KEYS[1], KEYS[2], KEYS[3]
local group, retention_ms = ARGV[1], tonumber(ARGV[2])
local settings = redis.call('HGET', groups, group)
if not settings then
  return {'nogroup'}
end
local deadline_ms, max_attempts = string.match(settings, '^(%d+) (%d+) ')
deadline_ms, max_attempts = tonumber(deadline_ms), tonumber(max_attempts)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local marker = 's:' .. group
local items = #KEYS - 3

-- The pending entries between the first item's cursor and the last's, by
-- cursor: read once, at most 2 per item (other consumers' leases interleave).
-- A consumer acks in the order it was given, so they are usually all of the
-- batch's; a cursor not among them (not pending, past what was read, or the
-- items out of order) is looked up on its own, as every item was before.
local known = {}
if items > 1 then
  local first = string.match(ARGV[3], '^%a+ (%S+) ')
  local last = string.match(ARGV[2 + 3 * (items - 1) + 1], '^%a+ (%S+) ')
  if first and last then
    for _, p in ipairs(redis.call('XPENDING', log, group, first, last, 2 * items)) do
      known[p[1]] = p
    end
  end
end

-- Cursors acked in this run (their XACK goes at the end) and cursors whose
-- pending entry this run changed: looked up again, not taken from `known`.
local acked, changed, to_ack = {}, {}, {}

local function pending_of(cursor)
  if acked[cursor] then
    return {}
  end
  local p = not changed[cursor] and known[cursor]
  if p then
    return {p}
  end
  return redis.call('XPENDING', log, group, cursor, cursor, 1)
end

local results = {}
for i = 1, items do
  local hops = KEYS[3 + i]
  local base = 2 + 3 * (i - 1)
  local kind, cursor, count, expected, expires_ms, argument =
    string.match(ARGV[base + 1], '^(%a+) (%S+) (%d+) (%d+) (%d+) (.*)$')
  count, expected, expires_ms = tonumber(count), tonumber(expected), tonumber(expires_ms)
  local entry, entry_hash = ARGV[base + 2], ARGV[base + 3]
  local pending = pending_of(cursor)
  local hop_n = entry ~= '' and kind ~= 'extend' and hop_count(hops)
  if #pending == 0 then
    results[i] = {'gone', redis.call('HGET', hops, marker) or ''}
  elseif pending[1][4] ~= count then
    results[i] = {'lost', tostring(pending[1][4])}
  elseif kind == 'extend' then
    changed[cursor] = true
    redis.call('XCLAIM', log, group, pending[1][2], 0, cursor, 'IDLE', 0, 'JUSTID')
    results[i] = {'ok', tostring(now_ms + deadline_ms)}
  elseif hop_n and hop_n ~= expected then
    results[i] = {'stale', tostring(hop_n), redis.call('HGET', hops, 'h') or ''}
  else
    local value = ''
    changed[cursor] = true
    if kind == 'ack' then
      acked[cursor] = true
      to_ack[#to_ack + 1] = cursor
    elseif kind == 'nack' then
      -- Idle for deadline - delay: leased again once `delay` has passed.
      local idle = math.max(0, deadline_ms - tonumber(argument))
      redis.call('XCLAIM', log, group, pending[1][2], 0, cursor, 'IDLE', idle, 'JUSTID')
    elseif kind == 'release' then
      -- Leased again at once. The first max(max_attempts, 10) releases of a
      -- packet in the group do not count the attempt (the claim that leases it
      -- again counts this one again); later ones count as a nack does. Each
      -- release adds two hops (released, delivered), so a consumer that keeps
      -- releasing a packet would grow its chain of custody without bound, and
      -- never carcel it. At least 10: a consumer restarted a few times gives
      -- back what it had received unseen, even in a group of one attempt.
      local releases = redis.call('HINCRBY', hops, 'r:' .. group, 1)
      if releases <= math.max(max_attempts, 10) then
        redis.call('XCLAIM', log, group, pending[1][2], 0, cursor, 'IDLE', deadline_ms,
          'RETRYCOUNT', count - 1, 'JUSTID')
      else
        redis.call('XCLAIM', log, group, pending[1][2], 0, cursor, 'IDLE', deadline_ms, 'JUSTID')
      end
    elseif kind == 'carcel' then
      acked[cursor] = true
      redis.call('XACK', log, group, cursor)
      local found = redis.call('XRANGE', log, cursor, cursor)
      if #found == 1 then
        local f = {}
        local fields = found[1][2]
        for j = 1, #fields, 2 do
          f[fields[j]] = fields[j + 1]
        end
        local reason, detail, source, deliveries =
          string.match(argument, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n(%d+)$')
        value = redis.call('XADD', carcel, '*', 'p', f['p'], 'n', f['n'], 't', f['t'], 'i', f['i'] or '',
          'c', cursor, 'r', reason, 'd', detail, 's', source, 'a', deliveries, 'b', f['b'] or '')
        keep_batch(log, f['b'], retention_ms)
        redis.call('XTRIM', carcel, 'MINID', '~', now_ms - retention_ms)
        redis.call('PEXPIRE', carcel, retention_ms)
        -- The chain must outlive the packet while it sits in the carcel.
        expires_ms = now_ms + retention_ms
      end
    end
    local settled = cursor .. ':' .. count .. ' ' .. kind
    if entry ~= '' then
      put_hop(hops, expected, entry, entry_hash, expires_ms, marker, settled)
    else
      redis.call('HSET', hops, marker, settled)
    end
    if entry == '' or kind == 'carcel' then
      keep_until(hops, expires_ms)
    end
    results[i] = {'ok', value}
  end
end
-- In slices: Lua's unpack has a stack limit.
for j = 1, #to_ack, 1000 do
  redis.call('XACK', log, group, unpack(to_ack, j, math.min(j + 999, #to_ack)))
end
return results
