#!lua
-- Binds a public key to an agent id: the first key of an agent is taken as is
-- (trust on first use); any further key must be endorsed by one the agent
-- already has. The caller has checked both signatures; this decides, atomically,
-- whether the endorsing key really is the agent's.
--
-- With an authenticated caller, the agent's keys are also bound to the principal
-- that registered its first one (issue 14: no first-come hijack): a later
-- registration for the agent by another principal is refused unless that caller
-- may act as the agent (it is the agent, or holds agents.act_for on it; decided
-- by the server, ARGV[6]). Checked before anything else, so a refused call writes
-- nothing and learns nothing about the agent's keys.
--
-- KEYS[1]  pb:{keys}:all         hash: key id -> serialized SigningKey
-- KEYS[2]  pb:{keys}:agents      hash: agent id -> its key ids, space-separated
-- KEYS[3]  pb:{keys}:principals  hash: agent id -> the principal its keys are bound to
-- ARGV[1]  agent id
-- ARGV[2]  the new key's id
-- ARGV[3]  the new key as a serialized SigningKey
-- ARGV[4]  the endorsing key's id, or "" for none
-- ARGV[5]  the calling principal's name, or "" for none (no authentication)
-- ARGV[6]  "1" when the caller may act as the agent (always, with authorization off)
--
-- Returns {"registered"} or {"exists"} (the same key again: nothing changes),
-- {"taken"} when the key id belongs to another agent or server,
-- {"needs_endorsement"} when the agent already has keys and ARGV[4] is not one, or
-- {"bound"} when the agent's keys are bound to another principal and the caller
-- may not act as the agent. A store retry of a call that registered answers
-- {"exists"}: the binding it wrote names the same principal.
local agent, key_id, key, endorser = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local principal, may_act = ARGV[5], ARGV[6]
local bound = redis.call('HGET', KEYS[3], agent)
if bound and bound ~= principal and may_act ~= '1' then
  return {'bound'}
end
local existing = redis.call('HGET', KEYS[1], key_id)
local owned = redis.call('HGET', KEYS[2], agent)
if existing then
  if owned and string.find(' ' .. owned .. ' ', ' ' .. key_id .. ' ', 1, true) then
    return {'exists'}
  end
  return {'taken'}
end
if owned and owned ~= '' then
  if endorser == '' or not string.find(' ' .. owned .. ' ', ' ' .. endorser .. ' ', 1, true) then
    return {'needs_endorsement'}
  end
  redis.call('HSET', KEYS[2], agent, owned .. ' ' .. key_id)
else
  redis.call('HSET', KEYS[2], agent, key_id)
end
if not bound and principal ~= '' then
  -- The first authenticated principal to register a key of the agent holds them.
  redis.call('HSET', KEYS[3], agent, principal)
end
redis.call('HSET', KEYS[1], key_id, key)
return {'registered'}
