"""The Hot Lane (binary frames): SPEC section 4's checks, in order.

    [svc_id u8][opcode u8][flags u8][seq u32 LE if flags & 0x01][payload ...]

size (close 1009) → rate limit → header → hot_allowlist → hot_requires_active_room →
service. A frame failing a check after size is dropped; with `hot_error_mode:
sys_error` the sender also gets a `sys.error`, with `silent` nothing.
"""
from time import perf_counter

from ..core import codes
from ..ops import metrics as m
from ..services.relay import HOT_SERVICES
from . import ratelimit

FLAG_SEQ_PRESENT = 0x01
CLIENT_FLAGS = 0x03      # SEQ_PRESENT | ACK_REQUESTED; anything else makes the header invalid


def on_binary(session, payload: bytes) -> None:
    tenant = session.tenant
    stats = tenant.stats
    n = len(payload)
    if n > tenant.max_frame_bytes:
        return too_large(session)
    if not ratelimit.allow(session):
        stats.policy[m.HOT_RATE_LIMITED] += 1
        if not tenant.hot_silent and ratelimit.should_notify(session):
            session.send_error(codes.RATE_LIMITED, "rate limit exceeded, frame dropped")
        return
    if n < 3:
        return _reject(session, m.HOT_BAD_REQUEST, codes.BAD_REQUEST, "hot header needs 3 bytes")
    flags = payload[2]
    if flags & ~CLIENT_FLAGS:
        return _reject(session, m.HOT_BAD_REQUEST, codes.BAD_REQUEST, "invalid hot header flags")
    if flags & FLAG_SEQ_PRESENT and n < 7:
        return _reject(session, m.HOT_BAD_REQUEST, codes.BAD_REQUEST, "SEQ_PRESENT without 4 seq bytes")
    svc = payload[0]
    if not tenant.hot_allow.allows(svc, payload[1]):
        return _reject(session, m.HOT_NOT_ALLOWED, codes.NOT_ALLOWED, "svc_id:opcode not in the tenant's hot_allowlist")
    if tenant.hot_requires_room and not session.rooms:
        return _reject(session, m.HOT_NO_ACTIVE_ROOM, codes.NOT_ALLOWED, "join a room first")
    service = HOT_SERVICES.get(svc)
    if service is None:
        return _reject(session, m.HOT_NOT_ALLOWED, codes.NOT_ALLOWED, "no service for this svc_id")
    stats.policy[m.HOT_ALLOW] += 1
    tenant.hot_seq += 1
    if tenant.hot_seq & m.HOT_SAMPLE_MASK:
        service(session, payload, flags)
        return
    t0 = perf_counter()
    service(session, payload, flags)
    stats.dispatch_hot.observe(perf_counter() - t0)


def too_large(session) -> None:
    """PAYLOAD_TOO_LARGE (unless silent) then close 1009."""
    tenant = session.tenant
    tenant.stats.policy[m.HOT_TOO_LARGE] += 1
    if not tenant.hot_silent:
        session.send_error(codes.PAYLOAD_TOO_LARGE, f"frame larger than {tenant.max_frame_bytes} bytes")
    session.close(codes.CLOSE_TOO_BIG, "frame too big")


def _reject(session, key, code: str, msg: str) -> None:
    tenant = session.tenant
    tenant.stats.policy[key] += 1
    if not tenant.hot_silent:
        session.send_error(code, msg)
