-- Reads which tasks of a queue a worker holds (read only).
--
-- KEYS[1]  the queue's leases (pb:{queue}:leases, zset: task id -> lease end ms)
-- KEYS[2]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/tasks.lua): the task hashes.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  worker
-- ARGV[3]  most leases looked at
--
-- Returns {task id, fencing token, ...} of the tasks claimed by the worker.
local prefix, worker = ARGV[1], ARGV[2]
local held = {}
for _, task_id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  local f = redis.call('HMGET', prefix .. 'task:' .. task_id, 'st', 'w', 'f')
  if f[1] == 'claimed' and f[2] == worker then
    held[#held + 1] = task_id
    held[#held + 1] = f[3]
  end
end
return held
