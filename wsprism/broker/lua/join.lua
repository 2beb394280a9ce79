-- This node's first session of `user` enters `room`. A user already in the room (on any
-- node) is never refused; a new user must fit max_users_per_room (distinct users), a new
-- room max_rooms_total, and the user max_rooms_per_user (distinct rooms). With presence
-- events, the user's first arrival anywhere is published ('J') in the same step. At
-- max_rooms_per_user, rooms the user is in only through dead nodes (not reaped yet) do
-- not count: a user whose node died is never refused because of its own ghost.
-- ARGV: P, node, user, room, max users per room, max rooms total, max rooms per user,
--       events (1/0), nodes key
-- -> {'ok', first (1/0)[, version, other nodes in the room...]} (the tail when this node is new
--    to the room) | {'max_users_per_room' | 'max_rooms_total' | 'max_rooms_per_user'}
local P, node, user, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_users, max_rooms, max_user_rooms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local nodes = ARGV[9]
local entry, nm = room .. ' ' .. user, P .. 'nm:' .. node
if redis.call('SISMEMBER', nm, entry) == 1 then return {'ok', 0} end
local rk = P .. 'r:' .. room
local first = redis.call('HEXISTS', rk, user) == 0
if first then
  local users = redis.call('HLEN', rk)
  if users == 0 then
    if max_rooms > 0 and redis.call('SCARD', P .. 'rooms') >= max_rooms then return {'max_rooms_total'} end
  elseif max_users > 0 and users >= max_users then
    return {'max_users_per_room'}
  end
  if max_user_rooms > 0 and redis.call('HLEN', P .. 'ur:' .. user) >= max_user_rooms
      and live_rooms(P, nodes, user) >= max_user_rooms then
    return {'max_rooms_per_user'}
  end
end
redis.call('HINCRBY', rk, user, 1)
redis.call('HINCRBY', P .. 'ur:' .. user, room, 1)
redis.call('SADD', nm, entry)
if first then
  redis.call('SADD', P .. 'rooms', room)
  if ARGV[8] == '1' then redis.call('PUBLISH', P .. 'c:' .. room, 'J' .. node .. user) end
end
local out = {'ok', first and 1 or 0}
if node_enters_room(P, room, node) then
  for _, x in ipairs(room_nodes(P, room, node)) do out[#out + 1] = x end
end
return out
