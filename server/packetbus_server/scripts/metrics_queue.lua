#!lua flags=no-writes
-- Counts a task queue's tasks by status, for a metrics scrape (reads only).
--
-- KEYS[1]  the queue's task index  (pb:{queue}:tasks)
-- ARGV[1]  the queue's key prefix  (pb:{queue}:), the task hashes derived from it
-- ARGV[2]  the most tasks read (the oldest first); the rest are not classified
--
-- Returns {tasks in the index, status, count, status, count, ...}; a task whose
-- hash expired (its index entry not yet pruned) is counted under no status.
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local counts = {}
for _, id in ipairs(ids) do
  local status = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'st')
  if status then
    counts[status] = (counts[status] or 0) + 1
  end
end
local out = {redis.call('ZCARD', KEYS[1])}
for status, n in pairs(counts) do
  out[#out + 1] = status
  out[#out + 1] = n
end
return out
