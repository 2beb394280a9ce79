# The one monotonic clock of the _c modules: CLOCK_MONOTONIC in seconds, the clock
# Python's time.monotonic() reads (which the twins use), without a Python call.
from libc.time cimport timespec

cdef extern from "<time.h>" nogil:
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
