"""Outbound frames: built once, corked per connection within a loop turn, fanned out
(pure-Python twin of `fanout_c`).

Every frame a session sends goes through its `Endpoint` outbox. The first frame queued
in a loop turn registers the endpoint with the gateway's `Corker`, which flushes all
dirty endpoints once, at the end of the turn (`loop.call_soon`): each connection gets
one write per turn however many frames it was sent. Order per connection is kept, and
nothing waits longer than one turn.

A server frame is the same bytes for every recipient, so a room fan-out builds it once
(`build_frame`) and queues that one object for every member (`broadcast`). Lossy frames
(Hot Lane) skip a member whose transport is above its high-water mark (`paused`, set by
asyncio's pause_writing) and count it as a drop; reliable frames are always queued.
"""
import asyncio
import logging

from picows import WSListener

from .codes_py import SessionState

_log = logging.getLogger("wsprism.fanout")
_PENDING, _OPEN = SessionState.S_PENDING, SessionState.S_OPEN


def build_frame(opcode: int, payload) -> bytes:
    """A complete server frame (FIN, unmasked) carrying `payload`."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + bytes(payload)


class Corker:
    """The dirty endpoints of one event loop, flushed once at the end of the turn."""

    __slots__ = ("dirty", "scheduled", "loop")

    def __init__(self, loop=None) -> None:
        self.dirty: list = []
        self.scheduled = False
        self.loop = loop

    def add(self, endpoint) -> None:
        self.dirty.append(endpoint)
        if not self.scheduled:
            self.scheduled = True
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            self.loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        self.dirty = []
        for endpoint in dirty:
            try:
                endpoint.flush()
            except Exception:       # one broken transport must not stall the others
                _log.exception("flush failed for %r", endpoint)


class Endpoint(WSListener):
    """A connection's outbound side."""

    __slots__ = ("transport", "state", "paused", "corker", "_out")

    def __init__(self, corker: Corker) -> None:
        self.transport = None
        self.state = _PENDING
        self.paused = False
        self.corker = corker
        self._out = None

    def enqueue(self, frame: bytes, lossy: bool = False) -> bool:
        """Queue a built frame for this turn's write. False only when a lossy frame is
        dropped because this endpoint is over its high-water mark."""
        if self.state > _OPEN:
            return True
        if lossy and self.paused:
            return False
        out = self._out
        if out is None:               # the turn's first frame: no list (no GC-tracked object)
            self._out = frame
            self.corker.add(self)
        elif type(out) is bytes:
            self._out = [out, frame]
        else:
            out.append(frame)
        return True

    def flush(self) -> None:
        """Write everything queued, in order, in one write."""
        out = self._out
        if out is None:
            return
        self._out = None
        tr = self.transport
        if tr is None or tr.is_disconnected or tr.is_close_frame_sent:
            return
        tr.underlying_transport.write(out if type(out) is bytes else b"".join(out))


def broadcast(members, frame: bytes, lossy: bool) -> int:
    """Queue one built frame for every member; returns how many lossy drops there were."""
    drops = 0
    for member in members:
        if not member.enqueue(frame, lossy):
            drops += 1
    return drops
