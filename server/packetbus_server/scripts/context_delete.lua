-- Deletes a document (compare-and-set when a version is expected).
--
-- KEYS[1]  the document       (pb:{ctx:<h>}:doc:<name>, hash)
-- KEYS[2]  the scope's names  (pb:{ctx:<h>}:names, zset)
-- KEYS[3]  the scope's events (pb:{ctx:<h>}:events, stream)
-- KEYS[4]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived key: its body, ARGV[1] .. 'body:' .. its body id (field b).
-- ARGV[1]  key prefix "pb:{ctx:<h>}:"
-- ARGV[2]  document name
-- ARGV[3]  expected version: "" for any, else an integer
-- ARGV[4]  author
-- ARGV[5]  now, unix ms
-- ARGV[6]  grace in ms for the deleted version's body
-- ARGV[7]  change events kept (approximate MAXLEN)
-- ARGV[8]  keep the events stream at least until this, unix ms
--
-- Returns {"deleted", version}, {"missing", 0} (nothing written) or
-- {"stale", current version} (nothing written).
local current = redis.call('HMGET', KEYS[1], 'v', 'b')
if not current[1] then
  return {'missing', 0}
end
local version = tonumber(current[1])
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= version then
  return {'stale', version}
end
redis.call('PEXPIRE', ARGV[1] .. 'body:' .. current[2], ARGV[6])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'k', 'delete', 'n', ARGV[2],
  'v', version, 'a', ARGV[4], 'u', ARGV[5])
keep_until(KEYS[3], tonumber(ARGV[8]))
return {'deleted', version}
