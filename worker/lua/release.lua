-- Give a slot back; after a success, grow the adaptive limit (AIMD's additive step) in
-- the same round trip. KEYS[1] leases zset, KEYS[2] adaptive limit
-- ARGV[1] token, ARGV[2] 1 if the call succeeded, ARGV[3] hard limit
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  local current = tonumber(redis.call('GET', KEYS[2]))
  local hard = tonumber(ARGV[3])
  if current and current < hard then
    redis.call('SET', KEYS[2], tostring(math.min(hard, current + 1 / current)), 'EX', 3600)
  end
end
return 0
