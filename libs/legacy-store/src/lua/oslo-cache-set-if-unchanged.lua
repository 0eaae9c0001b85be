-- oslo-cache-redis format, dual-write of an instance's token list: the list is read, pruned and
-- re-pickled in TypeScript (Lua cannot read pickles), then written here only if nobody changed it
-- meanwhile, so that two writes for the same instance cannot lose each other's token (consoleauth's
-- get-then-set could). The caller retries on 0. Compares the same bounded prefix it read (GETRANGE).
--
-- KEYS[1] list key; ARGV[1] '1' if the list existed when read, '0' if not; ARGV[2] what was read;
-- ARGV[3] the new value; ARGV[4] its TTL in ms (0 = none); ARGV[5] the last byte offset read.
-- Returns 1 when written, 0 when the list changed since it was read.
local current = redis.pcall('GETRANGE', KEYS[1], 0, tonumber(ARGV[5]))
if type(current) == 'table' and current.err then
  -- Not a string key: whatever it is, it is not a list of ours; read as malformed and replaced.
  current = nil
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  current = nil
end
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current ~= nil then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
