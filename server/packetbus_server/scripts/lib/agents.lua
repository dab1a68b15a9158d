-- Library, prepended to the agent registry scripts (never run alone).
--
-- Every agent key shares the hash tag {agents} (one cluster slot). Scripts get
-- the fixed keys as KEYS[1..4] and derive the per-agent ones from the prefix
-- ARGV[1] ("pb:{agents}:"), since a sweep or a cascade cannot name them in
-- advance:
--   KEYS[1] <prefix>ids         zset: registered ids, score 0 (by id)
--   KEYS[2] <prefix>deadlines   zset: id -> ms it turns stale (live) or is removed (stale)
--   KEYS[3] <prefix>events      stream: membership events
--   KEYS[4] <prefix>releasing   zset: id -> ms, agents whose claimed tasks are to be released
--   <prefix>agent:<id>          hash: one agent (fields below)
--   <prefix>children:<id>       set: ids of the agents <id> spawned
--   <prefix>queues:<id>         set: task queues <id> claimed from
--   <prefix>deregistered:<call> list: the ids one deregistration removed (60 s)
-- ARGV[2] most events kept (MAXLEN ~), ARGV[3] event retention ms.
-- Agent hash fields: p the registration (a serialized Agent: role,
-- capabilities, parent, key id, labels, endpoint, TTL), par parent id, s
-- state, ttl TTL ms, lv live|stale, ra registered ms, hb last heartbeat ms,
-- dl deadline ms, rf fingerprint of the last registration, rn 1 when that
-- registration added the agent.
-- Event fields: k kind (joined|left|stale|state_changed|recovered|updated),
-- id, o old state, n new state, r reason, and the agent's p s lv ra hb dl ttl
-- as they were right after the event.

local function emit(kind, id, f, old, new, reason, now)
  local retention = tonumber(ARGV[3])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'k', kind, 'id', id, 'o', old, 'n', new,
    'r', reason, 'p', f['p'] or '', 's', f['s'] or '', 'lv', f['lv'] or '', 'ra', f['ra'] or '0',
    'hb', f['hb'] or '0', 'dl', f['dl'] or '0', 'ttl', f['ttl'] or '0')
  redis.call('XTRIM', KEYS[3], 'MINID', '~', now - retention)
  redis.call('PEXPIRE', KEYS[3], retention)
end

-- Removes one agent; its claimed tasks are released by the reapers.
local function remove_agent(prefix, id, f, reason, now)
  redis.call('DEL', prefix .. 'agent:' .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  if f['par'] and f['par'] ~= '' then
    redis.call('SREM', prefix .. 'children:' .. f['par'], id)
  end
  if redis.call('EXISTS', prefix .. 'queues:' .. id) == 1 then
    redis.call('ZADD', KEYS[4], now, id)
  end
  emit('left', id, f, f['s'] or '', '', reason, now)
end
