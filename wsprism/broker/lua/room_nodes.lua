-- The other nodes with members in a room, as of a version of the tenant's counter
-- (after a reconnect: what a node publishes to the room depends on it).
-- ARGV: P, room, node -> {version, node...}
return room_nodes(ARGV[1], ARGV[2], ARGV[3])
