"""Hot-path kernels: the compiled (Cython) modules, or their pure-Python twins.

Selection happens once, here (the aiohttp/yarl habit): with `WSPRISM_NO_EXTENSIONS`
set, or off CPython, every `*_py` twin is used; otherwise every `*_c` module, falling
back to all twins if any one of them fails to import. The two are never mixed.
Nothing else in wsprism imports a `_c` or `_py` module by name.

- bucket:    token buckets (rate limits, handshake defender)
- utf8:      text frame scans: strict UTF-8, JSON nesting depth
- hotheader: Hot Lane header parse and the allowlist bit table
- fanout:    outbound frames built once, corked per loop turn, room fan-out
- framer:    the per-connection listener (Session) and per-tenant LanePolicy
- reader:    picows' protocol with every read seen first (frame-size guard, read buffer)
"""
from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS

USING_EXTENSIONS = False

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import bucket_py as _bucket, fanout_py as _fanout, framer_py as _framer
    from . import hotheader_py as _hotheader, reader_py as _reader, utf8_py as _utf8
else:
    try:
        from . import bucket_c as _bucket, fanout_c as _fanout, framer_c as _framer
        from . import hotheader_c as _hotheader, reader_c as _reader, utf8_c as _utf8

        USING_EXTENSIONS = True
    except ImportError:  # not built: run on the twins
        from . import bucket_py as _bucket, fanout_py as _fanout, framer_py as _framer
        from . import hotheader_py as _hotheader, reader_py as _reader, utf8_py as _utf8

TokenBucket = _bucket.TokenBucket
utf8_valid = _utf8.utf8_valid
json_too_deep = _utf8.json_too_deep
HotAllowlist = _hotheader.HotAllowlist
parse_header = _hotheader.parse_header
Corker = _fanout.Corker
build_frame = _fanout.build_frame
broadcast = _fanout.broadcast
OP_TEXT = _fanout.OP_TEXT
OP_BINARY = _fanout.OP_BINARY
OVER_SESSION = _fanout.OVER_SESSION
OVER_TOTAL = _fanout.OVER_TOTAL
Session = _framer.Session
LanePolicy = _framer.LanePolicy
install = _framer.install
Protocol = _reader.Protocol
FrameGuard = _reader.FrameGuard
reader_of = _reader.reader_of
PENDING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
counters = _framer      # C_EXT_ALLOW ... N_COUNTERS

__all__ = [
    "USING_EXTENSIONS", "NO_EXTENSIONS", "TokenBucket", "utf8_valid", "json_too_deep", "HotAllowlist", "parse_header",
    "Corker", "build_frame", "broadcast", "OP_TEXT", "OP_BINARY", "OVER_SESSION", "OVER_TOTAL", "Session",
    "LanePolicy", "install", "Protocol", "FrameGuard", "reader_of",
    "PENDING", "OPEN", "CLOSING", "CLOSED", "counters",
]
