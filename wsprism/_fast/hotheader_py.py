"""Hot Lane header and allowlist.

    [svc_id u8][opcode u8][flags u8][seq u32 little-endian, if flags & 0x01][payload ...]

Client flags are SEQ_PRESENT (0x01) and ACK_REQUESTED (0x02); IS_ACK (0x04) is for the
server's acks only, and any other bit makes the header invalid. The allowlist
(`svc_id:opcode` or `svc_id:*`) is compiled once into a 256x256 bit table.

One source, two builds: this file runs as the pure-Python twin and is also compiled,
typed by `hotheader_c.pxd`, as `hotheader_c` (where `hot_parse` and `allowed` take a
pointer into the frame and run without the GIL), so the two cannot drift.
"""
try:
    import cython
except ImportError:                 # no Cython installed: this file runs as plain Python
    from ._compat import cython_shadow as cython

if not cython.compiled:             # compiled, these are the C constants of codes_c.pxd
    from .codes_py import HotFlag, HotHeaderStatus

    HDR_OK, HDR_SHORT = HotHeaderStatus.HDR_OK, HotHeaderStatus.HDR_SHORT
    HDR_BAD_FLAGS, HDR_SHORT_SEQ = HotHeaderStatus.HDR_BAD_FLAGS, HotHeaderStatus.HDR_SHORT_SEQ
    HOT_SEQ_PRESENT, HOT_CLIENT_FLAGS = HotFlag.HOT_SEQ_PRESENT, HotFlag.HOT_CLIENT_FLAGS

TABLE_BYTES = 8192                  # 256 x 256 bits


def hot_parse(p, n):
    """The header of an n-byte frame, packed in one integer:
    status | svc_id << 8 | opcode << 16 | flags << 24 | seq << 32.

    `n` is checked before every read (the compiled build reads through a pointer)."""
    if n < 3:
        return HDR_SHORT
    svc = p[0]
    op = p[1]
    flags = p[2]
    head = (svc << 8) | (op << 16) | (flags << 24)
    if flags & ~HOT_CLIENT_FLAGS:
        return HDR_BAD_FLAGS | head
    if not flags & HOT_SEQ_PRESENT:
        return HDR_OK | head
    if n < 7:
        return HDR_SHORT_SEQ | head
    seq = p[6]
    seq = (seq << 8) | p[5]
    seq = (seq << 8) | p[4]
    seq = (seq << 8) | p[3]
    return HDR_OK | head | (seq << 32)


def parse_header(data):
    """(status, svc_id, opcode, flags, seq) of a Hot Lane frame; status HDR_OK when valid."""
    h = hot_parse(data, len(data))
    return (h & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF, (h >> 24) & 0xFF, h >> 32)


def allowed(bits, svc, op):
    """One bit test in an allowlist table (svc_id and opcode already in 0..255)."""
    idx = (svc << 8) | op
    return (bits[idx >> 3] >> (idx & 7)) & 1 == 1


class HotAllowlist:
    """Deny by default; `allows(svc_id, opcode)` is one bit test."""

    __slots__ = ("bits",)

    def __init__(self, entries=()) -> None:
        table = bytearray(TABLE_BYTES)
        for entry in entries:
            svc_s, _, op_s = entry.partition(":")
            svc = int(svc_s)
            ops = range(256) if op_s == "*" else (int(op_s),)
            for op in ops:
                idx = (svc << 8) | op
                table[idx >> 3] |= 1 << (idx & 7)
        self.bits = bytes(table)

    def allows(self, svc, op) -> bool:
        if not (0 <= svc < 256 and 0 <= op < 256):
            return False
        return allowed(self.bits, svc, op)
