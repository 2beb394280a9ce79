-- This node's last session of `user` left `room`. With presence events, the user's last
-- departure anywhere is published ('L') in the same step.
-- ARGV: P, node, user, room, events (1/0) -> 0 not a member | 1 left | 2 left, and gone everywhere
local P, node, user, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('SREM', P .. 'nm:' .. node, room .. ' ' .. user) == 0 then return 0 end
node_leaves_room(P, room, node)
if drop_member(P, room, user) then
  if ARGV[5] == '1' then redis.call('PUBLISH', P .. 'c:' .. room, 'L' .. node .. user) end
  return 2
end
return 1
