-- What /admin/collections shows of one collection, in its slot, without sending event data.
-- KEYS: 1 stream, 2 meta hash. ARGV: 1 MEMORY USAGE samples.
-- Returns {Redis time ms, epoch, last seq, last ms, length, first id, last id, groups,
--          memory bytes, events ever added}; '' or -1 where the collection has none.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = redis.call('HMGET', KEYS[2], 'e', 'q', 'ms')
local out = {now, meta[1] or '', meta[2] or '', meta[3] or '', 0, '', '', 0, -1, 0}
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then
  return out
end
-- XINFO STREAM is O(1); its first and last entries stay here, only their ids are returned
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do
  f[info[i]] = info[i + 1]
end
out[5] = f['length'] or 0
if type(f['first-entry']) == 'table' then out[6] = f['first-entry'][1] end
if type(f['last-entry']) == 'table' then out[7] = f['last-entry'][1] end
out[8] = f['groups'] or 0
out[9] = redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', ARGV[1]) or -1
out[10] = f['entries-added'] or 0
return out
