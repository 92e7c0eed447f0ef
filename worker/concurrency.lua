-- Cluster-wide concurrency leases: a ZSET of token -> lease expiry (ms).
-- KEYS[1] lease zset; ARGV: now_ms, lease_ms, limit, token
-- Expired leases (their holder died) are dropped first, so a dead worker's slots come back.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
