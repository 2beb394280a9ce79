"""Outbound frames: built once, corked per connection within a loop turn, fanned out,
and kept within a memory budget (pure-Python twin of `fanout_c`).

Every frame a session sends goes through its `Endpoint` outbox. The first frame queued
in a loop turn registers the endpoint with the gateway's `Corker`, which flushes all
dirty endpoints once, at the end of the turn (`loop.call_soon`): each connection gets
one write per turn however many frames it was sent. Order per connection is kept, and
nothing waits longer than one turn. Up to SCRATCH_MAX bytes a turn's frames are joined
into one buffer (the compiled module reuses one of that size); above it they go to the
transport as they are (`writelines`, one writev): what the socket does not take stays a
reference to the shared frame instead of a copy per member, and no buffer keeps the
size of the largest turn.

A server frame is the same bytes for every recipient, so a room fan-out builds it once
(`build_frame`) and queues that one object for every member (`broadcast`). Lossy frames
(Hot Lane) skip a member whose transport is above its high-water mark (`paused`, set by
asyncio's pause_writing) and count it as a drop; reliable frames are queued.

Memory budget (SPEC 5). What a session holds for the client is its transport's write
buffer plus what is queued for this turn. Each endpoint keeps `acct`, the transport's
buffer as measured right after its last write (it can only drain until the next one, so
it is an upper bound), and `out_bytes`, this turn's queue; the corker keeps the sum over
all endpoints (`total`) and the endpoints whose `acct` is not zero (`holders`).

- per session: a frame that would take `acct + out_bytes` past `max_session`
  (gateway.outbound_max_bytes) is not queued; after a fresh measurement confirms it, the
  endpoint is marked `over` and, at the end of the turn, its queue is dropped and
  `overflow(OVER_SESSION)` closes it (4005), whatever the lane.
- per process: when `total` passes `max_total` (gateway.outbound_total_max_bytes) at
  the end of a turn, every holder is measured afresh and, while the sum is still over,
  the largest holders get `overflow(OVER_TOTAL)` first.

All of it is integer arithmetic on the endpoint and the corker: the fan-out loop
allocates nothing per member. A closing endpoint stops counting at once (its transport
is aborted within a second, SPEC 14).
"""
import asyncio
import logging
import sys
import time

from picows import WSListener

from .codes_py import OverflowReason, SessionState

_log = logging.getLogger("wsprism.fanout")
_PENDING, _OPEN = SessionState.S_PENDING, SessionState.S_OPEN
# why an endpoint is over its budget (Endpoint.overflow)
_OVER_SESSION, _OVER_TOTAL = OverflowReason.OVER_SESSION, OverflowReason.OVER_TOTAL

UNLIMITED = sys.maxsize
SCRATCH_MAX = 65536    # a turn's frames above this go to the transport as they are, not joined
ENFORCE_LOG_INTERVAL = 10.0   # seconds between two warnings about the process budget


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
    """The dirty endpoints of one event loop, flushed once at the end of the turn, and
    the process's outbound budget."""

    __slots__ = ("dirty", "scheduled", "loop", "max_session", "max_total", "total", "holders",
                 "enforced", "closed_total", "logged_at")

    def __init__(self, loop=None, max_session: int = UNLIMITED, max_total: int = UNLIMITED) -> None:
        self.dirty: list = []
        self.scheduled = False
        self.loop = loop
        self.max_session = max_session
        self.max_total = max_total
        self.total = 0              # bytes all endpoints hold (acct + out_bytes, summed)
        self.holders: set = set()   # endpoints whose transport buffer was not empty
        self.enforced = 0           # times the process budget was enforced
        self.closed_total = 0       # endpoints closed for it
        self.logged_at = -ENFORCE_LOG_INTERVAL

    def configure(self, max_session: int, max_total: int) -> None:
        """New limits (reload): they apply from the next frame and the next turn."""
        self.max_session = max_session
        self.max_total = max_total

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
        if self.total > self.max_total:
            self.enforce()

    def enforce(self) -> None:
        """The process holds more than max_total: measure every holder afresh, then close
        the largest holders first until the sum is back under the limit."""
        for endpoint in list(self.holders):
            endpoint.measure()
        if self.total <= self.max_total:
            return
        self.enforced += 1
        before = self.total
        closed = 0
        for endpoint in sorted(self.holders, key=_held, reverse=True):
            if self.total <= self.max_total:
                break
            closed += 1
            try:
                endpoint.overflow(_OVER_TOTAL)
            except Exception:
                _log.exception("closing %r over the outbound budget failed", endpoint)
            endpoint.release()      # whatever overflow did, it stops counting
        self.closed_total += closed
        now = time.monotonic()
        if now - self.logged_at >= ENFORCE_LOG_INTERVAL:
            self.logged_at = now
            _log.warning(
                "outbound buffers held %d bytes, over gateway.outbound_total_max_bytes (%d): "
                "closed %d sessions holding the most (4005); %d bytes held now",
                before, self.max_total, closed, self.total)


