"""The Ext Lane (text frames, JSON envelopes): SPEC section 3's checks, in order.

1. size → PAYLOAD_TOO_LARGE, close 1009
2. rate limit → dropped (RATE_LIMITED notice at most once a second)
3. decode → invalid UTF-8: close 1007; bad envelope: BAD_REQUEST + 1008;
   v ≠ 1: UNSUPPORTED_VERSION + 1008
4. allowlist → NOT_ALLOWED (sys:ping and sys:refresh always pass)
5. dispatch (core.dispatcher), then the ack
"""
from .._fast import utf8_valid
from ..core import codes
from ..core.dispatcher import dispatch
from ..core.envelope import DecodeFailed, decode_envelope
from ..ops import metrics as m
from . import ratelimit

_CONTROL = frozenset({"ping", "refresh"})


def on_text(session, payload: bytes) -> None:
    tenant = session.tenant
    stats = tenant.stats
    if len(payload) > tenant.max_frame_bytes:
        return too_large(session)
    if not ratelimit.allow(session):
        stats.policy[m.EXT_RATE_LIMITED] += 1
        if ratelimit.should_notify(session):
            session.send_error(codes.RATE_LIMITED, "rate limit exceeded, message dropped")
        return
    if not utf8_valid(payload):
        stats.decode_errors += 1
        stats.policy[m.EXT_BAD_REQUEST] += 1
        session.close(codes.CLOSE_INVALID_UTF8, "invalid UTF-8")
        return
    try:
        env = decode_envelope(payload)
    except DecodeFailed as exc:
        stats.decode_errors += 1
        stats.policy[m.EXT_BAD_REQUEST] += 1
        session.send_error(codes.BAD_REQUEST, f"invalid envelope: {exc}")
        session.close(codes.CLOSE_POLICY, "bad envelope")
        return
    if env.v != 1:
        stats.policy[m.EXT_BAD_REQUEST] += 1
        session.send_error(codes.UNSUPPORTED_VERSION, "only protocol version 1 is supported", env.seq)
        session.close(codes.CLOSE_POLICY, "unsupported version")
        return
    svc = env.svc
    if not (svc == "sys" and env.type in _CONTROL) and not tenant.ext_allow.allows(svc, env.type):
        stats.policy[m.EXT_NOT_ALLOWED] += 1
        session.send_error(codes.NOT_ALLOWED, "svc:type not in the tenant's ext_allowlist", env.seq)
        return
    dispatch(session, env, payload)


def too_large(session) -> None:
    """PAYLOAD_TOO_LARGE then close 1009 (also used for oversize fragmented messages)."""
    tenant = session.tenant
    tenant.stats.policy[m.EXT_TOO_LARGE] += 1
    session.send_error(codes.PAYLOAD_TOO_LARGE, f"message larger than {tenant.max_frame_bytes} bytes")
    session.close(codes.CLOSE_TOO_BIG, "message too big")
