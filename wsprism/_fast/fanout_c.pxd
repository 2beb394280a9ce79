# Contract of the compiled outbound side for other _c modules.
from picows.picows cimport WSListener, WSTransport

cdef class Corker:
    cdef public list dirty
    cdef public bint scheduled
    cdef public object loop
    cdef public Py_ssize_t max_session
    cdef public Py_ssize_t max_total
    cdef public Py_ssize_t total
    cdef public set holders
    cdef public Py_ssize_t enforced
    cdef public Py_ssize_t closed_total
    cdef public double logged_at
    cpdef add(self, Endpoint endpoint)
    cpdef flush_all(self)
    cpdef enforce(self)

cdef class Endpoint(WSListener):
    cdef public WSTransport transport
    cdef public int state
    cdef public bint paused
    cdef public Corker corker
    cdef object _out          # None, one frame (bytes), or a list of frames
    cdef public Py_ssize_t acct
    cdef public Py_ssize_t out_bytes
    cdef public bint over
    cdef bint _enqueue(self, bytes frame, bint lossy) except -1
    cdef int _flush(self) except -1
    cdef int _write(self, WSTransport tr, const char* p, Py_ssize_t n) except -1
    cdef int _measure(self) except -1
    cdef int _held(self, Py_ssize_t held) except -1
    cdef int _release(self) except -1
    cdef int _drop_queued(self) except -1
    cdef int _overflow(self, int reason) except -1    # Conn closes 4005 (framer_c)
    cpdef flush(self)

cpdef bytes build_frame(int opcode, object payload)
cdef bytes build_frame_ptr(int opcode, const unsigned char* p, Py_ssize_t n)
cpdef Py_ssize_t broadcast(object members, bytes frame, bint lossy) except -1
