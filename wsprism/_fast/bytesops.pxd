# Inline byte helpers shared by the _c modules (multi-byte reads through memcpy:
# Hot Lane fields sit at odd offsets, so casting the pointer would be unaligned).
from libc.stdint cimport uint32_t
from libc.string cimport memcpy


cdef inline uint32_t read_u32_le(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline Py_ssize_t ws_header(unsigned char* out, int opcode, Py_ssize_t n) noexcept nogil:
    """Write a server (unmasked, FIN) frame header for an n-byte payload; return its size."""
    out[0] = 0x80 | opcode
    if n < 126:
        out[1] = <unsigned char>n
        return 2
    if n < 65536:
        out[1] = 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>n
        return 4
    out[1] = 127
    cdef int i
    for i in range(8):
        out[2 + i] = <unsigned char>(n >> (56 - 8 * i))
    return 10
