-- Sets a topic's retention limits and applies them at once (lib/retention.lua).
--
-- KEYS[1]  the topic's log stream (pb:{topic}:log)
-- KEYS[2]  the topic's horizon    (pb:{topic}:horizon), which holds the limits:
--          ma, mp, mb, wq, and sb = the log's bytes while mb is set
-- ARGV[1]  max age ms      (0: none)
-- ARGV[2]  max packets     (0: none)
-- ARGV[3]  max bytes       (0: none)
-- ARGV[4]  "1": work-queue retention, "0": limits only
-- ARGV[5]  the server-wide retention ms (the horizon's expiry once it holds
--          no limits again)
--
-- Returns the number of entries the settings removed. Setting the same
-- values again removes nothing more and changes nothing: safe to replay.
local log, horizon = KEYS[1], KEYS[2]
local values = {ma = ARGV[1], mp = ARGV[2], mb = ARGV[3], wq = ARGV[4]}
local retention_ms = tonumber(ARGV[5])
local now_ms = clock_ms()

local counted = redis.call('HEXISTS', horizon, 'mb') == 1
for _, name in ipairs({'ma', 'mp', 'mb', 'wq'}) do
  if tonumber(values[name]) > 0 then
    redis.call('HSET', horizon, name, values[name])
  else
    redis.call('HDEL', horizon, name)
  end
end
if tonumber(values.mb) == 0 then
  redis.call('HDEL', horizon, 'sb')
elseif not counted then
  -- The byte count starts now, from what the log holds.
  redis.call('HSET', horizon, 'sb', rt_bytes(log, '-', '+'))
end

local removed = apply_limits(log, horizon, now_ms, retention_ms)
if not removed then
  -- No limits any more: the horizon expires as lib/log.lua keeps it, the
  -- retention after the log.
  if redis.call('EXISTS', horizon) == 1 then
    local remaining = redis.call('PTTL', log)
    if remaining < 0 then remaining = 0 end
    redis.call('PEXPIRE', horizon, remaining + retention_ms)
  end
  return 0
end
return removed
