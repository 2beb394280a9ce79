"""Hot-path kernels: the compiled (Cython) modules, or their pure-Python twins.

Selection happens once, here (the aiohttp/yarl habit): with `WSPRISM_NO_EXTENSIONS`
set, or off CPython, every `*_py` twin is used; otherwise every `*_c` module, falling
back to all twins if any one of them fails to import. The two are never mixed.
Nothing else in wsprism imports a `_c` or `_py` module by name.

- codes:     the protocol's numbers as enums (codes_c.pxd, cimported by the others)
- bucket:    token buckets (rate limits, handshake defender); one source, two builds
- utf8:      text frame scans: strict UTF-8, JSON nesting depth
- hotheader: Hot Lane header parse and the allowlist bit table; one source, two builds
- fanout:    outbound frames built once, corked per loop turn, room fan-out, the
             outbound memory budget
- framer:    the per-connection listener's compiled half (Conn) and per-tenant LanePolicy
- reader:    picows' protocol with every read seen first (frame-size guard, read buffer)
"""
from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS

USING_EXTENSIONS = False

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import bucket_py as _bucket, codes_py as _codes, fanout_py as _fanout, framer_py as _framer
    from . import hotheader_py as _hotheader, reader_py as _reader, utf8_py as _utf8
else:
    try:
        from . import bucket_c as _bucket, codes_c as _codes, fanout_c as _fanout, framer_c as _framer
        from . import hotheader_c as _hotheader, reader_c as _reader, utf8_c as _utf8

        USING_EXTENSIONS = True
    except ImportError:  # not built: run on the twins
        from . import bucket_py as _bucket, codes_py as _codes, fanout_py as _fanout, framer_py as _framer
        from . import hotheader_py as _hotheader, reader_py as _reader, utf8_py as _utf8

CloseCode = _codes.CloseCode
ErrorCode = _codes.ErrorCode
SessionState = _codes.SessionState
Opcode = _codes.Opcode
ExtFlag = _codes.ExtFlag
HotFlag = _codes.HotFlag
HotService = _codes.HotService
Counter = _codes.Counter
OverflowReason = _codes.OverflowReason
TokenBucket = _bucket.TokenBucket
utf8_valid = _utf8.utf8_valid
json_too_deep = _utf8.json_too_deep
HotAllowlist = _hotheader.HotAllowlist
parse_header = _hotheader.parse_header
Corker = _fanout.Corker
build_frame = _fanout.build_frame
broadcast = _fanout.broadcast
Conn = _framer.Conn
LanePolicy = _framer.LanePolicy
RELAY = _framer.RELAY
N_HOT_SERVICES = _framer.N_HOT_SERVICES
close_code_valid = _framer.close_code_valid
Protocol = _reader.Protocol
FrameGuard = _reader.FrameGuard
reader_of = _reader.reader_of

# plain ints for the Python layers' comparisons
PENDING, OPEN, CLOSING, CLOSED = (int(s) for s in SessionState)
OP_TEXT, OP_BINARY = int(Opcode.OP_TEXT), int(Opcode.OP_BINARY)

__all__ = [
    "USING_EXTENSIONS", "NO_EXTENSIONS", "CloseCode", "ErrorCode", "SessionState", "Opcode", "ExtFlag",
    "HotFlag", "HotService", "Counter", "OverflowReason", "TokenBucket", "utf8_valid", "json_too_deep",
    "HotAllowlist", "parse_header", "Corker", "build_frame", "broadcast", "Conn", "LanePolicy", "RELAY",
    "N_HOT_SERVICES", "close_code_valid", "Protocol", "FrameGuard", "reader_of",
    "PENDING", "OPEN", "CLOSING", "CLOSED", "OP_TEXT", "OP_BINARY",
]
