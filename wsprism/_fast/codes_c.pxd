# The protocol's numbers, declared once (picows' picows.pxd style): close codes, error
# codes, session states, opcodes, Hot and Ext Lane flags, header statuses, the lane
# counters and why an endpoint went over its outbound budget. The _c modules cimport
# them as C constants; Python reads the same enums through wsprism._fast (compiled:
# codes_c; twin: codes_py.py, where each is documented).

cpdef enum CloseCode:
    CLOSE_NORMAL = 1000
    CLOSE_DRAINING = 1001
    CLOSE_PROTOCOL_ERROR = 1002
    CLOSE_INVALID_UTF8 = 1007
    CLOSE_POLICY = 1008
    CLOSE_TOO_BIG = 1009
    CLOSE_INTERNAL = 1011
    CLOSE_TRY_AGAIN = 1013
    CLOSE_AUTH_EXPIRED = 4001
    CLOSE_IDLE = 4002
    CLOSE_KICKED = 4003
    CLOSE_TOO_MANY_SESSIONS = 4004
    CLOSE_SLOW_CONSUMER = 4005
    CLOSE_BY_BACKEND = 4006
    CLOSE_AUTH_REFUSED = 4007

cpdef enum ErrorCode:
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

cpdef enum SessionState:
    S_PENDING = 0
    S_OPEN = 1
    S_CLOSING = 2
    S_CLOSED = 3

cpdef enum Opcode:
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2

cpdef enum ExtFlag:
    EXT_SEQ_PRESENT = 0x01
    EXT_ROOM_PRESENT = 0x02
    EXT_ACK_REQUESTED = 0x04

cpdef enum HotFlag:
    HOT_SEQ_PRESENT = 0x01
    HOT_ACK_REQUESTED = 0x02
    HOT_CLIENT_FLAGS = 0x03
    HOT_IS_ACK = 0x04

cpdef enum HotHeaderStatus:
    HDR_OK = 0
    HDR_SHORT = 1
    HDR_BAD_FLAGS = 2
    HDR_SHORT_SEQ = 3

cpdef enum HotService:
    HOT_SVC_RELAY = 1
    HOT_SVC_USER_MIN = 2

cpdef enum Counter:
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

cpdef enum OverflowReason:
    OVER_SESSION = 1
    OVER_TOTAL = 2
