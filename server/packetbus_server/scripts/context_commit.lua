-- Commits a staged upload as a document's next version (compare-and-set).
--
-- KEYS[1]  the document       (pb:{ctx:<h>}:doc:<name>, hash: v s h c a u e b r g k up)
-- KEYS[2]  the staged upload  (pb:{ctx:<h>}:body:<body id>, string)
-- KEYS[3]  the scope's names  (pb:{ctx:<h>}:names, zset)
-- KEYS[4]  the scope's events (pb:{ctx:<h>}:events, stream)
-- KEYS[5]  the document's commits by upload id (pb:{ctx:<h>}:ups:<name>, hash:
--          upload id -> cmsgpack {v, s, h, c, a, u, e, r, g, k} of that commit)
-- KEYS[6]  those upload ids by commit time (pb:{ctx:<h>}:upo:<name>, zset)
-- KEYS[7]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived key: the replaced version's body, ARGV[1] .. 'body:' .. its body id.
-- ARGV[1]  key prefix "pb:{ctx:<h>}:"
-- ARGV[2]  document name
-- ARGV[3]  upload id (the client's idempotency key, or one the server made)
-- ARGV[4]  expected version, an integer (0: must not exist)
-- ARGV[5]  size in bytes
-- ARGV[6]  SHA-256, hex
-- ARGV[7]  content type
-- ARGV[8]  author
-- ARGV[9]  now, unix ms
-- ARGV[10] expiry, unix ms
-- ARGV[11] grace in ms for the replaced version's body
-- ARGV[12] change events kept (approximate MAXLEN)
-- ARGV[13] keep the events stream at least until this, unix ms
-- ARGV[14] the server's signed commit record for version ARGV[4] + 1 (may be "")
-- ARGV[15] its signature
-- ARGV[16] the signing key's id
-- ARGV[17] the body id: the put's own (never the upload id, which another put
--          may send too), kept as field b; the upload id is kept as field up
--          (a document committed before field up existed has its upload id in b)
-- ARGV[18] upload ids remembered per document (the newest commits')
--
-- Returns {"new", version, cursor}; {"dup", v, s, h, c, a, u, e, b, r, g, k, up}
-- (the fields of the commit this upload made, b empty for an older one) when
-- this upload committed before (a retry: answered so even after newer versions,
-- or a delete, while the document remembers the upload id); {"stale", current
-- version}; or {"incomplete", staged length} when the staged bytes are not
-- `size` long (nothing written in any but "new").
local prefix, name, upload = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HMGET', KEYS[1], 'v', 's', 'h', 'c', 'a', 'u', 'e', 'b', 'r', 'g', 'k', 'up')
if (current[12] or current[8]) == upload then
  local reply = {'dup'}
  for j = 1, 12 do
    reply[j + 1] = current[j] or ''
  end
  return reply
end
local memo = redis.call('HGET', KEYS[5], upload)
if memo then
  local m = cmsgpack.unpack(memo)
  return {'dup', m[1], m[2], m[3], m[4], m[5], m[6], m[7], '', m[8], m[9], m[10], upload}
end
local version = tonumber(current[1] or '0')
if tonumber(ARGV[4]) ~= version then
  return {'stale', version}
end
local staged = redis.call('STRLEN', KEYS[2])
if staged ~= tonumber(ARGV[5]) then
  return {'incomplete', staged}
end
local expiry = tonumber(ARGV[10])
if current[8] then
  -- A reader streaming the replaced version may finish within the grace.
  redis.call('PEXPIRE', prefix .. 'body:' .. current[8], ARGV[11])
end
version = version + 1
redis.call('HSET', KEYS[1], 'v', version, 's', ARGV[5], 'h', ARGV[6], 'c', ARGV[7],
  'a', ARGV[8], 'u', ARGV[9], 'e', expiry, 'b', ARGV[17], 'r', ARGV[14], 'g', ARGV[15], 'k', ARGV[16],
  'up', upload)
redis.call('PEXPIREAT', KEYS[1], expiry)
redis.call('PEXPIREAT', KEYS[2], expiry)
redis.call('ZADD', KEYS[3], 0, name)
keep_until(KEYS[3], expiry)
redis.call('HSET', KEYS[5], upload, cmsgpack.pack({version, ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], expiry, ARGV[14], ARGV[15], ARGV[16]}))
redis.call('ZADD', KEYS[6], tonumber(ARGV[9]), upload)
local excess = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[18])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[6], excess)
  for j = 1, #oldest, 2 do
    redis.call('HDEL', KEYS[5], oldest[j])
  end
end
keep_until(KEYS[5], expiry)
keep_until(KEYS[6], expiry)
local cursor = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[12], '*', 'k', 'put', 'n', name,
  'v', version, 's', ARGV[5], 'h', ARGV[6], 'a', ARGV[8], 'u', ARGV[9])
keep_until(KEYS[4], math.max(expiry, tonumber(ARGV[13])))
return {'new', version, cursor}
