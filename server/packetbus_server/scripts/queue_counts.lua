#!lua flags=no-writes
-- Counts a task queue's tasks by status (reads only): for a /metrics scrape
-- (_observability/store_metrics.py) and for ListTaskQueues (_task_queues.py).
--
-- KEYS[1]  the queue's task index  (pb:{queue}:tasks)
-- ARGV[1]  the queue's key prefix  (pb:{queue}:), the task hashes derived from it
-- ARGV[2]  the most tasks read (the oldest first); the rest are not classified
-- ARGV[3]  optional: the store's clock (ms). Given, a claim whose lease ran out
--          is counted as TaskState shows it (_task_states.task_state): queued,
--          or carceled when that was its last attempt; and each count is by
--          status and priority ("<status> <priority>"). Absent: by status as
--          stored.
--
-- Returns {tasks in the index, key, count, key, count, ...} ({-1}: see above); a task whose hash
-- expired (its index entry not yet pruned) is counted under no key.
-- A task index of another Redis type (not a key this server wrote) counts as
-- no queue: {-1}, so one such name never fails a listing or a scrape.
if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then
  return {-1}
end
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local now = tonumber(ARGV[3] or '')
local counts = {}
for _, id in ipairs(ids) do
  local key
  if now then
    local f = redis.call('HMGET', ARGV[1] .. 'task:' .. id, 'st', 'pr', 'lu', 'fails', 'max')
    local status = f[1]
    if status then
      if status == 'claimed' and tonumber(f[3] or '0') <= now then
        -- A failed attempt the store has not counted yet.
        if tonumber(f[4] or '0') + 1 >= tonumber(f[5] or '0') then
          status = 'carceled'
        else
          status = 'queued'
        end
      end
      key = status .. ' ' .. (f[2] or '0')
    end
  else
    key = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'st')
  end
  if key then
    counts[key] = (counts[key] or 0) + 1
  end
end
local out = {redis.call('ZCARD', KEYS[1])}
for key, n in pairs(counts) do
  out[#out + 1] = key
  out[#out + 1] = n
end
return out
