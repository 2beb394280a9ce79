"""Hot-path kernels: the compiled (Cython) modules, or their pure-Python twins.

Selection happens once, here (the aiohttp/yarl habit): with `WSPRISM_NO_EXTENSIONS`
set, or off CPython, every `*_py` twin is used; otherwise every `*_c` module, falling
back to all twins if any one of them fails to import. The two are never mixed.
Nothing else in wsprism imports a `_c` or `_py` module by name.

- codes:     the protocol's numbers as enums (codes_c.pxd, cimported by the others)
- bucket:    token buckets (rate limits, handshake defender); one source, two builds
- utf8:      strict UTF-8 validation of text frames
- hotheader: Hot Lane header parse and the allowlist bit table; one source, two builds
- fanout:    outbound frames built once, corked per loop turn, room fan-out
- framer:    the per-connection listener's compiled half (Conn) and per-tenant LanePolicy
"""
from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS

USING_EXTENSIONS = False

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import bucket_py as _bucket, codes_py as _codes, fanout_py as _fanout, framer_py as _framer
    from . import hotheader_py as _hotheader, utf8_py as _utf8
else:
    try:
        from . import bucket_c as _bucket, codes_c as _codes, fanout_c as _fanout, framer_c as _framer
        from . import hotheader_c as _hotheader, utf8_c as _utf8

        USING_EXTENSIONS = True
    except ImportError:  # not built: run on the twins
        from . import bucket_py as _bucket, codes_py as _codes, fanout_py as _fanout, framer_py as _framer
        from . import hotheader_py as _hotheader, utf8_py as _utf8

CloseCode = _codes.CloseCode
ErrorCode = _codes.ErrorCode
SessionState = _codes.SessionState
Opcode = _codes.Opcode
ExtFlag = _codes.ExtFlag
HotFlag = _codes.HotFlag
HotService = _codes.HotService
Counter = _codes.Counter
TokenBucket = _bucket.TokenBucket
utf8_valid = _utf8.utf8_valid
HotAllowlist = _hotheader.HotAllowlist
parse_header = _hotheader.parse_header
Corker = _fanout.Corker
build_frame = _fanout.build_frame
broadcast = _fanout.broadcast
Conn = _framer.Conn
LanePolicy = _framer.LanePolicy
RELAY = _framer.RELAY
N_HOT_SERVICES = _framer.N_HOT_SERVICES

# plain ints for the Python layers' comparisons
PENDING, OPEN, CLOSING, CLOSED = (int(s) for s in SessionState)
OP_TEXT, OP_BINARY = int(Opcode.OP_TEXT), int(Opcode.OP_BINARY)

__all__ = [
    "USING_EXTENSIONS", "NO_EXTENSIONS", "CloseCode", "ErrorCode", "SessionState", "Opcode", "ExtFlag",
    "HotFlag", "HotService", "Counter", "TokenBucket", "utf8_valid", "HotAllowlist", "parse_header",
    "Corker", "build_frame", "broadcast", "Conn", "LanePolicy", "RELAY", "N_HOT_SERVICES",
    "PENDING", "OPEN", "CLOSING", "CLOSED", "OP_TEXT", "OP_BINARY",
]
