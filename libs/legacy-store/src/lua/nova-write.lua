-- Nova format, dual-write: the token key, then the per-instance list, in one script so that two
-- writes for the same instance cannot lose each other's entry (consoleauth's get-then-set could).
-- Like consoleauth it prunes listed tokens whose keys are gone; the list lives as long as its
-- longest-lived token (no TTL if one has none). The script reads token keys it cannot declare, so it
-- needs a standalone Redis (not Cluster), which is what legacy stores are.
--
-- KEYS[1] token key, KEYS[2] list key; ARGV[1] token value, ARGV[2] TTL in ms, ARGV[3] token,
-- ARGV[4] key prefix, ARGV[5] longest list. Returns {pruned, 1 if the old list was malformed}.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local listTtl = tonumber(ARGV[2])
local persist = false
local kept = {}
local pruned = 0
local malformed = 0
local raw = redis.pcall('GET', KEYS[2])
if type(raw) == 'table' and raw.err then
  malformed = 1
elseif raw then
  local ok, listed = pcall(cjson.decode, raw)
  if not ok or type(listed) ~= 'table' or (next(listed) ~= nil and listed[1] == nil) then
    malformed = 1
  else
    local max = tonumber(ARGV[5])
    local first = math.max(1, #listed - max + 2)
    pruned = first - 1
    for i = first, #listed do
      local token = listed[i]
      if type(token) == 'string' and token ~= ARGV[3] then
        local remaining = redis.call('PTTL', ARGV[4] .. token)
        if remaining == -2 then
          pruned = pruned + 1
        else
          table.insert(kept, token)
          if remaining == -1 then persist = true elseif remaining > listTtl then listTtl = remaining end
        end
      end
    end
  end
end
table.insert(kept, ARGV[3])
if persist then
  redis.call('SET', KEYS[2], cjson.encode(kept))
else
  redis.call('SET', KEYS[2], cjson.encode(kept), 'PX', listTtl)
end
return {pruned, malformed}
