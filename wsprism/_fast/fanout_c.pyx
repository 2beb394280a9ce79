# cython: language_level=3
"""Compiled outbound side: frames built once, corked per loop turn, fanned out.
The logic and its documentation live in fanout_py.py (the twin)."""
import asyncio
import logging

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Realloc
from libc.string cimport memcpy

from .bytesops cimport ws_header
from .codes_c cimport S_OPEN, S_PENDING

_log = logging.getLogger("wsprism.fanout")

# one scratch buffer per process for joining an endpoint's frames into one write;
# picows' _fast_write copies whatever the socket did not take, so it can be reused.
cdef char* _scratch = NULL
cdef Py_ssize_t _scratch_cap = 0


cdef bytes build_frame_ptr(int opcode, const unsigned char* p, Py_ssize_t n):
    cdef unsigned char head[10]
    cdef Py_ssize_t hl = ws_header(head, opcode, n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hl + n)
    cdef char* dst = PyBytes_AS_STRING(out)
    memcpy(dst, head, hl)
    memcpy(dst + hl, p, n)
    return out


cpdef bytes build_frame(int opcode, object payload):
    """A complete server frame (FIN, unmasked) carrying `payload`."""
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        return build_frame_ptr(opcode, <const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


@cython.final
cdef class Corker:
    def __init__(self, loop=None):
        self.dirty = []
        self.scheduled = False
        self.loop = loop

    cpdef add(self, Endpoint endpoint):
        self.dirty.append(endpoint)
        if not self.scheduled:
            self.scheduled = True
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            self.loop.call_soon(self.flush_all)

    cpdef flush_all(self):
        cdef list dirty = self.dirty
        cdef Endpoint endpoint
        self.scheduled = False
        self.dirty = []
        for endpoint in dirty:
            try:
                endpoint._flush()     # C call: no override lookup on sessions (a Python subclass)
            except Exception:       # one broken transport must not stall the others
                _log.exception("flush failed for %r", endpoint)


cdef class Endpoint(WSListener):
    def __init__(self, Corker corker):
        self.transport = None
        self.state = S_PENDING
        self.paused = False
        self.corker = corker
        self._out = None

    cdef bint _enqueue(self, bytes frame, bint lossy) except -1:
        if self.state > S_OPEN:
            return True
        if lossy and self.paused:
            return False
        if self._out is None:             # the turn's first frame: no list (no GC-tracked object)
            self._out = frame
            self.corker.add(self)
        elif type(self._out) is bytes:
            self._out = [self._out, frame]
        else:
            (<list>self._out).append(frame)
        return True

    def enqueue(self, bytes frame, bint lossy=False) -> bool:
        """Queue a built frame for this turn's write. False only when a lossy frame is
        dropped because this endpoint is over its high-water mark."""
        return self._enqueue(frame, lossy)

    cpdef flush(self):
        self._flush()

    cdef int _flush(self) except -1:
        global _scratch, _scratch_cap
        cdef object pending = self._out
        cdef WSTransport tr = self.transport
        cdef list out
        cdef bytes f
        cdef Py_ssize_t total = 0, pos = 0, n
        cdef char* grown
        if pending is None:
            return 0
        self._out = None
        if tr is None or tr.is_disconnected or tr.is_close_frame_sent:
            return 0
        if type(pending) is bytes:
            f = <bytes>pending
            tr._fast_write(PyBytes_AS_STRING(f), PyBytes_GET_SIZE(f))
            return 0
        out = <list>pending
        for f in out:
            total += PyBytes_GET_SIZE(f)
        if total > _scratch_cap:
            grown = <char*>PyMem_Realloc(_scratch, total * 2)
            if grown == NULL:
                raise MemoryError()
            _scratch = grown
            _scratch_cap = total * 2
        for f in out:
            n = PyBytes_GET_SIZE(f)
            memcpy(_scratch + pos, PyBytes_AS_STRING(f), n)
            pos += n
        tr._fast_write(_scratch, total)
        return 0


cpdef Py_ssize_t broadcast(object members, bytes frame, bint lossy) except -1:
    """Queue one built frame for every member; returns how many lossy drops there were."""
    cdef Py_ssize_t drops = 0
    cdef Endpoint ep
    if type(members) is dict:
        for m in <dict>members:
            ep = <Endpoint>m
            if not ep._enqueue(frame, lossy):
                drops += 1
    else:
        for m in members:
            ep = <Endpoint>m
            if not ep._enqueue(frame, lossy):
                drops += 1
    return drops
