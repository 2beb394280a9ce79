-- A tenant's totals over every node. ARGV: P -> {sessions, rooms, users}
local P = ARGV[1]
return {tonumber(redis.call('GET', P .. 'n') or '0'), redis.call('SCARD', P .. 'rooms'), redis.call('HLEN', P .. 'users')}
