-- Take a concurrency slot: a lease in a ZSET (token -> expiry ms, Redis' own clock).
-- KEYS[1] leases zset, KEYS[2] adaptive limit (float, optional), KEYS[3] paused-until (ms)
-- ARGV[1] lease_ms, ARGV[2] hard limit, ARGV[3] token
-- Returns {taken (1|0), ms left of a 429 pause}: one round trip for the common case.
-- Expired leases (their holder died) are dropped first, so a dead worker's slots come back.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
local adaptive = tonumber(redis.call('GET', KEYS[2]))
if adaptive and adaptive < limit then
  limit = math.max(1, math.floor(adaptive))
end
local paused = math.max(0, (tonumber(redis.call('GET', KEYS[3])) or 0) - now)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  return {1, paused}
end
return {0, paused}
