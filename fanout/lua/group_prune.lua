-- KEYS: stream. ARGV: group, min idle ms, consumers to keep...
-- Deletes consumers that hold no pending entry and were idle at least `min idle` (members of a
-- crashed node, after their entries were reclaimed). Returns how many were deleted.
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local list = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local n = 0
for _, c in ipairs(list) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if not keep[f['name']] and tonumber(f['pending']) == 0
     and tonumber(f['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    n = n + 1
  end
end
return n
