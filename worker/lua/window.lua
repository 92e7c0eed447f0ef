-- Requests- and tokens-per-window budgets as exact sliding windows (Redis' own clock).
-- KEYS[1] request zset (member -> time), KEYS[2] token zset ("member:tokens" -> time),
-- KEYS[3] token sum
-- ARGV[1] window_ms, ARGV[2] request limit (0: none), ARGV[3] token limit (0: none),
-- ARGV[4] member, ARGV[5] tokens
-- Returns 0 when admitted (and recorded), else the ms to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, tpm, tokens = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local start = now - window

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', start)
if #old > 0 then
  local freed = 0
  for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('DECRBY', KEYS[3], freed)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', start)
end

local wait = 0
if rpm > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now + 1)
  end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[3])) or 0
  -- a request larger than the whole budget still runs, alone in its window
  if used > 0 and used + tokens > tpm then
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
      if used - freed + tokens <= tpm or i + 2 > #entries then
        wait = math.max(wait, tonumber(entries[i + 1]) + window - now + 1)
        break
      end
    end
  end
end
if wait > 0 then return wait end

if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window * 2)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[4] .. ':' .. tokens)
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('PEXPIRE', KEYS[2], window * 2)
  redis.call('PEXPIRE', KEYS[3], window * 2)
end
return 0
