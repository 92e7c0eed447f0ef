-- Take a concurrency slot: a lease in a ZSET (token -> expiry ms, Redis' own clock).
-- KEYS[1] leases zset, KEYS[2] adaptive limit (float, optional), KEYS[3] paused-until (ms),
-- KEYS[4] interactive waiters zset (token -> ms until which the wish holds)
-- ARGV[1] lease_ms, ARGV[2] hard limit, ARGV[3] token, ARGV[4] 1 if interactive,
-- ARGV[5] ms an interactive waiter's wish lasts without being renewed by its next poll
-- Returns {taken (1|0), ms left of a 429 pause}: one round trip for the common case.
-- Expired leases (their holder died) are dropped first, so a dead worker's slots come back.
-- Interactive waiters go first: while one waits, no bulk call takes a slot. A waiter that
-- died stops counting when its wish runs out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local limit = tonumber(ARGV[2])
local adaptive = tonumber(redis.call('GET', KEYS[2]))
if adaptive and adaptive < limit then
  limit = math.max(1, math.floor(adaptive))
end
local paused = math.max(0, (tonumber(redis.call('GET', KEYS[3])) or 0) - now)
local interactive = ARGV[4] == '1'
local free = redis.call('ZCARD', KEYS[1]) < limit
if free and (interactive or redis.call('ZCARD', KEYS[4]) == 0) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  if interactive then
    redis.call('ZREM', KEYS[4], ARGV[3])
  end
  return {1, paused}
end
if interactive then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[3])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[5]) * 2)
end
return {0, paused}
