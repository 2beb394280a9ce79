"""Error codes (`sys.error` data.code) and WebSocket close codes, as the Python layers
use them. The numbers are declared once, in wsprism/_fast/codes_c.pxd (and its twin
codes_py.py); these names are read off those enums."""
from .._fast import CloseCode, ErrorCode

# sys.error codes: the wire string is the enum member's name
BAD_REQUEST = ErrorCode.BAD_REQUEST.name
AUTH_FAILED = ErrorCode.AUTH_FAILED.name
RATE_LIMITED = ErrorCode.RATE_LIMITED.name
PAYLOAD_TOO_LARGE = ErrorCode.PAYLOAD_TOO_LARGE.name
NOT_ALLOWED = ErrorCode.NOT_ALLOWED.name
RESOURCE_EXHAUSTED = ErrorCode.RESOURCE_EXHAUSTED.name
UNSUPPORTED_VERSION = ErrorCode.UNSUPPORTED_VERSION.name
TOO_MANY_SESSIONS = ErrorCode.TOO_MANY_SESSIONS.name
TIMEOUT = ErrorCode.TIMEOUT.name
INTERNAL = ErrorCode.INTERNAL.name

ERROR_CODES = frozenset(e.name for e in ErrorCode)

# WebSocket close codes (plain ints)
CLOSE_NORMAL = int(CloseCode.CLOSE_NORMAL)
CLOSE_DRAINING = int(CloseCode.CLOSE_DRAINING)
CLOSE_PROTOCOL_ERROR = int(CloseCode.CLOSE_PROTOCOL_ERROR)
CLOSE_INVALID_UTF8 = int(CloseCode.CLOSE_INVALID_UTF8)
CLOSE_POLICY = int(CloseCode.CLOSE_POLICY)
CLOSE_TOO_BIG = int(CloseCode.CLOSE_TOO_BIG)
CLOSE_INTERNAL = int(CloseCode.CLOSE_INTERNAL)
CLOSE_TRY_AGAIN = int(CloseCode.CLOSE_TRY_AGAIN)
CLOSE_AUTH_EXPIRED = int(CloseCode.CLOSE_AUTH_EXPIRED)
CLOSE_IDLE = int(CloseCode.CLOSE_IDLE)
CLOSE_KICKED = int(CloseCode.CLOSE_KICKED)
CLOSE_TOO_MANY_SESSIONS = int(CloseCode.CLOSE_TOO_MANY_SESSIONS)
CLOSE_SLOW_CONSUMER = int(CloseCode.CLOSE_SLOW_CONSUMER)
CLOSE_BY_BACKEND = int(CloseCode.CLOSE_BY_BACKEND)
CLOSE_AUTH_REFUSED = int(CloseCode.CLOSE_AUTH_REFUSED)


def error_code(code: str) -> str:
    """`code` if it is one of SPEC 3's codes, else INTERNAL (for codes a service or a
    backend chose)."""
    return code if code in ERROR_CODES else INTERNAL
