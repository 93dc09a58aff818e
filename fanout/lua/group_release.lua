-- KEYS: stream. ARGV: group, consumer, target consumer, idle ms, batch.
-- Moves up to `batch` pending entries of `consumer` to `target` (with their idle time set to
-- `idle`, so any node's next reclaim pass takes them at once), and deletes `consumer` once it
-- holds nothing. Returns the number of entries moved.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[5]), ARGV[2])
if #p > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[3], '0'}
  for _, e in ipairs(p) do args[#args + 1] = e[1] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[4]
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
if #p < tonumber(ARGV[5]) then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #p
