# Contract of the compiled inbound side (frame guard, read buffer) for other _c modules.
from picows.picows cimport MemoryBuffer

from .framer_c cimport Conn


cdef class FrameGuard:
    cdef unsigned char hdr[14]
    cdef public int hdr_got
    cdef public int hdr_need
    cdef public unsigned long long remaining
    cdef public bint in_msg
    cdef public bint msg_binary
    cdef public unsigned long long msg_total
    cdef public Py_ssize_t held
    cdef public bint refused
    cdef public bint refused_binary
    cdef Py_ssize_t feed_ptr(self, const unsigned char* p, Py_ssize_t n, unsigned long long limit) noexcept
    cdef Py_ssize_t _refuse(self, bint binary, Py_ssize_t start) noexcept


cdef class Reader:
    cdef public object answer_method
    cdef public object head
    cdef public Conn session
    cdef public FrameGuard guard
    cdef public bint dropping
    cdef public Py_ssize_t turn_bytes
    cdef MemoryBuffer buf        # picows' read buffer (found once), or None
    cdef Py_ssize_t idle_cap     # its capacity when the connection was made
    cdef Py_ssize_t reads        # reads since the upgrade
    cdef bint check_armed        # a quiet check is pending
    cdef bint info_on            # picows' logger logs INFO (its connect line reads socket options)
    cdef int _updated(self, object proto, object view, Py_ssize_t n) except -1
    cdef int _http(self, object proto, object view, Py_ssize_t n) except -1
    cdef bint _other_method(self, object proto, bytearray head) except -1
    cdef int _refuse(self, object proto) except -1
    cdef int _shrink(self, object proto) except -1
    cdef int _yield_turn(self, object proto) except -1
    cdef int _arm(self, object proto) except -1
