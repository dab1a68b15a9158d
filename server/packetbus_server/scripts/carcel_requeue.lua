-- Puts a carceled packet back on its topic for the consumer group it came from.
--
-- KEYS[1]  the topic's carcel          (pb:{topic}:carcel)
-- KEYS[2]  the topic's log stream      (pb:{topic}:log)
-- KEYS[3]  the topic's group registry  (pb:{topic}:groups)
-- KEYS[4]  the packet's custody hops   (pb:{topic}:hops:<tracking id>)
-- (and the sealed batch the entry refers to, built from KEYS[2]: lib/batches.lua)
-- ARGV[1]  the carcel entry id
-- ARGV[2]  hops the packet has before the "requeued" one
-- ARGV[3]  the serialized, signed "requeued" custody entry (empty when the
--          server does not sign custody entries)
-- ARGV[4]  its hash
-- ARGV[5]  the id of the RequeueCarcelEntry call (the same for the server's own
--          retries of this script within it; no spaces)
--
-- Returns {"ok", new cursor}, {"gone"} (no such carcel entry), {"stale", hop
-- count, newest hop hash} (sign again) or {"nogroup", source} (its group was
-- deleted, or it came from no group). The packet's hops keep the last requeue
-- (field rq: "<carcel entry id> <call id> <new cursor>"), so the same call's
-- retry after a lost reply answers {"ok", the same cursor}; another call (sent
-- again by a client, or at the same time) finds the entry gone, as the proto says.
-- The new log entry is for that group only (field g), so other groups and
-- subscribers do not see the packet twice. The group's count of releases of the
-- packet (field r:<group>, settle.lua) starts again, as its attempts do.
local carcel, log, groups, hops = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local found = redis.call('XRANGE', carcel, ARGV[1], ARGV[1])
if #found == 0 then
  -- Requeued before (a replay after a lost reply): the same answer.
  local last = redis.call('HGET', hops, 'rq')
  if last then
    local entry, call, cursor = string.match(last, '^(%S+) (%S+) (%S+)$')
    if entry == ARGV[1] and call == ARGV[5] then
      return {'ok', cursor}
    end
  end
  return {'gone'}
end
local f = {}
local fields = found[1][2]
for j = 1, #fields, 2 do
  f[fields[j]] = fields[j + 1]
end
local group = string.match(f['s'], '^group:(.+)$')
if not group or not redis.call('HGET', groups, group) then
  return {'nogroup', f['s']}
end
if ARGV[3] ~= '' and hop_count(hops) ~= tonumber(ARGV[2]) then
  return {'stale', tostring(hop_count(hops)), redis.call('HGET', hops, 'h') or ''}
end
local cursor = redis.call('XADD', log, '*', 'p', f['p'], 'n', f['n'], 't', f['t'], 'i', f['i'], 'g', group,
  'b', f['b'] or '')
redis.call('XDEL', carcel, ARGV[1])
redis.call('HSET', hops, 'rq', ARGV[1] .. ' ' .. ARGV[5] .. ' ' .. cursor)
-- Forgiven with its attempts: the group's releases of it count from zero again.
redis.call('HDEL', hops, 'r:' .. group)
local expires_ms = tonumber(string.match(cursor, '^(%d+)-')) + tonumber(f['t'])
-- Back in the log with a fresh TTL: its batch must last as long.
keep_batch(log, f['b'], tonumber(f['t']))
if ARGV[3] ~= '' then
  append_hop(hops, tonumber(ARGV[2]), ARGV[3], ARGV[4], expires_ms)
end
keep_until(hops, expires_ms)
return {'ok', cursor}
