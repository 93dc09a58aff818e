-- Record one revocation and tell every fanout node, atomically, in the {revocations} slot.
-- KEYS: 1 the kind's sorted set (member -> until, unix seconds), 2 the notification channel
-- ARGV: 1 user id or token id, 2 until (unix seconds), 3 kind (u|t), 4 request id
-- Returns the number of subscribers the notification reached (fanout nodes on this shard).
local t = redis.call('TIME')
local now = tonumber(t[1])
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])  -- a longer revocation wins
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local last = redis.call('ZRANGE', KEYS[1], '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1, 'WITHSCORES')
if last[2] then
  redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 1)
end
return redis.call('SPUBLISH', KEYS[2], ARGV[3] .. ' ' .. ARGV[2] .. ' ' .. ARGV[4] .. ' ' .. ARGV[1])
