-- Room history (SPEC 13), one atomic step per batch of messages a node publishes to one
-- room in one loop turn: take the next offsets (the room's meta: epoch `e`, top `s`),
-- append each message to the room's stream (entry id = its offset, MAXLEN `size`,
-- fields `t` Redis time in ms and `d` the message), refresh the expiries, and PUBLISH
-- the numbered messages on the room's channel. Redis runs it whole, so the channel's
-- order is the offset order for every subscribed node, the publisher's own included.
-- The message is spliced: head .. ',"offset":N,"epoch":"E"' .. tail.
-- A missing meta (new room, expired, or lost with a Redis restart) starts a new epoch
-- (ARGV[6], made by the node); an epoch's first step drops any stream left from the old one.
-- ARGV: P, room, size, ttl_ms, meta_ttl_ms, new epoch, origin node, n, head1, tail1, ...
-- Published: 'O' .. origin .. first .. ' ' .. epoch .. ' ' .. len1 .. ' ' .. len2 ... '\n' .. payloads
-- -> {first offset, epoch}
local P, room = ARGV[1], ARGV[2]
local size, ttl, meta_ttl = ARGV[3], ARGV[4], ARGV[5]
local mk, sk = P .. 'hm:' .. room, P .. 'hs:' .. room
local n = tonumber(ARGV[8])
local meta = redis.call('HMGET', mk, 'e', 's')
local epoch, s = meta[1], tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', mk, 'e', epoch, 's', 0)
  s = 0
end
if s == 0 then
  -- an epoch's first offset: a stream left from an older one (its meta evicted or expired,
  -- and made again by a join's read) would refuse entry id 1-0 to every publish
  redis.call('DEL', sk)
end
local first = s + 1
local now = now_ms()
local payloads, lens = {}, {}
for i = 0, n - 1 do
  local offset = string.format('%d', first + i)
  local d = ARGV[9 + 2 * i] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"' .. ARGV[10 + 2 * i]
  redis.call('XADD', sk, 'MAXLEN', size, offset .. '-0', 't', now, 'd', d)
  payloads[i + 1] = d
  lens[i + 1] = #d
end
-- the top moves after the appends: Redis does not undo a script's writes on an error, and
-- an error above must not use up offsets
redis.call('HINCRBY', mk, 's', n)
redis.call('PEXPIRE', sk, ttl)
redis.call('PEXPIRE', mk, meta_ttl)
redis.call('PUBLISH', P .. 'c:' .. room,
  'O' .. ARGV[7] .. string.format('%d', first) .. ' ' .. epoch .. ' ' .. table.concat(lens, ' ') .. '\n'
  .. table.concat(payloads))
return {first, epoch}
