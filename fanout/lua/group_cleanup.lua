-- KEYS: stream, registry. ARGV: idle ms, registry ttl ms.
-- Destroys the collection's groups unused for longer than `idle` (by the registry's last-use
-- times); a group found in the stream but not in the registry is registered now, so it is
-- destroyed later unless someone uses it. Returns {destroyed group names, groups remaining}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[1])
local destroyed = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name = g[2]
    local score = redis.call('ZSCORE', KEYS[2], name)
    if not score then
      redis.call('ZADD', KEYS[2], now, name)
    elseif now - tonumber(score) > idle then
      redis.call('XGROUP', 'DESTROY', KEYS[1], name)
      redis.call('ZREM', KEYS[2], name)
      destroyed[#destroyed + 1] = name
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - idle))
local remaining = redis.call('ZCARD', KEYS[2])
if remaining > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {destroyed, remaining}
