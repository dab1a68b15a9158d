-- Removes an agent and, with cascade, every agent whose parent chain leads to it.
--
-- KEYS[1]  pb:{agents}:ids       (zset: registered ids)
-- KEYS[2]  pb:{agents}:deadlines (zset: id -> stale-at or removed-at ms)
-- KEYS[3]  pb:{agents}:events    (stream: membership events)
-- KEYS[4]  pb:{agents}:releasing (zset: id -> ms, agents whose tasks are to be released)
-- Derived keys (see lib/agents.lua): agent hashes, children and queue sets.
-- ARGV[1]  key prefix "pb:{agents}:"
-- ARGV[2]  most events kept (MAXLEN ~)
-- ARGV[3]  event retention ms
-- ARGV[4]  agent id
-- ARGV[5]  "1" to cascade
--
-- Each removed agent is a LEFT event; the tasks they claimed are released by
-- the reapers (their ids go to KEYS[4]).
-- Returns the removed ids, the one asked for first, or {} when it is not
-- registered (nothing written).
local prefix, id = ARGV[1], ARGV[4]
if redis.call('EXISTS', prefix .. 'agent:' .. id) == 0 then
  return {}
end
local order, seen = {id}, {[id] = true}
if ARGV[5] == '1' then
  local j = 1
  while j <= #order do
    for _, child in ipairs(redis.call('SMEMBERS', prefix .. 'children:' .. order[j])) do
      if not seen[child] and redis.call('EXISTS', prefix .. 'agent:' .. child) == 1 then
        seen[child] = true
        order[#order + 1] = child
      end
    end
    j = j + 1
  end
end
local now = clock_ms()
for j, agent in ipairs(order) do
  local reason = j == 1 and 'deregistered' or ('deregistered with ' .. id)
  remove_agent(prefix, agent, hash_fields(prefix .. 'agent:' .. agent), reason, now)
end
return order
