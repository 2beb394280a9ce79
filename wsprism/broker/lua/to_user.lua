-- Publish a control message to every other node holding a session of `user`.
-- ARGV: P, node-channel prefix, this node, user, message -> {sessions anywhere, sessions here}
local owners = redis.call('HVALS', ARGV[1] .. 'un:' .. ARGV[4])
local seen, here = {}, 0
for _, owner in ipairs(owners) do
  if owner == ARGV[3] then
    here = here + 1
  elseif not seen[owner] then
    seen[owner] = true
    redis.call('PUBLISH', ARGV[2] .. owner, ARGV[5])
  end
end
return {#owners, here}
