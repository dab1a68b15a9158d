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
-- Returns {0} when none of the four exists (as its type) (the topic left the store, its index
-- entry not yet), else {1, log length, first id, last id (both "" for an empty
-- log), ma, mp, mb, wq ("" when unset), groups, carcel length}. Only the ids of
-- the log's ends leave the script, never a packet.
-- A key of another Redis type than the one named above (not a key this server
-- wrote: a foreign program's, a restore gone wrong) is read as absent, so one
-- such name never fails the whole listing.
local function typed(key, kind)
  if redis.call('TYPE', key).ok == kind then
    return key
  end
  return nil
end
local log = typed(KEYS[1], 'stream')
local groups = typed(KEYS[2], 'hash')
local carcel = typed(KEYS[3], 'stream')
local horizon = typed(KEYS[4], 'hash')
if not (log or groups or carcel or horizon) then
  return {0}
end
local length = 0
local first, last = '', ''
if log then
  length = redis.call('XLEN', log)
  if length > 0 then
    first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1][1]
    last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1][1]
  end
end
local limits = {false, false, false, false}
if horizon then
  limits = redis.call('HMGET', horizon, 'ma', 'mp', 'mb', 'wq')
end
local named = 0
if groups then
  for _, field in ipairs(redis.call('HKEYS', groups)) do
    if not string.find(field, ':', 1, true) then
      named = named + 1
    end
  end
end
local carceled = 0
if carcel then
  carceled = redis.call('XLEN', carcel)
end
return {
  1, length, first, last,
  limits[1] or '', limits[2] or '', limits[3] or '', limits[4] or '',
  named, carceled,
}
