-- Renew this node's lease (deadline = Redis' own clock + lease). 1 when the node was not
-- registered or its lease had run out (Redis restarted empty, or the others may be reaping
-- it): the node must then register its sessions and memberships again.
-- ARGV: nodes key, node, lease ms, node-tenants key, tenant ids... -> {fresh, now ms}
local nodes, node, lease_ms, nt = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local fresh = not alive(nodes, node, now)
redis.call('ZADD', nodes, now + lease_ms, node)
if #ARGV > 4 then redis.call('SADD', nt, unpack(ARGV, 5)) end
return {fresh and 1 or 0, now}
