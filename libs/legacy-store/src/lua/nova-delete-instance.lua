-- Nova format, instance deletion (consoleauth's delete_tokens_for_instance): deletes the listed
-- tokens that are this instance's (a listed key holding anything else is left alone), then the
-- list. Never a DEL without keys: Redis answers an arity error, which broke Nova (bug 1794812).
-- A list key holding something other than a JSON array is not ours to delete.
--
-- KEYS[1] list key; ARGV[1] key prefix, ARGV[2] instance UUID (lowercase).
-- Returns {deleted token keys, 1 if the list was malformed}.
local raw = redis.pcall('GET', KEYS[1])
if not raw then return {0, 0} end
if type(raw) == 'table' and raw.err then return {0, 1} end
local ok, listed = pcall(cjson.decode, raw)
if not ok or type(listed) ~= 'table' or (next(listed) ~= nil and listed[1] == nil) then return {0, 1} end
local keys = {}
for _, token in ipairs(listed) do
  if type(token) == 'string' and token ~= '' then
    local key = ARGV[1] .. token
    local value = redis.pcall('GET', key)
    if type(value) == 'string' then
      local parsed, entry = pcall(cjson.decode, value)
      if parsed and type(entry) == 'table' and type(entry.instance_uuid) == 'string' and string.lower(entry.instance_uuid) == ARGV[2] then
        table.insert(keys, key)
      end
    end
  end
end
local deleted = 0
for first = 1, #keys, 500 do
  deleted = deleted + redis.call('DEL', unpack(keys, first, math.min(first + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return {deleted, 0}
