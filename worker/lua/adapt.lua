-- Adaptive concurrency (AIMD) shared by the cluster. KEYS[1] the effective limit (float).
-- (release.lua does the additive step on the hot path; this script serves both ways.)
-- ARGV[1] 'up' or 'down', ARGV[2] hard limit, ARGV[3] decrease factor, ARGV[4] min ms between
-- decreases (one overload episode shrinks the limit once, not once per failed call)
local hard = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1])) or hard
if ARGV[1] == 'up' then
  if current >= hard then return tostring(hard) end
  current = math.min(hard, current + 1 / current)
else
  if redis.call('SET', KEYS[1] .. ':cooldown', '1', 'NX', 'PX', tonumber(ARGV[4])) == false then
    return tostring(current)
  end
  current = math.max(1, current * tonumber(ARGV[3]))
end
redis.call('SET', KEYS[1], tostring(current), 'EX', 3600)
return tostring(current)
