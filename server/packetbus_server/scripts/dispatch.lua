#!lua
-- Stores a batch of packets on one topic, idempotently by tracking id.
--
-- The shebang (no flags) makes Redis refuse the whole script up front when it
-- is out of memory, instead of failing halfway through a batch.
--
-- KEYS[1]  the topic's log stream (pb:{topic}:log); each entry has p = packet
--          bytes, n = the length of their content prefix (the packet without its
--          chain of custody), t = TTL in ms (it expires at the entry id's ms + t)
--          and i = the tracking id
-- KEYS[2]  the topic's consumer groups (pb:{topic}:groups): while the topic has
--          any, its log does not expire as a whole (the groups live in it)
-- KEYS[3]  the topic's horizon (pb:{topic}:horizon), what subscribers need to
--          tell a gap: t = the newest entry retention trimmed, x = the newest
--          entry lost with a log that expired as a whole, l = the newest entry
--          this script appended
-- then, for packet i, ARGV[2] keys:
--   KEYS[4 + w(i-1)]      packet i's idempotency record   (pb:{topic}:pkt:<tracking id>)
--   KEYS[5 + w(i-1)]      packet i's location             (pb:loc:{<tracking id>}), only
--                         when w = 2: on a single Redis the location is claimed here;
--                         on a Redis Cluster it lives in another slot and the caller
--                         claims it beforehand (w = 1)
-- ARGV[1]  retention in ms: log entries older than now - retention are trimmed
--          (exactly, so the horizon names exactly the newest entry that went)
-- ARGV[2]  w, keys per packet: 1 or 2
-- ARGV[3]  the topic
-- ARGV[3 + i]  packet i, as one string (one argument per packet keeps the
--              command small to encode): 64 hex digits of its fingerprint (the
--              SHA-256 of the packet as received), its TTL in ms as 12 digits,
--              the length of its content prefix as 8 digits, its tracking id
--              (36 characters), then its serialized bytes: content, then chain
--              of custody
--
-- Returns one {status, cursor, expiry ms} per packet, in order:
--   status "new"       stored now
--   status "dup"       stored before with the same fingerprint: the original cursor and expiry
--   status "conflict"  the tracking id holds a different packet: nothing written
-- Everything about a packet is read before anything is written for it, so
-- replaying the script after a lost reply stores nothing twice.
--
-- Entries leave the log only as a prefix (trimming below a rising threshold,
-- or the whole log expiring), so "everything up to the horizon's newest lost
-- entry is gone" is the whole story a subscriber needs.
local log = KEYS[1]
local groups = KEYS[2]
local horizon = KEYS[3]
local retention_ms = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local topic = ARGV[3]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local threshold = now_ms - retention_ms

local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)-'))
end

-- The newest entry below the trim threshold that is a publication, or nil
-- when there is none. An entry with field g is a requeue for one consumer
-- group, which subscribers never see: naming it would tell them of a gap that
-- is not one. A few entries are looked at; when all are requeues and there
-- are more, the oldest of them is named, which can only over-report.
local function newest_publication_below(limit)
  local scan = 8
  local below = redis.call('XREVRANGE', log, '(' .. limit .. '-0', '-', 'COUNT', scan)
  for _, entry in ipairs(below) do
    local fields = entry[2]
    local requeue = false
    for j = 1, #fields, 2 do
      if fields[j] == 'g' then requeue = true end
    end
    if not requeue then return entry[1] end
  end
  if #below == scan then return below[scan][1] end
  return nil
end

local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)

local results = {}
local newest_expiry = 0
local newest_cursor = nil
for i = 1, (#KEYS - 3) / width do
  local record_key = KEYS[4 + width * (i - 1)]
  local location_key = width == 2 and KEYS[5 + width * (i - 1)] or nil
  local packet = ARGV[3 + i]
  local fingerprint = string.sub(packet, 1, 64)
  local owner = location_key and redis.call('GET', location_key)
  local existing = redis.call('GET', record_key)
  if owner and owner ~= topic then
    results[i] = {'conflict', '', '0'}
  elseif existing then
    local stored_fp, cursor, expiry = string.match(existing, '^(%S+) (%S+) (%S+)$')
    if stored_fp == fingerprint then
      results[i] = {'dup', cursor, expiry}
    else
      results[i] = {'conflict', cursor, expiry}
    end
  else
    local ttl_ms = tonumber(string.sub(packet, 65, 76))
    local content_length = tonumber(string.sub(packet, 77, 84))
    local tracking_id = string.sub(packet, 85, 120)
    local cursor = redis.call(
      'XADD', log, '*', 'p', string.sub(packet, 121), 'n', content_length, 't', ttl_ms, 'i', tracking_id)
    -- Expiry counts from the cursor's millisecond (the packet's stored_at),
    -- which XADD may take from the last id rather than from TIME.
    local expiry = tonumber(string.match(cursor, '^(%d+)-')) + ttl_ms
    redis.call('SET', record_key, fingerprint .. ' ' .. cursor .. ' ' .. expiry, 'PX', ttl_ms)
    if location_key and not owner then
      redis.call('SET', location_key, topic, 'PX', ttl_ms)
    end
    if expiry > newest_expiry then
      newest_expiry = expiry
    end
    newest_cursor = cursor
    results[i] = {'new', cursor, tostring(expiry)}
  end
end

if newest_expiry > 0 then
  local marks = {'l', newest_cursor}
  if #oldest == 0 then
    -- The log held nothing before this call (it expired as a whole, or only
    -- groups were left in it): the newest entry it had is gone.
    local last = redis.call('HGET', horizon, 'l')
    if last then
      table.insert(marks, 'x')
      table.insert(marks, last)
    end
  elseif id_ms(oldest[1][1]) < threshold then
    local trimmed = newest_publication_below(threshold)
    if trimmed then
      table.insert(marks, 't')
      table.insert(marks, trimmed)
    end
    redis.call('XTRIM', log, 'MINID', threshold)
  end
  redis.call('HSET', horizon, unpack(marks))

  local keep = newest_expiry - now_ms
  if redis.call('EXISTS', groups) == 1 then
    -- Consumer groups live in the log: it stays while they do (entries are
    -- still trimmed by retention, and expire one by one).
    redis.call('PERSIST', log)
  else
    -- The log lives as long as its newest packet.
    local remaining = redis.call('PTTL', log)
    if remaining < keep then
      redis.call('PEXPIRE', log, keep)
    else
      keep = remaining
    end
  end
  -- The horizon outlives the log by the retention, so a subscriber resuming
  -- an old cursor after the log expired is still told what it missed.
  redis.call('PEXPIRE', horizon, keep + retention_ms)
end
return results