def _held(endpoint) -> int:
    return endpoint.acct


class Endpoint(WSListener):
    """A connection's outbound side."""

    __slots__ = ("transport", "state", "paused", "corker", "_out", "acct", "out_bytes", "over")

    def __init__(self, corker: Corker) -> None:
        self.transport = None
        self.state = _PENDING
        self.paused = False
        self.corker = corker
        self._out = None
        self.acct = 0          # transport write buffer after our last write (an upper bound)
        self.out_bytes = 0     # bytes queued in _out this turn
        self.over = False      # past max_session: closed at the end of the turn

    def enqueue(self, frame: bytes, lossy: bool = False) -> bool:
        """Queue a built frame for this turn's write. False when a lossy frame is dropped
        (this endpoint is over its high-water mark, or over its budget)."""
        if self.state > _OPEN:
            return True
        if lossy and self.paused:
            return False
        if self.over:
            return not lossy
        n = len(frame)
        corker = self.corker
        if self.acct + self.out_bytes + n > corker.max_session:
            self.measure()                    # acct may be stale: the buffer drains
            if self.acct + self.out_bytes + n > corker.max_session:
                self.over = True
                if self._out is None:
                    corker.add(self)
                return not lossy
        self.out_bytes += n
        corker.total += n
        out = self._out
        if out is None:               # the turn's first frame: no list (no GC-tracked object)
            self._out = frame
            corker.add(self)
        elif type(out) is bytes:
            self._out = [out, frame]
        else:
            out.append(frame)
        return True

    def drop_queued(self) -> None:
        """Forget this turn's queue (an endpoint closed for its budget writes no more)."""
        self._out = None
        self.corker.total -= self.out_bytes
        self.out_bytes = 0
        self.over = False

    def flush(self) -> None:
        """Write everything queued, in order, in one write; or, over budget, close."""
        if self.over:
            self.drop_queued()
            self.overflow(_OVER_SESSION)
            return
        out = self._out
        if out is None:
            return
        self._out = None
        self.corker.total -= self.out_bytes
        self.out_bytes = 0
        tr = self.transport
        if tr is None or tr.is_disconnected or tr.is_close_frame_sent:
            return
        if type(out) is bytes:
            tr.underlying_transport.write(out)
        elif sum(map(len, out)) > SCRATCH_MAX:
            tr.underlying_transport.writelines(out)   # what the socket does not take stays shared
        else:
            tr.underlying_transport.write(b"".join(out))
        self.measure()

    def measure(self) -> None:
        """Take the transport's write buffer size as this endpoint's holding."""
        tr = self.transport
        if tr is None or tr.is_disconnected or self.state > _OPEN:
            held = 0                  # a closing endpoint no longer counts
        else:
            held = tr.underlying_transport.get_write_buffer_size()
        acct = self.acct
        if held != acct:
            corker = self.corker
            corker.total += held - acct
            if not acct:
                corker.holders.add(self)
            elif not held:
                corker.holders.discard(self)
            self.acct = held

    def release(self) -> None:
        """Stop counting this endpoint (it is closing or gone); idempotent."""
        corker = self.corker
        if self.acct:
            corker.holders.discard(self)
        corker.total -= self.acct + self.out_bytes
        self.acct = 0
        self.out_bytes = 0
        self._out = None
        self.over = False

    def overflow(self, reason: int) -> None:
        """Over budget (OVER_SESSION or OVER_TOTAL). Sessions close 4005; a bare
        endpoint just drops its connection."""
        self.release()
        tr = self.transport
        if tr is not None:
            tr.disconnect(False)


def broadcast(members, frame: bytes, lossy: bool) -> int:
    """Queue one built frame for every member; returns how many lossy drops there were."""
    drops = 0
    for member in members:
        if not member.enqueue(frame, lossy):
            drops += 1
    return drops
