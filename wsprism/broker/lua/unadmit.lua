-- A session left: remove it if this node's entry is still the one admitted with `seq`
-- (a replacement with the same sid has its own seq).
-- ARGV: P, node, user, sid, seq -> 1 removed | 0 not there
local P, node, user, sid, seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', P .. 'ns:' .. node, sid .. ' ' .. user) ~= seq then return 0 end
drop_session(P, user, sid, node)
return 1
