-- Distinct users in a room: the exact count and up to `limit` user ids.
-- ARGV: P, room, limit -> {count, {user...}}
local rk, limit = ARGV[1] .. 'r:' .. ARGV[2], tonumber(ARGV[3])
local count = redis.call('HLEN', rk)
if limit <= 0 then return {count, {}} end  -- the count alone (HSCAN COUNT 0 is an error)
if count <= limit then return {count, redis.call('HKEYS', rk)} end
local users, cursor = {}, '0'
repeat
  local r = redis.call('HSCAN', rk, cursor, 'COUNT', limit)
  cursor = r[1]
  for i = 1, #r[2], 2 do
    if #users < limit then users[#users + 1] = r[2][i] end
  end
until cursor == '0' or #users >= limit
return {count, users}
