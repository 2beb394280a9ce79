# Contract of the compiled token bucket for other _c modules (cimport it).

cdef class TokenBucket:
    cdef public double rate
    cdef public double burst
    cdef public double tokens
    cdef public double last

    cpdef configure(self, double rate, double burst)
    cpdef bint allow_at(self, double now) noexcept
    cpdef bint allow(self) noexcept
    cpdef refund(self)
    cpdef double retry_after(self, double now) noexcept
