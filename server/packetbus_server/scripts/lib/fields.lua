-- Library, prepended to scripts that need it (never run alone): Redis's clock and
-- flat field lists as tables.

-- Redis's clock in unix ms: one clock for every replica, whatever its own says.
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- {name, value, name, value, ...} (a stream entry's fields, an HGETALL reply) as a table.
local function field_table(flat)
  local f = {}
  for j = 1, #flat, 2 do
    f[flat[j]] = flat[j + 1]
  end
  return f
end

-- A hash's fields as a table ({} when the key does not exist).
local function hash_fields(key)
  return field_table(redis.call('HGETALL', key))
end
