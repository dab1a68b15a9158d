-- Records the packets a governance policy rejected or held, on one topic,
-- idempotently by tracking id: a rejected packet goes to the topic's carcel,
-- a held one to its approval queue; each decision is counted and logged.
--
-- KEYS[1]      the topic's carcel            (pb:{topic}:carcel)
-- KEYS[2]      the topic's approval queue    (pb:{topic}:held)
-- KEYS[3]      the topic's governance counts (pb:{topic}:polstats)
-- KEYS[4]      the topic's decision log      (pb:{topic}:decisions)
-- then, for packet i, ARGV[5] keys:
--   KEYS[5 + w(i-1)]  packet i's idempotency record (pb:{topic}:pkt:<tracking id>,
--                     either form: scripts/lib/records.lua)
--   KEYS[6 + w(i-1)]  on a single Redis only (w = 2 or 3): packet i's location
--                     (pb:loc:{<tracking id>}), which holds the record of a packet
--                     dispatched there (scripts/dispatch.lua)
--   KEYS[7 + w(i-1)]  on a single Redis, for a Dispatch (w = 3): packet i's place
--                     (pb:place:{<tracking id>}): a tracking id a task, finding or
--                     record holds (_placed_packets) is refused here
-- ARGV[1]      carcel retention in ms (the carcel, counts and decision log)
-- ARGV[2]      the policy version (SHA-256 hex of the policy file)
-- ARGV[3]      the deciding server's id (the decision log's actor)
-- ARGV[4]      the longest packet TTL in ms: held entries older are trimmed
-- ARGV[5]      w, keys per packet: 1 (a Redis Cluster), 2 (a single Redis: a
--              post's rejection) or 3 (a single Redis: a Dispatch's decisions)
-- ARGV[6]      the topic
-- then 4 per packet:
--   kind      "reject" or "hold"; or "taken" (on a Redis Cluster, where the
--             place is in another slot: the caller read it and a task, finding or
--             record holds the tracking id)
--   rule id   the deciding rule
--   reason    its reason
--   packet    as in scripts/dispatch.lua: 32 bytes of fingerprint, TTL ms as
--             12 digits, content length as 8 digits, tracking id (36 characters),
--             then the packet bytes (content, then its chain ending with the
--             server's "received" and "rejected"/"held" entries)
--
-- Returns one {status, id, expiry ms, rule id, reason, policy version} per packet:
--   "rejected"  in the carcel: id = its carcel entry (now, or by an earlier call)
--   "held"      in the approval queue: id = its held entry
--   "stored"    an earlier dispatch stored it on the topic: id = its cursor
--   "conflict"  the tracking id holds a different packet (or a task, finding or
--               record holds it, and no record of this topic does): nothing written
-- Every packet is read before anything is written for it, and the record
-- names the decision, so a replay answers the original result and counts nothing twice.
local carcel, held, stats, decisions = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local retention_ms, version, server_id = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local max_ttl_ms = tonumber(ARGV[4])
local width, topic = tonumber(ARGV[5]), ARGV[6]
local now_ms = clock_ms()

local function fields_of(key, id)
  local found = redis.call('XRANGE', key, id, id)
  return #found == 1 and field_table(found[1][2]) or {}
end

local function count(kind, rule, reason)
  redis.call('HINCRBY', stats, 'decision:' .. kind, 1)
  if rule ~= '' then
    redis.call('HINCRBY', stats, 'rule:' .. rule, 1)
  end
  redis.call('HINCRBY', stats, 'reason:' .. reason, 1)
  redis.call('PEXPIRE', stats, retention_ms)
end

local function log_decision(kind, tracking_id, rule, reason, ver, actor, ref)
  redis.call('XADD', decisions, '*', 'k', kind, 'i', tracking_id, 'u', rule, 'r', reason,
    'v', ver, 'a', actor, 'h', ref)
  redis.call('XTRIM', decisions, 'MINID', '~', now_ms - retention_ms)
  redis.call('PEXPIRE', decisions, retention_ms)
end

local results = {}
for i = 1, (#KEYS - 4) / width do
  local record_key = KEYS[5 + width * (i - 1)]
  local location_key = width >= 2 and KEYS[6 + width * (i - 1)] or nil
  local place_key = width == 3 and KEYS[7 + width * (i - 1)] or nil
  local base = 6 + 4 * (i - 1)
  local kind, rule, reason, packet = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local fingerprint = string.sub(packet, 1, 32)
  local existing = record_find(record_key, location_key, topic)
  if existing then
    local marker, expiry = existing.marker, existing.expiry
    if existing.fp ~= fingerprint then
      results[i] = {'conflict', '', '0', '', '', ''}
    else
      local what, id = string.match(marker, '^(%a+):(.+)$')
      if what == 'rejected' then
        local f = fields_of(carcel, id)
        results[i] = {'rejected', id, expiry, f['u'] or '', f['r'] or '', f['v'] or ''}
      elseif what == 'held' then
        local f = fields_of(held, id)
        results[i] = {'held', id, expiry, f['u'] or '', f['r'] or '', f['v'] or ''}
      else
        results[i] = {'stored', marker, expiry, '', '', ''}
      end
    end
  elseif kind == 'taken' or (place_key and redis.call('EXISTS', place_key) == 1) then
    -- After the record, so that a replay answers what the first call did.
    results[i] = {'conflict', '', '0', '', '', ''}
  else
    local ttl_ms = tonumber(string.sub(packet, 33, 44))
    local content_length = tonumber(string.sub(packet, 45, 52))
    local tracking_id = string.sub(packet, 53, 88)
    local bytes = string.sub(packet, 89)
    local expiry = now_ms + ttl_ms
    local id
    if kind == 'reject' then
      id = redis.call('XADD', carcel, '*', 'p', bytes, 'n', content_length, 't', ttl_ms,
        'i', tracking_id, 'c', 'policy', 'r', reason, 'd', 'rejected by policy rule ' .. rule,
        's', 'policy', 'a', 0, 'u', rule, 'v', version)
      redis.call('XTRIM', carcel, 'MINID', '~', now_ms - retention_ms)
      redis.call('PEXPIRE', carcel, retention_ms)
      record_write(record_key, fingerprint, 'rejected:' .. id, expiry)
      count('rejected', rule, reason)
      log_decision('rejected', tracking_id, rule, reason, version, server_id, id)
      results[i] = {'rejected', id, tostring(expiry), rule, reason, version}
    else
      id = redis.call('XADD', held, '*', 'p', bytes, 'n', content_length, 't', ttl_ms,
        'i', tracking_id, 'u', rule, 'r', reason, 'v', version)
      redis.call('XTRIM', held, 'MINID', '~', now_ms - max_ttl_ms)
      if redis.call('PTTL', held) < ttl_ms then
        redis.call('PEXPIRE', held, ttl_ms)
      end
      record_write(record_key, fingerprint, 'held:' .. id, expiry)
      count('held', rule, reason)
      log_decision('held', tracking_id, rule, reason, version, server_id, id)
      results[i] = {'held', id, tostring(expiry), rule, reason, version}
    end
  end
end
return results
