"""A join with `since` while its replay is being sent (SPEC 13): the joining member.

`Tenant.join` admits the session to the room first (every limit counted, presence
included) as a joining member: in the room's `joining`, not in `members`, so no live
room message reaches it. Then its replay (a history `Cursor` from since+1) is queued a
chunk at a time, and in the loop turn where the cursor reaches the room's newest
message the session becomes a live member and gets `joined`. Everything published
before that turn is in the history, so the cursor reaches it; everything after goes
to it live: each message exactly once, in offset order.

Pacing. A replay that fits one chunk (CHUNK_MAX, 64 KiB: 100 messages of 200 B and
more) is queued whole in the turn of the join, `joined` right after it, as if there
were no replay. A larger one goes a chunk per loop turn while the session's socket
keeps up: the next chunk is queued only once the transport holds no more than one
chunk, so a replay never takes the session's buffer near its high-water mark (nor
near `gateway.outbound_max_bytes`), and a client that stops reading holds about two
chunks of our memory, never the room's history copied again. The replay never trips
the slow-consumer timer by its own volume (the "one reliable burst" of SPEC 13); if
its socket takes nothing for `writer_send_timeout_ms` the session is closed 4005 like
any slow consumer (and counted in `wsprism_writer_timeouts_total`).

A remote cursor (history in Redis, wsprism/cluster_history.py) may have nothing to hand
out yet without being done: its read is on its way. The run then parks on it (no
polling) and the cursor wakes it when the read answers or the broker's feed gives it
more.

While joining, the session may use the room (chat:send, presence, the Hot Lane): its
own messages reach it through its replay, in offset order. A re-join waits for the
same replay and gets its own `joined` then; a leave (or close) ends the replay
(counted as `aborted`) and a join still waiting hears BAD_REQUEST.
"""
import asyncio

from .._fast import OPEN, Counter, broadcast
from . import codes

CHUNK_MAX = 64 * 1024      # bytes of replay queued at once (at most half the high-water mark)
POLL = 0.01                # seconds between two looks at a socket that has not taken the last chunk


class JoinRun:
    """One joining session's replay into one room."""

    __slots__ = ("tenant", "store", "session", "room", "cursor", "answers", "announce",
                 "one", "chunk", "loop", "deadline", "handle")

    def __init__(self, tenant, store, session, room: str, answer) -> None:
        self.tenant = tenant
        self.store = store              # the tenant's history when the join began
        self.session = session
        self.room = room
        self.cursor = None              # set by start, once the session holds its place in the room
        self.answers = [answer]         # one per join waiting for this replay (re-joins add theirs)
        self.announce = False           # the user's first session in the room: user_joined when live
        self.one = (session,)
        high = session.transport.underlying_transport.get_write_buffer_limits()[1]
        self.chunk = max(1, min(CHUNK_MAX, high // 2))
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + tenant.writer_send_timeout
        self.handle = None

    def start(self, cursor, announce: bool) -> None:
        self.cursor = cursor
        self.announce = announce

    def step(self) -> bool:
        """Queue the next chunk if the socket took the last one. True when the replay is
        over: the session is live and has its `joined`."""
        self.handle = None
        session = self.session
        if session.state != OPEN:        # closing: its leave ends this run
            return False
        tenant = self.tenant
        if tenant.history is not self.store:    # history reset by a reload: what it held is gone
            tenant.went_live(self, reset=True)
            return True
        loop = self.loop
        if session.transport.underlying_transport.get_write_buffer_size() > self.chunk:
            if loop.time() >= self.deadline:
                tenant.lane.bump(Counter.C_SLOW_SEND_TIMEOUT)
                session.close(codes.CLOSE_SLOW_CONSUMER, "slow consumer")
                return False
            self.handle = loop.call_later(POLL, self.step)
            return False
        cursor = self.cursor
        frames = cursor.take(self.chunk)
        if frames:                              # one write of the chunk (a copy of ≤ ~64 KiB)
            broadcast(self.one, frames[0] if len(frames) == 1 else b"".join(frames), False)
        if cursor.done:
            tenant.went_live(self)
            return True
        if not frames:                          # a remote read still on its way: woken by it
            cursor.park(self.step)
            return False
        self.deadline = loop.time() + tenant.writer_send_timeout
        self.handle = loop.call_soon(self.step)   # after this turn's write (the corker's flush)
        return False

    def cancel(self) -> None:
        """The session left the room or closed: stop, count it, refuse waiting joins."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.cursor is not None:
            self.cursor.abort()
        for answer in self.answers:
            answer.fail(codes.BAD_REQUEST, "left the room before its join completed")
