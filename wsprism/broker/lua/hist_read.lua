-- Read a room's history (SPEC 13): its position and the messages after `since`.
-- ARGV: P, room, since offset, since epoch ('' = the room's), limit, ttl_ms, meta_ttl_ms,
--       new epoch (if the room has no meta: a new epoch, top 0)
-- When `since` is of another epoch, or ahead of the top, the read starts at the oldest
-- message held. Messages older than ttl_ms are not returned (they are expired; the
-- stream's own expiry is ttl_ms after its newest message).
-- -> {top, epoch, offset1, message1, offset2, message2, ...} (oldest first, at most limit)
local P, room = ARGV[1], ARGV[2]
local since, since_epoch, limit = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local ttl, meta_ttl = tonumber(ARGV[6]), ARGV[7]
local mk, sk = P .. 'hm:' .. room, P .. 'hs:' .. room
local meta = redis.call('HMGET', mk, 'e', 's')
local epoch, top = meta[1], tonumber(meta[2] or '0')
if not epoch then
  epoch = ARGV[8]
  top = 0
  redis.call('DEL', sk)
  redis.call('HSET', mk, 'e', epoch, 's', 0)
end
redis.call('PEXPIRE', mk, meta_ttl)
local out = {top, epoch}
if limit <= 0 or top == 0 then return out end
local start = '-'
if (since_epoch == '' or since_epoch == epoch) and since <= top then
  if since >= top then return out end
  start = string.format('%d', since + 1) .. '-0'
end
local cutoff = now_ms() - ttl
for _, e in ipairs(redis.call('XRANGE', sk, start, '+', 'COUNT', limit)) do
  local f = e[2]
  local t, d
  for i = 1, #f, 2 do
    if f[i] == 't' then t = tonumber(f[i + 1]) elseif f[i] == 'd' then d = f[i + 1] end
  end
  if t > cutoff then
    out[#out + 1] = tonumber(string.match(e[1], '^(%d+)'))
    out[#out + 1] = d
  end
end
return out
