-- Remove up to `chunk` sessions and `chunk` memberships of a dead node in one tenant
-- (short steps: Redis serves others in between). A user whose last membership goes gets
-- 'L' published to the room, with the dead node as origin. Stops if the node renewed.
-- ARGV: P, nodes key, dead node, chunk, events (1/0) -> entries left | -1 node alive
local P, nodes, dead, chunk = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if alive(nodes, dead, now_ms()) then return -1 end
local ns = P .. 'ns:' .. dead
for _, f in ipairs(redis.call('HRANDFIELD', ns, chunk)) do
  local sid, user = split(f)
  if redis.call('HGET', P .. 'un:' .. user, sid) == dead then
    drop_session(P, user, sid, dead)
  else
    redis.call('HDEL', ns, f)
  end
end
local nm = P .. 'nm:' .. dead
for _, e in ipairs(redis.call('SPOP', nm, chunk)) do
  local room, user = split(e)
  redis.call('HDEL', P .. 'rs:' .. room, dead)
  node_leaves_room(P, room, dead)
  if drop_member(P, room, user) and ARGV[5] == '1' then
    redis.call('PUBLISH', P .. 'c:' .. room, 'L' .. dead .. user)
  end
end
return redis.call('HLEN', ns) + redis.call('SCARD', nm)
