-- Library: a topic's own retention limits (TopicService.SetTopicRetention),
-- prepended before lib/log.lua to the scripts that append to a topic's log,
-- and to the retention scripts; never run alone.
--
-- The limits live in the topic's horizon hash (pb:{topic}:horizon), beside
-- what subscribers need to tell a gap, so every script that appends already
-- holds the key: ma = max age ms, mp = max packets, mb = max bytes, wq = "1"
-- for work-queue retention, sb = bytes of the entries in the log (kept only
-- while mb is set). A horizon holding limits never expires.
--
-- Entries leave only as a prefix (XTRIM MINID), and the newest publication
-- removed is recorded as t, so subscribers are told of a gap exactly as for
-- the server-wide retention (lib/log.lua).

local function rt_parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- a < b for stream ids
local function rt_less(a, b)
  local am, as = rt_parse(a)
  local bm, bs = rt_parse(b)
  return am < bm or (am == bm and as < bs)
end

local function rt_successor(id)
  local ms, seq = rt_parse(id)
  return ms .. '-' .. (seq + 1)
end

-- Bytes of an entry (its packet bytes) and whether it is a publication (an
-- entry with g is a requeue for one group, which subscribers never see).
local function rt_entry(entry)
  local fields = entry[2]
  local bytes, publication = 0, true
  for j = 1, #fields, 2 do
    if fields[j] == 'p' then
      bytes = #fields[j + 1]
    elseif fields[j] == 'g' then
      publication = false
    end
  end
  return bytes, publication
end

-- Bytes of the entries of `log` in [from, to] ('-'/'+' allowed; '(' for exclusive).
local function rt_bytes(log, from, to)
  local total = 0
  local page = 256
  local start = from
  while true do
    local entries = redis.call('XRANGE', log, start, to, 'COUNT', page)
    for _, entry in ipairs(entries) do
      total = total + rt_entry(entry)
    end
    if #entries < page then return total end
    start = '(' .. entries[#entries][1]
  end
end

-- The newest entry of `log` below `bound` (an id) that is a publication, or
-- nil when there is none: naming a requeue would tell subscribers of a gap
-- that is not one. A few entries are looked at; when all are requeues and
-- there are more, the oldest of them is named, which can only over-report.
-- (Also lib/log.lua's, for the server-wide retention.)
local function rt_newest_publication_below(log, bound)
  local scan = 8
  local below = redis.call('XREVRANGE', log, '(' .. bound, '-', 'COUNT', scan)
  for _, entry in ipairs(below) do
    local _, publication = rt_entry(entry)
    if publication then return entry[1] end
  end
  if #below == scan then return below[scan][1] end
  return nil
end

-- Remove the entries of `log` below `bound` (an id), recording the newest
-- publication among them as the horizon's t; returns how many went. While
-- bytes are counted, `gone` is their bytes when the caller has read them
-- already (nil: read here).
local function rt_trim_below(log, horizon, bound, counting_bytes, gone)
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first == 0 or not rt_less(first[1][1], bound) then return 0 end
  local trimmed = rt_newest_publication_below(log, bound)
  if counting_bytes then
    gone = gone or rt_bytes(log, '-', '(' .. bound)
    local left = tonumber(redis.call('HINCRBY', horizon, 'sb', -gone))
    if left < 0 then redis.call('HSET', horizon, 'sb', 0) end
  end
  if trimmed then redis.call('HSET', horizon, 't', trimmed) end
  return redis.call('XTRIM', log, 'MINID', bound)
end

-- The first entry some consumer group of `log` has not acked: the oldest
-- pending delivery, or the first never delivered; nil when no group.
local function rt_unacked_floor(log)
  if redis.call('EXISTS', log) == 0 then return nil end
  local floor = nil
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', log)) do
    local g = {}
    for j = 1, #info, 2 do g[info[j]] = info[j + 1] end
    local candidate
    if tonumber(g['pending']) > 0 then
      candidate = redis.call('XPENDING', log, g['name'])[2]
    else
      candidate = rt_successor(g['last-delivered-id'])
    end
    if not floor or rt_less(candidate, floor) then floor = candidate end
  end
  return floor
end

-- Work-queue retention: drop what every group acked. Returns how many went.
local function rt_work_queue(log, horizon)
  local floor = rt_unacked_floor(log)
  if not floor then return 0 end
  return rt_trim_below(log, horizon, floor, redis.call('HEXISTS', horizon, 'mb') == 1)
end

-- Apply the topic's limits (and the server-wide retention, which they never
-- lengthen). Returns nil when the topic has none, else how many entries went.
local function apply_limits(log, horizon, now_ms, retention_ms)
  local l = redis.call('HMGET', horizon, 'ma', 'mp', 'mb', 'wq', 'sb')
  local ma, mp, mb, wq = tonumber(l[1]), tonumber(l[2]), tonumber(l[3]), l[4]
  if not (ma or mp or mb or wq) then return nil end
  local counting = mb ~= nil
  local removed = 0
  local age = retention_ms
  if ma and ma < age then age = ma end
  removed = removed + rt_trim_below(log, horizon, (now_ms - age) .. '-0', counting)
  if mp then
    local excess = redis.call('XLEN', log) - mp
    if excess > 0 then
      -- In pages: a limit set on a long log removes many entries at once, and one
      -- XRANGE of them all would hold every packet in the script's memory.
      local bytes, last, start = 0, nil, '-'
      while excess > 0 do
        local gone = redis.call('XRANGE', log, start, '+', 'COUNT', math.min(excess, 256))
        if #gone == 0 then break end
        for _, entry in ipairs(gone) do
          bytes = bytes + rt_entry(entry)
        end
        excess = excess - #gone
        last = gone[#gone][1]
        start = '(' .. last
      end
      removed = removed + rt_trim_below(log, horizon, rt_successor(last), counting, bytes)
    end
  end
  if mb then
    local over = tonumber(redis.call('HGET', horizon, 'sb') or '0') - mb
    local bound, gone = nil, 0
    local start = '-'
    while over > 0 do
      -- Small pages: usually a batch's worth of the oldest entries goes.
      local entries = redis.call('XRANGE', log, start, '+', 'COUNT', 64)
      if #entries == 0 then break end
      for _, entry in ipairs(entries) do
        local bytes = rt_entry(entry)
        over, gone = over - bytes, gone + bytes
        bound = rt_successor(entry[1])
        if over <= 0 then break end
      end
      start = '(' .. entries[#entries][1]
    end
    if bound then removed = removed + rt_trim_below(log, horizon, bound, counting, gone) end
  end
  if wq then removed = removed + rt_work_queue(log, horizon) end
  redis.call('PERSIST', horizon)
  return removed
end

-- Count the bytes of the entries appended since the horizon's l (only while
-- a byte limit is set). `oldest` is the log's first entry before the appends:
-- none means the log had expired as a whole, and its count with it.
local function count_appended(log, horizon, oldest)
  if redis.call('HEXISTS', horizon, 'mb') == 0 then return end
  local last = redis.call('HGET', horizon, 'l')
  if #oldest == 0 or not last then
    redis.call('HSET', horizon, 'sb', rt_bytes(log, '-', '+'))
  else
    redis.call('HINCRBY', horizon, 'sb', rt_bytes(log, '(' .. last, '+'))
  end
end
