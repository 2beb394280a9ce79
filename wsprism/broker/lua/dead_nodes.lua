-- Nodes whose lease ran out, with the tenants each had state in.
-- ARGV: nodes key, node-tenants key prefix -> {node, {tenant...}, ...}
local now = now_ms()
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', ARGV[1], '-inf', '(' .. now)) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('SMEMBERS', ARGV[2] .. node)
end
return out
