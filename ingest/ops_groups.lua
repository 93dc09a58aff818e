-- The consumer groups of one collection for /admin/groups, in its slot.
-- KEYS: 1 stream, 2 meta hash. ARGV: 1 at most this many groups, 2 consumers listed per group.
-- Returns {Redis time ms, epoch, groups in the stream, group, group, ...}; each group is
--   {name, consumers, pending, last delivered id, lag (-1 unknown),
--    oldest pending id ('' none), its idle ms, its delivery count,
--    {consumer name, pending, idle ms, consumer name, ...}}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now, redis.call('HGET', KEYS[2], 'e') or '', 0}
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then
  return out
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
out[3] = #groups
local max_groups, max_consumers = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, math.min(#groups, max_groups) do
  local g = {}
  local raw = groups[i]
  for j = 1, #raw, 2 do
    g[raw[j]] = raw[j + 1]
  end
  local lag = g['lag']
  if type(lag) ~= 'number' then lag = -1 end
  local row = {g['name'], g['consumers'], g['pending'], g['last-delivered-id'], lag, '', 0, 0}
  if g['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], g['name'], '-', '+', 1)[1]
    if oldest then
      row[6], row[7], row[8] = oldest[1], oldest[3], oldest[4]
    end
  end
  local members = {}
  if g['consumers'] > 0 then
    local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], g['name'])
    for k = 1, math.min(#consumers, max_consumers) do
      local c = {}
      for j = 1, #consumers[k], 2 do
        c[consumers[k][j]] = consumers[k][j + 1]
      end
      members[#members + 1] = c['name']
      members[#members + 1] = c['pending']
      members[#members + 1] = c['idle']
    end
  end
  row[9] = members
  out[#out + 1] = row
end
return out
