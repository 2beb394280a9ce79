# Contract of the compiled Hot Lane header parser and allowlist.
from libc.stdint cimport uint8_t, uint32_t

cdef enum:
    H_OK = 0
    H_SHORT = 1
    H_BAD_FLAGS = 2
    H_SHORT_SEQ = 3

cdef struct HotHeader:
    uint8_t svc
    uint8_t op
    uint8_t flags
    uint32_t seq

cdef int hot_parse(const unsigned char* p, Py_ssize_t n, HotHeader* h) noexcept nogil

cdef class HotAllowlist:
    cdef unsigned char _bits[8192]
    cdef inline bint allows_c(self, unsigned int svc, unsigned int op) noexcept nogil:
        cdef unsigned int idx = (svc << 8) | op
        return (self._bits[idx >> 3] >> (idx & 7)) & 1
