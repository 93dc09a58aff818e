-- KEYS: stream, registry. ARGV: group, start id, stream ttl ms, registry ttl ms.
-- Creates the group if missing (MKSTREAM); a stream made here has no events and no TTL yet, so
-- it gets the retention TTL ingest would give it. (Ingest deletes the stream when it starts a
-- collection's first epoch, taking any group made before the first event with it: the registry
-- entry is how the group's backlog survives that.) Returns {Redis time in ms, 1 if created}.
local start = ARGV[2]
if start == '$' and redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  -- registered but missing: its stream was reset or expired since it was last used, so no
  -- event now in the stream was ever seen by it
  start = '0'
end
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM')
local created = 1
if type(ok) == 'table' and ok.err then
  if not string.find(ok.err, 'BUSYGROUP') then
    return redis.error_reply(ok.err)
  end
  created = 0
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {now, created}
