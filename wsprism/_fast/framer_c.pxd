# Contract of the compiled per-connection frame handling.
from picows.picows cimport WSFrame, WSTransport

from .bucket_c cimport TokenBucket
from .codes_c cimport N_COUNTERS
from .fanout_c cimport Endpoint
from .hotheader_c cimport HotAllowlist


cdef class LanePolicy:
    cdef public Py_ssize_t max_frame_bytes
    cdef public bint hot_silent
    cdef public bint hot_requires_room
    cdef public HotAllowlist hot_allow
    cdef public TokenBucket bucket
    cdef unsigned long long counts_[N_COUNTERS]
    cdef public unsigned long long hot_seq
    cdef public object hist_hot
    cdef public object ext_entry
    cdef public object encode_error
    cdef readonly list hot_handlers
    cdef public object relay_tap

    cdef inline void inc(self, int idx) noexcept:
        self.counts_[idx] += 1

    cdef inline void add(self, int idx, unsigned long long n) noexcept:
        self.counts_[idx] += n


cdef class Conn(Endpoint):
    cdef public object host
    cdef public LanePolicy lane
    cdef public TokenBucket bucket
    cdef public dict room_members
    cdef public double rl_notice_at
    cdef public bytearray frag
    cdef public bint frag_binary
    cdef public object trace_id
    cdef public long n_traces
    cdef public bint seen
    cdef public object close_handle

    cpdef send(self, bytes data)
    cpdef send_error(self, str code, str msg, object seq=*)
    cpdef close(self, int code=*, str reason=*)
    cdef int _overflow(self, int reason) except -1
    cdef int _text(self, const unsigned char* p, Py_ssize_t n, object payload) except -1
    cdef int _binary(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _hot_service(self, object handler, const unsigned char* p, Py_ssize_t n,
                          unsigned char op, unsigned char flags) except -1
    cdef int _relay(self, const unsigned char* p, Py_ssize_t n, unsigned char flags) except -1
    cdef int _hot_reject(self, int counter, str code, str msg) except -1
    cdef int _too_large(self, bint binary) except -1
    cdef bint _rate_ok(self, double now) except -1
    cdef bint _should_notify(self, double now)
