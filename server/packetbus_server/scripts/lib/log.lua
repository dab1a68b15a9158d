-- Library, prepended to the scripts that append packets to a topic's log
-- (dispatch, and the approval of held packets) after lib/retention.lua, whose
-- functions it calls; never run alone.
--
-- Entries leave the log only as a prefix (trimming below a rising threshold,
-- or the whole log expiring), so "everything up to the horizon's newest lost
-- entry is gone" is the whole story a subscriber needs.

local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)-'))
end

-- After packets were appended to `log` (the newest at `newest_cursor`, the
-- latest expiry `newest_expiry` ms): record the horizon, trim by retention,
-- and keep the log and its horizon alive. `oldest` is the log's first entry
-- as it was before the appends (XRANGE log - + COUNT 1).
local function after_append(log, groups, horizon, oldest, newest_cursor, newest_expiry, now_ms, retention_ms)
  local threshold = now_ms - retention_ms
  local marks = {'l', newest_cursor}
  -- The topic's own limits (lib/retention.lua) trim by the server-wide
  -- retention too, when it has any.
  count_appended(log, horizon, oldest)
  local limited = apply_limits(log, horizon, now_ms, retention_ms)
  if #oldest == 0 then
    -- The log held nothing before this call (it expired as a whole, or only
    -- groups were left in it): the newest entry it had is gone.
    local last = redis.call('HGET', horizon, 'l')
    if last then
      table.insert(marks, 'x')
      table.insert(marks, last)
    end
  elseif not limited and id_ms(oldest[1][1]) < threshold then
    local trimmed = rt_newest_publication_below(log, threshold .. '-0')
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
  -- an old cursor after the log expired is still told what it missed; one
  -- holding the topic's limits stays.
  if not limited then
    redis.call('PEXPIRE', horizon, keep + retention_ms)
  end
end
