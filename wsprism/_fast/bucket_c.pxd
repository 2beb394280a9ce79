# Types for compiling bucket_py.py as wsprism._fast.bucket_c (the aiohttp reader_c way:
# one source, two builds). Other _c modules cimport TokenBucket from here.
cimport cython


@cython.final
cdef class TokenBucket:
    cdef public double rate
    cdef public double burst
    cdef public double tokens
    cdef public double last

    cpdef configure(self, double rate, double burst)
    cpdef bint allow_at(self, double now) noexcept
    cpdef bint allow(self)
    cpdef refund(self)
    cpdef double retry_after(self, double now) noexcept
