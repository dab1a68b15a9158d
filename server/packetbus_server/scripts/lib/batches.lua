-- Library, prepended to scripts that need it (never run alone): the sealed
-- batch a stored-once log entry refers to (_batch_refs, pb:{topic}:batch:<id>).

-- What a reader adds to a stored-once entry's packet bytes: the server's two
-- ingest entries (~1.2 KB for calls of 200 packets, ~1.4 KB at the 1,000-packet
-- limit: records, signature, key id, proofs 11 levels deep). Byte budgets count
-- this upper bound so a page never outgrows its reply.
local BATCH_ENTRY_BYTES = 2048

-- The bytes a reader hands out for an entry with fields `f` (a table): its packet
-- bytes, the server's entries a stored-once entry gets back.
local function stored_bytes(f)
  if f['b'] and f['b'] ~= '' then
    return #f['p'] + BATCH_ENTRY_BYTES
  end
  return #f['p']
end

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
  if not id then
    -- Not a reference (a corrupted entry): nothing it names to keep, and the
    -- copy still reads as a batch gone (_batch_refs.parse_ref).
    return
  end
  redis.call('PEXPIRE', string.sub(log, 1, #log - 3) .. 'batch:' .. id, ms, 'GT')
end
