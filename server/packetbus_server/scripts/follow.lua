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
--
-- Returns {t, x, l, held, entries}: the horizon's fields ('' when unset; all
-- three '' when the topic has no horizon), held = the number of entries in
-- the log (0 when it expired as a whole: then l is gone too), and the
-- entries as XRANGE returns them.
local log, horizon = KEYS[1], KEYS[2]
local marks = redis.call('HMGET', horizon, 't', 'x', 'l')
return {
  marks[1] or '',
  marks[2] or '',
  marks[3] or '',
  redis.call('XLEN', log),
  redis.call('XRANGE', log, '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2])),
}
