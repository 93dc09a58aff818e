-- Append one event to a collection, atomically, in the collection's slot.
-- KEYS: 1 stream, 2 meta hash, 3 dedupe marker, 4 notification channel (all share one hash tag)
-- ARGV: 1 data json, 2 epoch to use if the collection has none, 3 retention ms,
--       4 max entries, 5 meta ttl ms, 6 dedupe ttl ms
-- Returns {1, id} for a new event, {0, id} for a retry of an already stored webhook.
-- Kept to 10 redis.call()s on the hot path: it runs once per webhook.
local dup = redis.call('GET', KEYS[3])
if dup then
  return {0, dup}
end
local meta = redis.call('HMGET', KEYS[2], 'e', 'q', 'ms')
local epoch = meta[1]
local seq, last_ms = 0, 0
if not epoch then
  -- new collection, or its metadata was lost: start a new epoch so old ids are seen as stale,
  -- and drop entries whose sequence we no longer know
  epoch = ARGV[2]
  redis.call('DEL', KEYS[1])
else
  seq = tonumber(meta[2]) or 0
  last_ms = tonumber(meta[3]) or 0
end
seq = seq + 1
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ms < last_ms then
  ms = last_ms  -- Redis clock went back (failover to a host with another clock): ids still grow
end
local sid = string.format('%d-%d', ms, seq)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], sid, 'd', ARGV[1])
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', ms - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'e', epoch, 'q', string.format('%d', seq), 'ms', string.format('%d', ms))
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local id = sid .. '@' .. epoch
redis.call('SET', KEYS[3], id, 'PX', ARGV[6])
redis.call('SPUBLISH', KEYS[4], epoch .. ' ' .. sid .. ' ' .. ARGV[1])
return {1, id}
