-- Replace a call's estimated tokens by what it really used, keeping its place in the window.
-- KEYS[1] token zset, KEYS[2] token sum; ARGV[1] member, ARGV[2] estimate, ARGV[3] actual
local old = ARGV[1] .. ':' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], old)
if not score then return 0 end  -- already out of the window
redis.call('ZREM', KEYS[1], old)
redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3])
redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]) - tonumber(ARGV[2]))
return 1
