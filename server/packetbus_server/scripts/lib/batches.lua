-- Library, prepended to scripts that need it (never run alone): the sealed
-- batch a stored-once log entry refers to (_batch_refs, pb:{topic}:batch:<id>).

-- Keep the batch that `ref` ("<batch id> <leaf>", or nil/"" for a full entry)
-- names alive for at least `ms` more milliseconds (never shortened: GT), for a
-- copy of the entry (carcel, requeue) that refers to it. The key is built from
-- the topic's log key `log` (pb:{topic}:log), so it shares its hash tag: a
-- script using this is loaded with derives_keys (its slot guarded on a cluster).
local function keep_batch(log, ref, ms)
  if not ref or ref == '' then
    return
  end
  local id = string.match(ref, '^(%S+) ')
  redis.call('PEXPIRE', string.sub(log, 1, #log - 3) .. 'batch:' .. id, ms, 'GT')
end
