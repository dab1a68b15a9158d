-- Library, prepended to scripts that keep an index in insertion order (never run alone).

-- The score for the next member of the zset `index`, stored at `now_ms`: its ms
-- * 1000, or one past the highest score when that is higher (a member added in
-- the same ms, or behind a replica whose clock runs ahead). Every member gets its
-- own score, so a listing's order (and where its next page starts) is exact, not
-- left to how Redis breaks ties (by member). Scores stay exact doubles (below
-- 2^53) until the year 2255; members scored in plain ms before sort as older.
local function insertion_order(index, now_ms)
  local order = now_ms * 1000
  local newest = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= order then
    order = tonumber(newest[2]) + 1
  end
  return string.format('%d', order)
end
