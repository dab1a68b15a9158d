#!lua
-- Binds a public key to an agent id: the first key of an agent is taken as is
-- (trust on first use); any further key must be endorsed by one the agent
-- already has. The caller has checked both signatures; this decides, atomically,
-- whether the endorsing key really is the agent's.
--
-- KEYS[1]  pb:{keys}:all     hash: key id -> serialized SigningKey
-- KEYS[2]  pb:{keys}:agents  hash: agent id -> its key ids, space-separated
-- ARGV[1]  agent id
-- ARGV[2]  the new key's id
-- ARGV[3]  the new key as a serialized SigningKey
-- ARGV[4]  the endorsing key's id, or "" for none
--
-- Returns {"registered"} or {"exists"} (the same key again: nothing changes),
-- {"taken"} when the key id belongs to another agent or server, or
-- {"needs_endorsement"} when the agent already has keys and ARGV[4] is not one.
local agent, key_id, key, endorser = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
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
redis.call('HSET', KEYS[1], key_id, key)
return {'registered'}
