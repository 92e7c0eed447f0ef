-- The cluster-wide pause after a 429. KEYS[1] paused-until (ms, Redis' clock).
-- ARGV[1] pause_ms: 0 only reads. Returns the ms left of the pause (0: not paused).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(ARGV[1])
local untl = tonumber(redis.call('GET', KEYS[1])) or 0
if pause > 0 and now + pause > untl then
  untl = now + pause
  redis.call('SET', KEYS[1], untl, 'PX', pause + 60000)
end
return math.max(0, untl - now)
