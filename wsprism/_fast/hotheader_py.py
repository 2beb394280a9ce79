"""Hot Lane header and allowlist (pure-Python twin of `hotheader_c`).

    [svc_id u8][opcode u8][flags u8][seq u32 little-endian, if flags & 0x01][payload ...]

Client flags are SEQ_PRESENT (0x01) and ACK_REQUESTED (0x02); IS_ACK (0x04) is for the
server's acks only, and any other bit makes the header invalid. The allowlist
(`svc_id:opcode` or `svc_id:*`) is compiled once into a 256x256 bit table.
"""

HDR_OK = 0
HDR_SHORT = 1          # fewer than 3 bytes
HDR_BAD_FLAGS = 2      # IS_ACK or an unknown bit set by the client
HDR_SHORT_SEQ = 3      # SEQ_PRESENT without 4 more bytes

FLAG_SEQ_PRESENT = 0x01
FLAG_ACK_REQUESTED = 0x02
FLAG_IS_ACK = 0x04
CLIENT_FLAGS = FLAG_SEQ_PRESENT | FLAG_ACK_REQUESTED


def parse_header(data) -> tuple[int, int, int, int, int]:
    """(status, svc_id, opcode, flags, seq) of a Hot Lane frame; status HDR_OK when valid."""
    n = len(data)
    if n < 3:
        return (HDR_SHORT, 0, 0, 0, 0)
    svc = data[0]
    op = data[1]
    flags = data[2]
    if flags & ~CLIENT_FLAGS:
        return (HDR_BAD_FLAGS, svc, op, flags, 0)
    seq = 0
    if flags & FLAG_SEQ_PRESENT:
        if n < 7:
            return (HDR_SHORT_SEQ, svc, op, flags, 0)
        seq = data[3] | (data[4] << 8) | (data[5] << 16) | (data[6] << 24)
    return (HDR_OK, svc, op, flags, seq)


class HotAllowlist:
    """Deny by default; `allows(svc_id, opcode)` is one bit test."""

    __slots__ = ("bits",)

    def __init__(self, entries=()) -> None:
        bits = bytearray(8192)          # 256 * 256 bits
        for entry in entries:
            svc_s, _, op_s = entry.partition(":")
            svc = int(svc_s)
            ops = range(256) if op_s == "*" else (int(op_s),)
            for op in ops:
                idx = (svc << 8) | op
                bits[idx >> 3] |= 1 << (idx & 7)
        self.bits = bytes(bits)

    def allows(self, svc: int, op: int) -> bool:
        if not (0 <= svc < 256 and 0 <= op < 256):
            return False
        idx = (svc << 8) | op
        return bool(self.bits[idx >> 3] & (1 << (idx & 7)))
