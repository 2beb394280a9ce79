-- Shared by every script (prepended when the scripts are loaded). All keys are derived
-- from ARGV (see broker/keys.py); a tenant's keys share one hash tag.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A node counts while its lease (a deadline on Redis' clock) has not passed.
local function alive(nodes, node, now)
  local lease = redis.call('ZSCORE', nodes, node)
  return lease and tonumber(lease) >= now
end

-- Remove one session (present in the tenant's keys) and its node's index entry.
local function drop_session(P, user, sid, owner)
  redis.call('ZREM', P .. 'u:' .. user, sid)
  redis.call('HDEL', P .. 'un:' .. user, sid)
  if owner then redis.call('HDEL', P .. 'ns:' .. owner, sid .. ' ' .. user) end
  redis.call('DECR', P .. 'n')
  if redis.call('HINCRBY', P .. 'users', user, -1) <= 0 then redis.call('HDEL', P .. 'users', user) end
end

-- One node stops contributing (room, user). True when the user is now in the room nowhere.
local function drop_member(P, room, user)
  local rk = P .. 'r:' .. room
  local gone = false
  if redis.call('HINCRBY', rk, user, -1) <= 0 then
    redis.call('HDEL', rk, user)
    gone = true
    if redis.call('EXISTS', rk) == 0 then redis.call('SREM', P .. 'rooms', room) end
  end
  local uk = P .. 'ur:' .. user
  if redis.call('HINCRBY', uk, room, -1) <= 0 then redis.call('HDEL', uk, room) end
  return gone
end

local function split(entry)
  local sp = string.find(entry, ' ', 1, true)
  return string.sub(entry, 1, sp - 1), string.sub(entry, sp + 1)
end

-- How many of `user`'s rooms it is in through at least one live node (the slow path of
-- max_rooms_per_user: only run at the limit). ur:<user> counts nodes per room; each dead
-- node still holding (room, user) is subtracted.
local function live_rooms(P, nodes, user)
  local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. now_ms())
  local ur = redis.call('HGETALL', P .. 'ur:' .. user)
  if #dead == 0 then return #ur / 2 end
  local live = 0
  for i = 1, #ur, 2 do
    local n = tonumber(ur[i + 1])
    for _, d in ipairs(dead) do
      if redis.call('SISMEMBER', P .. 'nm:' .. d, ur[i] .. ' ' .. user) == 1 then n = n - 1 end
    end
    if n > 0 then live = live + 1 end
  end
  return live
end

-- Which nodes have members in a room: rn:<room> counts each node's (room, user) entries.
-- A node arriving in or leaving a room publishes 'N'/'X' on the room's channel with a
-- version from the tenant's counter `rnv`, so the others know whether anyone else
-- needs their publishes (a node alone in a room publishes nothing). -> the version, or
-- false when the node's presence in the room did not change.
local function node_enters_room(P, room, node)
  if redis.call('HINCRBY', P .. 'rn:' .. room, node, 1) ~= 1 then return false end
  local v = redis.call('INCR', P .. 'rnv')
  redis.call('PUBLISH', P .. 'c:' .. room, 'N' .. node .. v)
  return v
end

local function node_leaves_room(P, room, node)
  local rn = P .. 'rn:' .. room
  if redis.call('HINCRBY', rn, node, -1) > 0 then return false end
  redis.call('HDEL', rn, node)
  local v = redis.call('INCR', P .. 'rnv')
  redis.call('PUBLISH', P .. 'c:' .. room, 'X' .. node .. v)
  return v
end

-- The other nodes with members in a room, and the version they are as of.
local function room_nodes(P, room, node)
  local out = {tonumber(redis.call('GET', P .. 'rnv') or '0')}
  for _, n in ipairs(redis.call('HKEYS', P .. 'rn:' .. room)) do
    if n ~= node then out[#out + 1] = n end
  end
  return out
end
