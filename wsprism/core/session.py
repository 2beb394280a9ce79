"""One client session: its identity, rooms, rate-limit state and the ways to talk to it.

A `Session` is also the picows listener of its connection (transport/listener.py adds
the frame callbacks), so an idle connection costs one Python object on our side.
"""
import asyncio
import secrets

import msgspec
from picows import WSListener, WSMsgType

from .codes import CLOSE_NORMAL, CLOSE_SLOW_CONSUMER
from .envelope import encode_error

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY

# states
PENDING = 0      # upgraded, not yet admitted (webhook auth under way, or just connected)
OPEN = 1         # admitted: messages flow
CLOSING = 2      # close frame sent, waiting for the peer's close or the timeout
CLOSED = 3       # gone: detached from registry and rooms

CLOSE_TIMEOUT = 1.0   # seconds to wait for the peer's close frame before aborting


class Session(WSListener):
    __slots__ = (
        "gateway", "tenant", "transport", "user", "sid", "trace_id", "ip", "ticket_exp",
        "bucket", "rooms", "state", "rl_notice_at", "exp_handle", "frag", "frag_binary",
        "n_traces", "seen", "idle_ticks", "registered", "close_handle", "paused", "slow_handle",
        "pending_ticket",
    )

    def __init__(self, gateway, tenant, user: str | None, sid: str, ip: str, exp: float | None) -> None:
        self.gateway = gateway
        self.tenant = tenant
        self.transport = None
        self.user = user
        self.sid = sid
        self.trace_id = secrets.token_hex(8)
        self.ip = ip
        self.ticket_exp = exp
        self.bucket = None
        self.rooms: list[str] = []          # joined rooms, least recently (re)joined first
        self.state = PENDING
        self.rl_notice_at = -1.0
        self.exp_handle = None
        self.frag: bytearray | None = None
        self.frag_binary = False
        self.n_traces = 0
        self.seen = True
        self.idle_ticks = 0
        self.registered = False
        self.close_handle = None
        self.paused = False
        self.slow_handle = None
        self.pending_ticket: str | None = None   # webhook auth: the ticket until the backend answers

    # -- identity --------------------------------------------------------------------
    @property
    def active_room(self) -> str | None:
        rooms = self.rooms
        return rooms[-1] if rooms else None

    def next_trace_id(self) -> str:
        self.n_traces += 1
        return f"{self.trace_id}-{self.n_traces}"

    # -- sending ---------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Reliable text frame (Ext Lane, sys)."""
        if self.state <= OPEN:
            self.transport.send(_TEXT, data)

    def send_binary(self, data) -> None:
        if self.state <= OPEN:
            self.transport.send(_BINARY, data)

    def send_lossy(self, data) -> bool:
        """Lossy binary frame (Hot Lane fan-out): dropped, never queued, while this
        session's outbound buffer is above the high-water mark. False when dropped."""
        if self.paused:
            return False
        if self.state <= OPEN:
            self.transport.send(_BINARY, data)
        return True

    def send_error(self, code: str, msg: str, seq=msgspec.UNSET) -> None:
        self.send(encode_error(code, msg, seq, self.next_trace_id()))

    # -- backpressure (asyncio calls these at the transport's high/low water marks) ----
    def pause_writing(self) -> None:
        self.paused = True
        if self.slow_handle is None and self.state <= OPEN:
            self.slow_handle = asyncio.get_running_loop().call_later(
                self.tenant.writer_send_timeout, self._slow_consumer)

    def resume_writing(self) -> None:
        self.paused = False
        if self.slow_handle is not None:
            self.slow_handle.cancel()
            self.slow_handle = None

    def _slow_consumer(self) -> None:
        self.slow_handle = None
        if self.paused and self.state <= OPEN:
            self.tenant.stats.writer_timeouts += 1
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and leave registry and rooms now; abort the socket if the
        peer has not completed the close within CLOSE_TIMEOUT."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        self.gateway.detach(self)
        tr = self.transport
        if tr is None:
            return
        tr.send_close(code, reason.encode()[:120])
        self.close_handle = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, tr.disconnect, False)

    def __repr__(self) -> str:
        return f"<Session {self.tenant.id}/{self.user}/{self.sid} state={self.state}>"
