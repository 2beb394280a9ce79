# Contract of the compiled per-connection frame handling.
from picows.picows cimport WSFrame, WSTransport

from .bucket_c cimport TokenBucket
from .fanout_c cimport Endpoint
from .hotheader_c cimport HotAllowlist

cdef enum:
    _C_EXT_ALLOW = 0
    _C_EXT_NOT_ALLOWED = 1
    _C_EXT_RATE_LIMITED = 2
    _C_EXT_TOO_LARGE = 3
    _C_EXT_BAD_REQUEST = 4
    _C_EXT_UNKNOWN_SERVICE = 5
    _C_HOT_ALLOW = 6
    _C_HOT_NOT_ALLOWED = 7
    _C_HOT_RATE_LIMITED = 8
    _C_HOT_TOO_LARGE = 9
    _C_HOT_BAD_REQUEST = 10
    _C_HOT_NO_ACTIVE_ROOM = 11
    _C_DECODE_ERRORS = 12
    _C_EGRESS_DROPS = 13
    _N_COUNTERS = 14


cdef class LanePolicy:
    cdef public Py_ssize_t max_frame_bytes
    cdef public bint hot_silent
    cdef public bint hot_requires_room
    cdef public HotAllowlist hot_allow
    cdef public TokenBucket bucket
    cdef unsigned long long counts_[14]
    cdef public unsigned long long hot_seq
    cdef public object hist_hot


cdef class Session(Endpoint):
    cdef public object gateway
    cdef public object tenant
    cdef public LanePolicy lane
    cdef public object user
    cdef public object sid
    cdef public object trace_id
    cdef public object ip
    cdef public object ticket_exp
    cdef public object pending_ticket
    cdef public TokenBucket bucket
    cdef public dict rooms
    cdef public dict room_members
    cdef public double rl_notice_at
    cdef public object exp_handle
    cdef public object close_handle
    cdef public object slow_handle
    cdef public bytearray frag
    cdef public bint frag_binary
    cdef public long n_traces
    cdef public bint seen
    cdef public int idle_ticks
    cdef public bint registered
    cdef public bint refreshing

    cpdef send(self, bytes data)
    cpdef send_error(self, str code, str msg, object seq=*)
    cpdef close(self, int code=*, str reason=*)
    cpdef overflow(self, int reason)
    cdef int _text(self, const unsigned char* p, Py_ssize_t n, object payload) except -1
    cdef int _binary(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _relay(self, const unsigned char* p, Py_ssize_t n, unsigned char flags) except -1
    cdef int _hot_reject(self, int counter, str code, str msg) except -1
    cdef int _too_large(self, bint binary) except -1
    cdef bint _rate_ok(self) except -1
    cdef bint _should_notify(self)
