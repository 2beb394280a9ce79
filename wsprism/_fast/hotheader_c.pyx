# cython: language_level=3
"""Compiled Hot Lane header parser and allowlist. The contract lives in hotheader_py.py."""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport memset

from .bytesops cimport read_u32_le

HDR_OK = H_OK
HDR_SHORT = H_SHORT
HDR_BAD_FLAGS = H_BAD_FLAGS
HDR_SHORT_SEQ = H_SHORT_SEQ
FLAG_SEQ_PRESENT = 0x01
FLAG_ACK_REQUESTED = 0x02
FLAG_IS_ACK = 0x04
CLIENT_FLAGS = 0x03


cdef int hot_parse(const unsigned char* p, Py_ssize_t n, HotHeader* h) noexcept nogil:
    if n < 3:
        h.svc = 0; h.op = 0; h.flags = 0; h.seq = 0
        return H_SHORT
    h.svc = p[0]
    h.op = p[1]
    h.flags = p[2]
    h.seq = 0
    if h.flags & ~0x03:
        return H_BAD_FLAGS
    if h.flags & 0x01:
        if n < 7:           # length checked right before the read (rule 4)
            return H_SHORT_SEQ
        h.seq = read_u32_le(p + 3)
    return H_OK


def parse_header(data) -> tuple:
    """(status, svc_id, opcode, flags, seq) of a Hot Lane frame; status HDR_OK when valid."""
    cdef Py_buffer view
    cdef HotHeader h
    cdef int status
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        status = hot_parse(<const unsigned char*>view.buf, view.len, &h)
    finally:
        PyBuffer_Release(&view)
    return (status, h.svc, h.op, h.flags, h.seq)


@cython.final
cdef class HotAllowlist:
    def __init__(self, entries=()):
        cdef unsigned int svc, op, idx
        memset(self._bits, 0, sizeof(self._bits))
        for entry in entries:
            svc_s, _, op_s = entry.partition(":")
            svc = int(svc_s)
            ops = range(256) if op_s == "*" else (int(op_s),)
            for op in ops:
                idx = (svc << 8) | op
                self._bits[idx >> 3] |= 1 << (idx & 7)

    @property
    def bits(self) -> bytes:
        return self._bits[:8192]

    def allows(self, svc, op) -> bool:
        if not (0 <= svc < 256 and 0 <= op < 256):
            return False
        return self.allows_c(svc, op)
