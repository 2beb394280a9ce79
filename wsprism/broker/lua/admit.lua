-- Admit one session in one step: sessions of dead nodes stop counting, a live session
-- with the same (user, sid) is replaced, the per-user limit denies or kicks the oldest,
-- max_sessions_total refuses. Nothing is written unless the session is admitted
-- (dropping a dead node's session is always right).
-- ARGV: P, nodes key, node-channel prefix, node, tenant, user, sid, max per user,
--       kick oldest (1/0), max total (0 = none)
-- -> {'ok', seq, [node, sid, seq, 'R'|'K']...} | {'deny'} | {'full'}
local P, nodes, nchan, node, tenant, user, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local limit, kick, max_total = tonumber(ARGV[8]), ARGV[9] == '1', tonumber(ARGV[10])
local ukey, nkey = P .. 'u:' .. user, P .. 'un:' .. user
local now = now_ms()
local current = redis.call('ZRANGE', ukey, 0, -1)
for i = 1, #current do
  local owner = redis.call('HGET', nkey, current[i])
  if not owner or not alive(nodes, owner, now) then drop_session(P, user, current[i], owner) end
end
local old_node = redis.call('HGET', nkey, sid)
local old_seq = old_node and redis.call('ZSCORE', ukey, sid)
local excess = redis.call('ZCARD', ukey) - (old_node and 1 or 0) + 1 - limit
if excess > 0 and not kick then return {'deny'} end
if not old_node and max_total > 0 and tonumber(redis.call('GET', P .. 'n') or '0') >= max_total then
  return {'full'}
end
local out = {'ok', 0}
local function kicked(owner, s, q, why)
  out[#out + 1] = owner; out[#out + 1] = s; out[#out + 1] = q; out[#out + 1] = why
  if owner and owner ~= node then
    redis.call('PUBLISH', nchan .. owner, 'K' .. node .. cmsgpack.pack({tenant, user, s, tonumber(q), why}))
  end
end
if old_node then
  drop_session(P, user, sid, old_node)
  kicked(old_node, sid, old_seq, 'R')
end
if excess > 0 then
  local victims = redis.call('ZRANGE', ukey, 0, excess - 1, 'WITHSCORES')
  for i = 1, #victims, 2 do
    local owner = redis.call('HGET', nkey, victims[i])
    drop_session(P, user, victims[i], owner)
    kicked(owner, victims[i], victims[i + 1], 'K')
  end
end
local seq = redis.call('INCR', P .. 'seq')
redis.call('ZADD', ukey, seq, sid)
redis.call('HSET', nkey, sid, node)
redis.call('HSET', P .. 'ns:' .. node, sid .. ' ' .. user, seq)
redis.call('INCR', P .. 'n')
redis.call('HINCRBY', P .. 'users', user, 1)
out[2] = seq
return out
