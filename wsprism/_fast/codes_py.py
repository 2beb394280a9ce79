"""The protocol's numbers, one place (twin of `codes_c`, whose .pxd the compiled modules
cimport): SPEC 7's close codes, SPEC 3's error codes, session states, frame opcodes,
the Ext and Hot Lane flags, Hot Lane header statuses, built-in Hot Lane services,
the per-tenant lane counters and the outbound budget's overflow reasons. A test holds
the two declarations equal.

Member names are unique across the enums because the C side sees them unscoped.
"""
from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes (SPEC 7)."""

    CLOSE_NORMAL = 1000
    CLOSE_DRAINING = 1001            # server draining, tenant removed
    CLOSE_PROTOCOL_ERROR = 1002      # RFC 6455 violation (fragments out of order, ...)
    CLOSE_INVALID_UTF8 = 1007
    CLOSE_POLICY = 1008              # bad envelope, bad version
    CLOSE_TOO_BIG = 1009             # frame larger than max_frame_bytes
    CLOSE_INTERNAL = 1011
    CLOSE_TRY_AGAIN = 1013           # tenant full across nodes, found after the upgrade (broker)
    CLOSE_AUTH_EXPIRED = 4001
    CLOSE_IDLE = 4002
    CLOSE_KICKED = 4003              # replaced by a newer session, or kick_oldest
    CLOSE_TOO_MANY_SESSIONS = 4004   # on_exceed: deny
    CLOSE_SLOW_CONSUMER = 4005
    CLOSE_BY_BACKEND = 4006          # server API / service disconnect
    CLOSE_AUTH_REFUSED = 4007        # webhook auth said no after the upgrade


class ErrorCode(IntEnum):
    """`sys.error` codes (SPEC 3): the member's *name* is the string on the wire."""

    BAD_REQUEST = 1
    AUTH_FAILED = 2
    RATE_LIMITED = 3
    PAYLOAD_TOO_LARGE = 4
    NOT_ALLOWED = 5
    RESOURCE_EXHAUSTED = 6
    UNSUPPORTED_VERSION = 7
    TOO_MANY_SESSIONS = 8
    TIMEOUT = 9
    INTERNAL = 10


class SessionState(IntEnum):
    S_PENDING = 0    # upgraded, not yet admitted (e.g. webhook auth under way)
    S_OPEN = 1       # admitted: messages flow
    S_CLOSING = 2    # close frame sent
    S_CLOSED = 3     # the connection is gone


class Opcode(IntEnum):
    OP_CONT = 0x0        # a continuation frame (fragmented message)
    OP_TEXT = 0x1
    OP_BINARY = 0x2


class ExtFlag(IntEnum):
    """Ext Lane envelope `flags` (SPEC 3); only ACK_REQUESTED changes what the gateway does."""

    EXT_SEQ_PRESENT = 0x01
    EXT_ROOM_PRESENT = 0x02
    EXT_ACK_REQUESTED = 0x04


class HotFlag(IntEnum):
    """Hot Lane header flags (SPEC 4). Clients may set only HOT_CLIENT_FLAGS; IS_ACK is the server's."""

    HOT_SEQ_PRESENT = 0x01
    HOT_ACK_REQUESTED = 0x02
    HOT_CLIENT_FLAGS = 0x03
    HOT_IS_ACK = 0x04


class HotHeaderStatus(IntEnum):
    HDR_OK = 0
    HDR_SHORT = 1          # fewer than 3 bytes
    HDR_BAD_FLAGS = 2      # IS_ACK or an unknown bit set by the client
    HDR_SHORT_SEQ = 3      # SEQ_PRESENT without 4 more bytes


class HotService(IntEnum):
    HOT_SVC_RELAY = 1      # the built-in echo/relay
    HOT_SVC_USER_MIN = 2   # Python services' hot_svc_id: 2..255


class Counter(IntEnum):
    """Per-tenant decision counters bumped on the per-message path (`LanePolicy`).

    `C_<LANE>_<DECISION>_<REASON>` names are the labels of
    `wsprism_policy_decisions_total{lane,decision,reason}` (ops/metrics.py reads them off
    the names); then `wsprism_decode_errors_total` and `wsprism_egress_drop_total`; the
    `C_SLOW_<REASON>` ones are the sessions closed 4005 as slow consumers,
    `wsprism_writer_timeouts_total{reason}` (SPEC 5 and 6): over the high-water mark for
    writer_send_timeout_ms, past gateway.outbound_max_bytes, or among the largest holders
    when the process passed gateway.outbound_total_max_bytes.
    """

    C_EXT_ALLOW_OK = 0
    C_EXT_DENY_NOT_ALLOWED = 1
    C_EXT_DROP_RATE_LIMITED = 2
    C_EXT_DENY_TOO_LARGE = 3
    C_EXT_DENY_BAD_REQUEST = 4
    C_EXT_DENY_UNKNOWN_SERVICE = 5
    C_HOT_ALLOW_OK = 6
    C_HOT_DROP_NOT_ALLOWED = 7
    C_HOT_DROP_RATE_LIMITED = 8
    C_HOT_DENY_TOO_LARGE = 9
    C_HOT_DROP_BAD_REQUEST = 10
    C_HOT_DROP_NO_ACTIVE_ROOM = 11
    C_DECODE_ERRORS = 12
    C_EGRESS_DROPS = 13
    C_SLOW_SEND_TIMEOUT = 14
    C_SLOW_OUTBOUND_MAX = 15
    C_SLOW_OUTBOUND_TOTAL_MAX = 16
    N_COUNTERS = 17


class OverflowReason(IntEnum):
    """Why an endpoint is over its outbound budget (`Endpoint.overflow`, SPEC 5)."""

    OVER_SESSION = 1    # its own buffer passed gateway.outbound_max_bytes
    OVER_TOTAL = 2      # all sessions together passed gateway.outbound_total_max_bytes
