# Types for compiling hotheader_py.py as wsprism._fast.hotheader_c (one source, two
# builds). framer_c cimports hot_parse and allowed from here.
cimport cython

from .codes_c cimport (
    HDR_BAD_FLAGS, HDR_OK, HDR_SHORT, HDR_SHORT_SEQ, HOT_CLIENT_FLAGS, HOT_SEQ_PRESENT,
)


@cython.locals(svc=cython.ulonglong, op=cython.ulonglong, flags=cython.ulonglong, seq=cython.ulonglong,
               head=cython.ulonglong)
cdef unsigned long long hot_parse(const unsigned char* p, Py_ssize_t n) noexcept nogil

@cython.locals(idx=cython.uint)
cdef bint allowed(const unsigned char* bits, unsigned int svc, unsigned int op) noexcept nogil


@cython.final
cdef class HotAllowlist:
    cdef readonly bytes bits
