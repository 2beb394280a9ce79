"""Arena: a small authoritative game run inside wsPrism as a Python service (SPEC 15).

Players join a room `arena:<name>`; each gets a slot and a position on a WIDTH x HEIGHT
grid. They steer on the Hot Lane (binary, lossy); the server owns the game state: every
tick (20 Hz by default) it moves each player one step in the direction it last asked for,
keeps everyone inside the grid, and publishes the whole state to the room with
`publish_hot`. Who holds which slot goes out reliably (`arena.roster`) whenever it
changes; chat is the built-in `chat:send` on the Ext Lane.

Wire formats (all integers little-endian):

    client -> gateway  [7][1][flags][seq u32, if flags & 1][dx i8][dy i8]     steer (op 1)
    gateway -> room    [7][2][0][tick u32][n u8] + n x [slot u8][x u16][y u16]  state (op 2)

    arena:state (Ext Lane, reliable) -> reply {"tick", "players": {slot: [x, y]}}
    arena.roster (published)          -> {"players": {slot: user}}

Options (wsprism.yaml `options:`): width, height (default 64 x 64), tick_ms (50).
"""
import struct

from wsprism.service import Service, ServiceError

OP_STEER = 1
OP_STATE = 2
PREFIX = "arena:"
_STATE_HEAD = struct.Struct("<BBBIB")
_PLAYER = struct.Struct("<BHH")


class Player:
    __slots__ = ("slot", "user", "sid", "x", "y", "dx", "dy")

    def __init__(self, slot: int, user: str, sid: str, x: int, y: int) -> None:
        self.slot, self.user, self.sid = slot, user, sid
        self.x, self.y = x, y
        self.dx = self.dy = 0


class Match:
    """One room's game: its players by sid (a user may play from two tabs)."""

    __slots__ = ("room", "players", "tick")

    def __init__(self, room: str) -> None:
        self.room = room
        self.players: dict[str, Player] = {}
        self.tick = 0

    def free_slot(self) -> int:
        used = {p.slot for p in self.players.values()}
        return next(i for i in range(256) if i not in used)


class Arena(Service):
    def __init__(self, options: dict) -> None:
        super().__init__(options)
        self.width = int(options.get("width", 64))
        self.height = int(options.get("height", 64))
        self.tick_ms = float(options.get("tick_ms", 50))
        self.matches: dict[str, Match] = {}
        self.gw = None

    async def on_start(self, gw) -> None:
        self.gw = gw
        gw.every(self.tick_ms, self.step)

    # -- membership ----------------------------------------------------------------------
    async def on_join(self, ctx, room: str) -> None:
        if not room.startswith(PREFIX):
            return
        match = self.matches.get(room)
        if match is None:
            match = self.matches[room] = Match(room)
        if ctx.sid in match.players or len(match.players) >= 256:
            return
        slot = match.free_slot()
        match.players[ctx.sid] = Player(slot, ctx.user, ctx.sid, (slot * 7) % self.width, (slot * 13) % self.height)
        self.publish_roster(match)

    async def on_leave(self, ctx, room: str) -> None:
        match = self.matches.get(room)
        if match is None or match.players.pop(ctx.sid, None) is None:
            return
        if match.players:
            self.publish_roster(match)
        else:
            del self.matches[room]

    def publish_roster(self, match: Match) -> None:
        players = {str(p.slot): p.user for p in match.players.values()}
        self.gw.publish(match.room, "arena", "roster", {"players": players})

    # -- input (Hot Lane) -------------------------------------------------------------------
    def on_hot(self, ctx, op: int, flags: int, payload: bytes) -> None:
        if op != OP_STEER:
            raise ServiceError("BAD_REQUEST", "unknown arena opcode")
        if len(payload) != 2:
            raise ServiceError("BAD_REQUEST", "steer needs 2 bytes: dx, dy")
        match = self.matches.get(ctx.active_room)
        player = match.players.get(ctx.sid) if match is not None else None
        if player is None:
            raise ServiceError("NOT_ALLOWED", "join an arena room first")
        dx, dy = struct.unpack("bb", payload)
        player.dx = (dx > 0) - (dx < 0)         # one step per tick at most, whatever was asked
        player.dy = (dy > 0) - (dy < 0)

    # -- the tick ---------------------------------------------------------------------------
    def step(self) -> None:
        w, h = self.width, self.height
        for match in self.matches.values():
            match.tick += 1
            parts = [_STATE_HEAD.pack(self.hot_svc_id, OP_STATE, 0, match.tick & 0xFFFFFFFF, len(match.players))]
            for p in match.players.values():
                p.x = min(max(p.x + p.dx, 0), w - 1)
                p.y = min(max(p.y + p.dy, 0), h - 1)
                parts.append(_PLAYER.pack(p.slot, p.x, p.y))
            self.gw.publish_hot(match.room, b"".join(parts))

    # -- queries (Ext Lane) ------------------------------------------------------------------
    async def on_message(self, ctx, msg):
        if msg.type != "state":
            raise ServiceError("BAD_REQUEST", "arena knows only `state`")
        match = self.matches.get(msg.room or ctx.active_room or "")
        if match is None:
            raise ServiceError("NOT_ALLOWED", "no such arena")
        return {"tick": match.tick, "players": {str(p.slot): [p.x, p.y] for p in match.players.values()}}


def decode_state(frame: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """(tick, {slot: (x, y)}) of a state frame (for clients written in Python)."""
    _, _, _, tick, n = _STATE_HEAD.unpack_from(frame)
    players = {}
    for i in range(n):
        slot, x, y = _PLAYER.unpack_from(frame, _STATE_HEAD.size + i * _PLAYER.size)
        players[slot] = (x, y)
    return tick, players
