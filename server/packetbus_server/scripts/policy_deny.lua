-- Moves a held packet to its topic's carcel: an agent denied it.
--
-- KEYS[1]  the topic's approval queue      (pb:{topic}:held)
-- KEYS[2]  the topic's carcel              (pb:{topic}:carcel)
-- KEYS[3]  the packet's idempotency record (pb:{topic}:pkt:<tracking id>,
--          either form: scripts/lib/records.lua)
-- KEYS[4]  the topic's governance counts   (pb:{topic}:polstats)
-- KEYS[5]  the topic's decision log        (pb:{topic}:decisions)
-- KEYS[6]  on a single Redis only: the packet's location (pb:loc:{<tracking id>}),
--          which holds the record of a packet dispatched there (then: "stored")
-- ARGV[1]  carcel retention in ms
-- ARGV[2]  the held entry id the denial was signed for
-- ARGV[3]  the denier's agent id
-- ARGV[4]  the denier's reason
-- ARGV[5]  the packet bytes: content, then its chain ending with the denier's
--          "denied" entry
-- ARGV[6]  the topic
--
-- Returns:
--   {"ok", carcel entry id}         carceled now
--   {"denied", carcel entry id, source}  in the carcel before (a replay when
--                                   source is "approval:<agent>")
--   {"stored", cursor}              approved before
--   {"gone"}                        no such held packet
--   {"moved", marker}               held again under another entry (sign again)
local held, carcel, record_key, stats, decisions = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local retention_ms, held_id, denier, reason, payload =
  tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now_ms = clock_ms()

local existing = record_find(record_key, KEYS[6], ARGV[6])
if not existing then
  return {'gone'}
end
local marker = existing.marker
if string.match(marker, '^%d+%-%d+$') then
  return {'stored', marker}
end
local what, id = string.match(marker, '^(%a+):(.+)$')
if what == 'rejected' then
  local found = redis.call('XRANGE', carcel, id, id)
  local source = ''
  if #found == 1 then
    source = field_table(found[1][2])['s'] or source
  end
  return {'denied', id, source}
end
if id ~= held_id then
  return {'moved', marker}
end
local found = redis.call('XRANGE', held, held_id, held_id)
if #found == 0 then
  return {'gone'}
end
local f = field_table(found[1][2])
local stable = 'denied by approver'
local carcel_id = redis.call('XADD', carcel, '*', 'p', payload, 'n', f['n'], 't', f['t'],
  'i', f['i'], 'c', 'policy', 'r', stable, 'd', reason, 's', 'approval:' .. denier, 'a', 0,
  'u', f['u'], 'v', f['v'])
redis.call('XTRIM', carcel, 'MINID', '~', now_ms - retention_ms)
redis.call('PEXPIRE', carcel, retention_ms)
record_remark(record_key, existing, 'rejected:' .. carcel_id)
redis.call('XDEL', held, held_id)

redis.call('HINCRBY', stats, 'decision:denied', 1)
redis.call('HINCRBY', stats, 'reason:' .. stable, 1)
redis.call('PEXPIRE', stats, retention_ms)
redis.call('XADD', decisions, '*', 'k', 'denied', 'i', f['i'], 'u', f['u'], 'r', reason,
  'v', f['v'], 'a', denier, 'h', carcel_id)
redis.call('XTRIM', decisions, 'MINID', '~', now_ms - retention_ms)
redis.call('PEXPIRE', decisions, retention_ms)
return {'ok', carcel_id}
