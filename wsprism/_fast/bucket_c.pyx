# cython: language_level=3
"""Compiled token bucket. The logic and its documentation live in bucket_py.py (the twin)."""
cimport cython
from libc.time cimport timespec

cdef extern from "<time.h>" nogil:
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


@cython.final
cdef class TokenBucket:
    def __init__(self, double rate, double burst, double now=-1.0):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = _monotonic() if now < 0 else now

    cpdef configure(self, double rate, double burst):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        if self.tokens > self.burst:
            self.tokens = self.burst

    cpdef bint allow_at(self, double now) noexcept:
        cdef double elapsed = now - self.last
        if elapsed > 0.0:
            self.tokens = self.tokens + elapsed * self.rate
            if self.tokens > self.burst:
                self.tokens = self.burst
            self.last = now
        if self.tokens >= 1.0:
            self.tokens = self.tokens - 1.0
            return True
        return False

    cpdef bint allow(self) noexcept:
        return self.allow_at(_monotonic())

    cpdef refund(self):
        self.tokens = self.tokens + 1.0
        if self.tokens > self.burst:
            self.tokens = self.burst

    cpdef double retry_after(self, double now) noexcept:
        cdef double elapsed = now - self.last
        cdef double tokens = self.tokens
        if elapsed > 0.0:
            tokens = tokens + elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.rate
