#!lua flags=no-writes
-- Reads a topic's log after a cursor together with its horizon, in one atomic
-- step: a subscriber can then tell a gap from the entries it gets (trimming
-- between two separate reads could remove entries unseen and unrecorded).
--
-- KEYS[1]  the topic's log stream (pb:{topic}:log)
-- KEYS[2]  the topic's horizon    (pb:{topic}:horizon): t = newest entry
--          trimmed by retention, x = newest entry of a log that expired as a
--          whole, l = newest entry a dispatch appended
-- ARGV[1]  read the entries after this cursor
-- ARGV[2]  at most this many
-- ARGV[3]  and at most this many bytes of them (packet bytes + content length,
--          summed; the first entry always, however large); 0: no byte bound
--
-- Returns {t, x, l, held, entries, cut}: the horizon's fields ('' when unset;
-- all three '' when the topic has no horizon), held = the number of entries in
-- the log (0 when it expired as a whole: then l is gone too), the entries as
-- XRANGE returns them, and cut = 1 when entries were left out for the byte
-- bound (so the read did not reach the log's end), else 0.
local log, horizon = KEYS[1], KEYS[2]
local marks = redis.call('HMGET', horizon, 't', 'x', 'l')
local entries = redis.call('XRANGE', log, '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local budget, bytes, cut = tonumber(ARGV[3]), 0, 0
if budget > 0 then
  for i, entry in ipairs(entries) do
    local f = entry[2]
    for j = 1, #f, 2 do
      if f[j] == 'p' then
        bytes = bytes + #f[j + 1]
      elseif f[j] == 'b' and f[j + 1] ~= '' then
        -- A stored-once entry: the server's entries come back (lib/batches.lua).
        bytes = bytes + BATCH_ENTRY_BYTES
      elseif f[j] == 'n' then
        bytes = bytes + tonumber(f[j + 1])
      end
    end
    if i > 1 and bytes > budget then
      for k = #entries, i, -1 do
        entries[k] = nil
      end
      cut = 1
      break
    end
  end
end
return {marks[1] or '', marks[2] or '', marks[3] or '', redis.call('XLEN', log), entries, cut}
