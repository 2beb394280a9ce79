"""One client session: who it is, where it is, and the ways to talk to it.

A session is also the picows listener of its connection, in two halves of one object:

- the compiled half, `Conn` (wsprism/_fast, framer): only what a frame touches. Its
  transport, state and outbox; its tenant's `LanePolicy`; its rate-limit bucket and
  notice clock; the active room's members (for the Hot Lane relay); fragments; the
  trace id of its errors. And the ways to talk to it: `send(bytes)` (reliable text),
  `send_binary`, `send_lossy(bytes) -> bool`, `send_error(code, msg, seq)`,
  `close(code, reason)`, `refuse(code, msg, close_code)` (sys.error then close),
  `next_trace_id()`.
- this half, `Session`: identity (tenant, user, sid, ip), rooms, the ticket's expiry and
  refresh, liveness and slow-consumer timers, the Python services' `ctx`. Nothing on a
  frame's way touches it.

It is built by the gateway once the handshake passed (`Session(host, tenant, user, sid,
ip, exp)`) and calls only what it is handed: its `host` (wsprism/lifecycle.py: connect,
disconnect, detach, backpressure) and its tenant's `LanePolicy` (the Ext Lane entry, the
Hot Lane handlers, the sys.error encoder).

States: PENDING (upgraded, not yet admitted: webhook auth under way), OPEN, CLOSING
(close frame sent), CLOSED (the connection is gone).
"""
from types import MappingProxyType

import msgspec

from .._fast import CLOSED, CLOSING, OPEN, PENDING, Conn

__all__ = ["Session", "PENDING", "OPEN", "CLOSING", "CLOSED", "NO_ROOMS", "about"]

# A session's `rooms` until its first join: one read-only empty mapping shared by all
# (a dict of its own is 64 bytes more per idle connection; RoomTable.join makes it).
NO_ROOMS = MappingProxyType({})


class Session(Conn):
    __slots__ = (
        "tenant", "user", "sid", "ip", "rooms",
        "ticket_exp", "pending_ticket", "exp_handle", "refreshing",
        "slow_handle", "idle_ticks", "registered", "ctx", "held",
    )

    def __init__(self, host, tenant, user, sid, ip, exp) -> None:
        Conn.__init__(self, host, tenant.lane)
        self.tenant = tenant
        self.user = user
        self.sid = sid                # None until admitted when the client gave none
        self.ip = ip
        self.rooms = NO_ROOMS         # joined rooms (name -> None), least recently (re)joined first
        self.ticket_exp = exp         # unix seconds, or None
        self.pending_ticket = None    # held until the auth webhook answers
        self.exp_handle = None        # closes it 4001 at expiry (session_auth.py)
        self.refreshing = False       # a webhook refresh is under way
        self.slow_handle = None       # closes it 4005 if it stays over its mark (lifecycle.py)
        self.idle_ticks = 0           # liveness sweeps without a frame (ops/liveness.py)
        self.registered = False       # in the tenant's registry and rooms
        self.ctx = None               # the session as Python services see it (made on first use)
        self.held = None              # its Ext Lane messages waiting for an answer (core/dispatcher.py)

    @property
    def active_room(self):
        return next(reversed(self.rooms), None)

    def __repr__(self) -> str:
        return f"<Session {self.tenant.id}/{self.user}/{self.sid} state={self.state}>"


def about(session=None, **fields) -> dict:
    """`extra=` for a log line about one session (and maybe a room, service or code):
    the context fields of wsprism/ops/logs.py. Fields that are None are left out; the
    rest become strings."""
    out = {}
    if session is not None:
        out["tenant"] = session.tenant.id
        out["trace_id"] = session.trace_id
        if session.user is not None:           # None while webhook auth has not answered
            out["user"] = session.user
        if session.sid is not None:
            out["sid"] = session.sid
    for name, value in fields.items():
        if value is not None and value is not msgspec.UNSET:
            out[name] = str(value)
    return out
