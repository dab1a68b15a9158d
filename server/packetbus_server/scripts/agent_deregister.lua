-- Removes an agent and, with cascade, every agent whose parent chain leads to it.
--
-- KEYS[1]  pb:{agents}:ids       (zset: registered ids)
-- KEYS[2]  pb:{agents}:deadlines (zset: id -> stale-at or removed-at ms)
-- KEYS[3]  pb:{agents}:events    (stream: membership events)
-- KEYS[4]  pb:{agents}:releasing (zset: id -> ms, agents whose tasks are to be released)
-- KEYS[5]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/agents.lua): agent hashes, children and queue sets.
-- ARGV[1]  key prefix "pb:{agents}:"
-- ARGV[2]  most events kept (MAXLEN ~)
-- ARGV[3]  event retention ms
-- ARGV[4]  agent id
-- ARGV[5]  "1" to cascade
-- ARGV[6]  the call's id (a new one per DeregisterAgent call, the same for the
--          store's retries of it): what the call removed is kept under it for a
--          minute (<prefix>deregistered:<call id>), so a retry after a lost
--          reply answers that instead of "not registered"
-- ARGV[7]  with cascade, "1" when only the descendants in ARGV[8] may be removed
--          (the caller checked its right to each: issue 14), else ""
-- ARGV[8]  those descendants' ids, separated by newlines (ids are printable)
--
-- Each removed agent is a LEFT event; the tasks they claimed are released by
-- the reapers (their ids go to KEYS[4]).
-- Returns the removed ids, the one asked for first, or {} when it is not
-- registered (nothing written), or {{"unchecked", id}} when the cascade found a
-- descendant ARGV[8] does not list (one attached since the caller looked;
-- nothing written: the caller checks again).
local prefix, id = ARGV[1], ARGV[4]
local done = prefix .. 'deregistered:' .. ARGV[6]
if redis.call('EXISTS', prefix .. 'agent:' .. id) == 0 then
  return redis.call('LRANGE', done, 0, -1)
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
  if ARGV[7] == '1' then
    local checked = {}
    for child in string.gmatch(ARGV[8], '[^\n]+') do
      checked[child] = true
    end
    for j = 2, #order do
      if not checked[order[j]] then
        return {{'unchecked', order[j]}}
      end
    end
  end
end
local now = clock_ms()
for j, agent in ipairs(order) do
  local reason = j == 1 and 'deregistered' or ('deregistered with ' .. id)
  remove_agent(prefix, agent, hash_fields(prefix .. 'agent:' .. agent), reason, now)
end
redis.call('RPUSH', done, unpack(order))
redis.call('PEXPIRE', done, 60000)
return order
