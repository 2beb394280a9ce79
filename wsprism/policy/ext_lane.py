"""The Ext Lane (text frames, JSON envelopes): SPEC section 3's checks, in order.

1. size → PAYLOAD_TOO_LARGE, close 1009            } in the per-connection framer
2. rate limit → dropped (RATE_LIMITED ≤ 1/s)        } (wsprism/_fast), before any
3a. invalid UTF-8 → close 1007                       } Python object is made
3b. not an envelope → BAD_REQUEST + 1008; v ≠ 1 → UNSUPPORTED_VERSION + 1008
4. allowlist → NOT_ALLOWED (sys:ping and sys:refresh always pass)
5. dispatch (core.dispatcher), then the ack

`on_envelope` is steps 3b to 5; the framer calls it for every text message that passed
steps 1 to 3a.
"""
import msgspec

from .._fast import counters as c
from ..core import codes
from ..core.dispatcher import dispatch
from ..core.envelope import DecodeFailed, decode_envelope, peek_version

_CONTROL = frozenset({"ping", "refresh"})


def on_envelope(session, payload: bytes) -> None:
    tenant = session.tenant
    lane = session.lane
    try:
        env = decode_envelope(payload)
    except DecodeFailed as exc:
        version = peek_version(payload)
        if version is not None and version[0] != 1:
            return _unsupported(session, version[1])
        lane.bump(c.C_DECODE_ERRORS)
        lane.bump(c.C_EXT_BAD_REQUEST)
        session.send_error(codes.BAD_REQUEST, f"invalid envelope: {exc}")
        session.close(codes.CLOSE_POLICY, "bad envelope")
        return
    if env.v != 1:
        return _unsupported(session, env.seq)
    svc = env.svc
    if not (svc == "sys" and env.type in _CONTROL) and not tenant.ext_allow.allows(svc, env.type):
        lane.bump(c.C_EXT_NOT_ALLOWED)
        session.send_error(codes.NOT_ALLOWED, "svc:type not in the tenant's ext_allowlist", env.seq)
        return
    dispatch(session, env, payload)


def _unsupported(session, seq) -> None:
    session.lane.bump(c.C_EXT_BAD_REQUEST)
    session.send_error(codes.UNSUPPORTED_VERSION, "only protocol version 1 is supported",
                       msgspec.UNSET if seq is None else seq)
    session.close(codes.CLOSE_POLICY, "unsupported version")
