"""What one node publishes for the others (the payload of a Redis PUBLISH).

Every message starts with a kind byte and the origin node id (NODE_ID_LEN ASCII hex
chars), so a node skips its own publishes: it has already delivered them locally, and
local delivery never waits on Redis.

On a room channel (`<p>:{T}:c:<room>`):

    'R' origin count:u32le frames     reliable (Ext Lane, sys, service publishes)
    'H' origin count:u32le frames     lossy (Hot Lane)
    'J' origin user                   presence: the user's first session anywhere joined
    'L' origin user                   presence: the user's last session anywhere left
    'N' origin version                node `origin` has members in the room now
    'X' origin version                node `origin` has none left

    'O' origin first epoch len... '\n' messages
                                      history (SPEC 13): messages numbered by the room's
                                      history step (lua/hist_publish.lua), offsets first,
                                      first+1, ...; delivered from this feed by every node,
                                      the origin included, in offset order

'O' is published by the history script, never by a node: its head is ASCII (decimal
first offset, the epoch, each message's length, separated by spaces, then a newline),
then the encoded messages (JSON text, positioned) back to back.

`frames` are complete WebSocket server frames (header and payload, as a member's socket
gets them), concatenated: every frame one node sends to one room in one event-loop turn
travels in one publish, in the order sent (per-sender order holds across nodes), and the
receiving node queues the whole run for each local member with one call, so it pays
per member, not per frame. A lossy run a member cannot take (over its high-water mark) is
dropped whole and counted as `count` drops. 'J', 'L', 'N' and 'X' are published by the
admission scripts themselves, inside the same atomic step that changed the membership.
'N'/'X' carry the tenant's room-node version (`rnv`): a node applies only those newer
than what it knows, so it always knows whether another node has members in a room it
is in, and publishes nothing to a room no other node needs.

On a node channel (`<p>:n:<node>`), control messages with a msgpack body (packed by the
Lua scripts with cmsgpack, or here with msgspec):

    'K' origin [tenant, user, sid, seq, reason]   kick one session ('R' replaced, 'K' kick_oldest)
    'U' origin [tenant, user, frame]              a frame for every session of a user
    'D' origin [tenant, user, code, reason]       disconnect every session of a user
    'P' origin                                    liveness probe (the node's own echo)
"""
import struct

import msgspec

NODE_ID_LEN = 12
HEADER = 1 + NODE_ID_LEN            # kind + origin
FRAMES_HEADER = HEADER + 4          # + count

RELIABLE = ord("R")
HOT = ord("H")
JOINED = ord("J")
LEFT = ord("L")
NODE_IN = ord("N")
NODE_OUT = ord("X")
KICK = ord("K")
TO_USER = ord("U")
DISCONNECT = ord("D")
PROBE = ord("P")
NUMBERED = ord("O")

KICK_REPLACED = "R"          # a kick's reason as the session script answers it
KICK_EXCEEDED = "K"

_count = struct.Struct("<I")
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


def frames_count(data: bytes) -> int:
    return _count.unpack_from(data, HEADER)[0]


def control_message(kind: int, origin: bytes, body=None) -> bytes:
    head = bytes((kind,)) + origin
    return head if body is None else head + _pack(body)


def control_body(data: bytes):
    return _unpack(memoryview(data)[HEADER:])


def numbered_parts(data: bytes) -> tuple[int, str, list]:
    """An 'O' message: (first offset, epoch, [message, ...])."""
    nl = data.index(b"\n", HEADER)
    head = data[HEADER:nl].split(b" ")
    out = []
    pos = nl + 1
    for n in head[2:]:
        end = pos + int(n)
        out.append(data[pos:end])
        pos = end
    return int(head[0]), head[1].decode(), out
