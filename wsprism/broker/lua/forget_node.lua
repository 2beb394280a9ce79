-- A dead node with nothing left: drop its lease entry and tenant list.
-- ARGV: nodes key, node-tenants key, dead node -> 1 forgotten | 0 (alive again, or another node was first)
if alive(ARGV[1], ARGV[3], now_ms()) then return 0 end
redis.call('DEL', ARGV[2])
return redis.call('ZREM', ARGV[1], ARGV[3])
