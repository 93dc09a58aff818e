-- The node registry of the operations view (common/registry.py), all in one slot ({nodes}).
-- KEYS: 1 heartbeats hash (field = node id, value = heartbeat JSON),
--       2 expiry sorted set (member = node id, score = when its heartbeat expires, Redis ms).
-- ARGV[1] 'beat':  2 node id, 3 heartbeat JSON, 4 ttl ms           -> Redis time (ms)
-- ARGV[1] 'leave': 2 node id                                      -> 1 if it was registered
-- ARGV[1] 'list':  2 at most this many nodes                      ->
--                  {Redis time ms, nodes registered, id, expires ms, JSON, id, expires ms, ...}
-- Redis 7.0 has no per-field expiry, so every call first drops the fields whose score has
-- passed (at most 1000 a call): a dead node leaves with its score. Both keys get the longest
-- ttl any node asked for, so they expire when every node is gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local op = ARGV[1]
if op == 'beat' then
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < ttl then
      redis.call('PEXPIRE', key, ttl)
    end
  end
  return now
elseif op == 'leave' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return redis.call('HDEL', KEYS[1], ARGV[2])
elseif op == 'list' then
  local alive = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES',
    'LIMIT', 0, tonumber(ARGV[2]))
  local out = {now, redis.call('ZCARD', KEYS[2])}
  for i = 1, #alive, 2 do
    out[#out + 1] = alive[i]
    out[#out + 1] = alive[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[1], alive[i]) or ''
  end
  return out
end
return redis.error_reply('registry.lua: unknown operation ' .. tostring(op))
