"""The Ext Lane (text frames, JSON envelopes): SPEC section 3's checks, in order.

1. size → PAYLOAD_TOO_LARGE, close 1009            } in the per-connection framer
2. rate limit → dropped (RATE_LIMITED ≤ 1/s)        } (wsprism/_fast), before any
3a. invalid UTF-8 → close 1007                       } Python object is made
3b. not an envelope → BAD_REQUEST + 1008; v ≠ 1 → UNSUPPORTED_VERSION + 1008
4. allowlist → NOT_ALLOWED (sys:ping and sys:refresh always pass; behind a held answer,
   in its turn: core/dispatcher.py)
5. dispatch (core/dispatcher.py: the tenant's handler table), then the ack

One `ExtLane` per tenant does steps 3b to 5; its `on_envelope` is the tenant's
`LanePolicy.ext_entry`, which the framer calls for every text message that passed
steps 1 to 3a. A reload swaps its allowlist and dispatcher in place.
"""
import msgspec

from .._fast import Counter
from ..core import codes
from ..core.dispatcher import error_in_turn
from ..core.envelope import DecodeFailed, decode_envelope, peek_version

_CONTROL = frozenset({"ping", "refresh"})


class ExtLane:
    __slots__ = ("allow", "dispatch")

    def __init__(self, allow, dispatch) -> None:
        self.allow = allow            # policy/allowlist.py ExtAllowlist
        self.dispatch = dispatch      # core/dispatcher.py Dispatcher.dispatch

    def on_envelope(self, session, payload: bytes) -> None:
        lane = session.lane
        try:
            env = decode_envelope(payload)
        except DecodeFailed as exc:
            version = peek_version(payload)
            if version is not None and version[0] != 1:
                return _unsupported(session, version[1])
            lane.bump(Counter.C_DECODE_ERRORS)
            lane.bump(Counter.C_EXT_DENY_BAD_REQUEST)
            session.refuse(codes.BAD_REQUEST, f"invalid envelope: {exc}", codes.CLOSE_POLICY)
            return
        if env.v != 1:
            return _unsupported(session, env.seq)
        svc = env.svc
        if not (svc == "sys" and env.type in _CONTROL) and not self.allow.allows(svc, env.type):
            lane.bump(Counter.C_EXT_DENY_NOT_ALLOWED)
            error_in_turn(session, codes.NOT_ALLOWED, "svc:type not in the tenant's ext_allowlist", env.seq)
            return
        self.dispatch(session, env)


def _unsupported(session, seq) -> None:
    session.lane.bump(Counter.C_EXT_DENY_BAD_REQUEST)
    session.refuse(codes.UNSUPPORTED_VERSION, "only protocol version 1 is supported", codes.CLOSE_POLICY,
                   msgspec.UNSET if seq is None else seq)
