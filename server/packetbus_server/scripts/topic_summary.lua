-- What ListTopics says of one topic (_topic_listing): read only, one call per topic,
-- every key under the topic's hash tag (one slot of a Redis Cluster).
--
-- KEYS[1]  the topic's log stream  (pb:{topic}:log)
-- KEYS[2]  its consumer groups     (pb:{topic}:groups: name -> settings, and
--          "<name>:..." fields that are not groups)
-- KEYS[3]  its carcel stream       (pb:{topic}:carcel)
-- KEYS[4]  its horizon hash        (pb:{topic}:horizon: the retention limits
--          ma, mp, mb, wq)
--
-- Returns {0} when none of the four exists (the topic left the store, its index
-- entry not yet), else {1, log length, first id, last id (both "" for an empty
-- log), ma, mp, mb, wq ("" when unset), groups, carcel length}. Only the ids of
-- the log's ends leave the script, never a packet.
local log, groups, carcel, horizon = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', log, groups, carcel, horizon) == 0 then
  return {0}
end
local length = redis.call('XLEN', log)
local first, last = '', ''
if length > 0 then
  first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1][1]
  last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1][1]
end
local limits = redis.call('HMGET', horizon, 'ma', 'mp', 'mb', 'wq')
local named = 0
for _, field in ipairs(redis.call('HKEYS', groups)) do
  if not string.find(field, ':', 1, true) then
    named = named + 1
  end
end
return {
  1, length, first, last,
  limits[1] or '', limits[2] or '', limits[3] or '', limits[4] or '',
  named, redis.call('XLEN', carcel),
}
