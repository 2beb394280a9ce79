# Contract of the compiled outbound side for other _c modules.
from picows.picows cimport WSListener, WSTransport

cdef class Corker:
    cdef public list dirty
    cdef public bint scheduled
    cdef public object loop
    cpdef add(self, Endpoint endpoint)
    cpdef flush_all(self)

cdef class Endpoint(WSListener):
    cdef public WSTransport transport
    cdef public int state
    cdef public bint paused
    cdef public Corker corker
    cdef object _out          # None, one frame (bytes), or a list of frames
    cdef bint _enqueue(self, bytes frame, bint lossy) except -1
    cdef int _flush(self) except -1
    cpdef flush(self)

cpdef bytes build_frame(int opcode, object payload)
cdef bytes build_frame_ptr(int opcode, const unsigned char* p, Py_ssize_t n)
cpdef Py_ssize_t broadcast(object members, bytes frame, bint lossy) except -1
