-- Posts a task to a queue, idempotently by task id and packet fingerprint.
--
-- KEYS[1]  the queue's task index    (pb:{queue}:tasks, zset: task id -> posting order, lib/order.lua)
-- KEYS[2]  the queue's status events (pb:{queue}:taskevents, stream)
-- KEYS[3]  the task's hash (pb:{queue}:task:<id>, lib/tasks.lua)
-- KEYS[4]  its ready set (pb:{queue}:ready:<capability>)
-- Every key is declared, none derived: on a Redis Cluster whose slot is
-- migrating, the node then answers ASK or TRYAGAIN before the script runs,
-- instead of failing it halfway, after its first writes, on a key that has
-- moved already.
-- ARGV[1]  key prefix "pb:{queue}:" (the keys above start with it)
-- ARGV[2]  task id
-- ARGV[3]  fingerprint of the packet (what the sender means: _ingest.fingerprint)
-- ARGV[4]  the packet bytes as stored (content, then its chain)
-- ARGV[5]  content length
-- ARGV[6]  tracking id
-- ARGV[7]  priority (-1000..1000)
-- ARGV[8]  required capability ("" for none)
-- ARGV[9]  max attempts
-- ARGV[10] expiry, unix ms (the packet's TTL)
--
-- Returns {"new"}, {"dup"} (this packet was posted before) or {"conflict"}
-- (the task id holds another packet: nothing written).
local task_id = ARGV[2]
local key = KEYS[3]
local existing = redis.call('HGET', key, 'fp')
if existing then
  return {existing == ARGV[3] and 'dup' or 'conflict'}
end
local now = clock_ms()
local seq = redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'id', task_id, 'o', '', 'n', 'queued',
  'a', '', 'f', '0', 'r', 'posted')
local ms, n = string.match(seq, '^(%d+)-(%d+)$')
local member = string.format('%04d:%013d%06d:%s', 1000 - tonumber(ARGV[7]), tonumber(ms), tonumber(n), task_id)
local expiry = tonumber(ARGV[10])
redis.call('HSET', key, 'p', ARGV[4], 'n', ARGV[5], 'i', ARGV[6], 'fp', ARGV[3], 'st', 'queued',
  'rk', member, 'cap', ARGV[8], 'pr', ARGV[7], 'claims', 0, 'fails', 0, 'max', ARGV[9], 'w', '', 'f', 0,
  'lu', 0, 'lease', 0, 'pa', now, 'ua', now, 'x', expiry)
redis.call('PEXPIREAT', key, expiry)
local ready = KEYS[4]
redis.call('ZADD', ready, 0, member)
redis.call('ZADD', KEYS[1], insertion_order(KEYS[1], now), task_id)
-- The index and ready sets live as long as their newest task.
for _, k in ipairs({ready, KEYS[1], KEYS[2]}) do
  keep_until(k, expiry)
end
return {'new'}
