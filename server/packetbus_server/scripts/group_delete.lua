-- Deletes a consumer group and its outstanding deliveries (the packets stay).
--
-- KEYS[1]  the topic's log stream      (pb:{topic}:log)
-- KEYS[2]  the topic's group registry  (pb:{topic}:groups)
-- ARGV[1]  group name
--
-- Returns 1 if the group existed, else 0.
local existed = redis.call('HEXISTS', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. ':next')
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
  if redis.call('EXISTS', KEYS[2]) == 0 then
    -- No group holds the log any more: it lives as long as its newest packet again.
    local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    if #newest == 0 then
      redis.call('DEL', KEYS[1])
    else
      local fields = newest[1][2]
      local ttl_ms = 0
      for j = 1, #fields, 2 do
        if fields[j] == 't' then ttl_ms = tonumber(fields[j + 1]) end
      end
      redis.call('PEXPIREAT', KEYS[1], tonumber(string.match(newest[1][1], '^(%d+)-')) + ttl_ms)
    end
  end
end
return existed
