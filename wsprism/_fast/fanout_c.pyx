# cython: language_level=3
"""Compiled outbound side: frames built once, corked per loop turn, fanned out, kept
within the memory budget. The logic and its documentation live in fanout_py.py (the twin).
The corker reaches each endpoint through C methods (_flush, _measure, _overflow), so a
session (a Python subclass of the compiled listener) costs no override lookup per member
per turn. A turn's write (`_write`) is picows' `_fast_write` keeping count: the one look
at the transport's buffer that picows makes before it sends also tells what the
transport holds afterwards, so the budget costs no second call per member per turn."""
import asyncio
import logging
import sys
import time

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc
from libc.string cimport memcpy

from .bytesops cimport ws_header
from .codes_c cimport OVER_SESSION, OVER_TOTAL, S_OPEN, S_PENDING

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int sockfd, const void* buf, size_t len, int flags)

_log = logging.getLogger("wsprism.fanout")
UNLIMITED = sys.maxsize
ENFORCE_LOG_INTERVAL = 10.0

# One scratch buffer per process for joining an endpoint's frames into one write
# (picows' _fast_write copies whatever the socket did not take, so it can be reused).
# It is SCRATCH_MAX bytes and never grows: a bigger turn goes to the transport as the
# frames themselves (writelines: sent with one writev, and what the socket does not take
# stays referenced, not copied, so a frame fanned out to many slow members exists once).
DEF _SCRATCH_MAX = 65536
SCRATCH_MAX = _SCRATCH_MAX
cdef char* _scratch = NULL


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


def _held(Endpoint endpoint):
    return endpoint.acct


@cython.final
cdef class Corker:
    def __init__(self, loop=None, Py_ssize_t max_session=UNLIMITED, Py_ssize_t max_total=UNLIMITED):
        self.dirty = []
        self.scheduled = False
        self.loop = loop
        self.max_session = max_session
        self.max_total = max_total
        self.total = 0
        self.holders = set()
        self.enforced = 0
        self.closed_total = 0
        self.logged_at = -ENFORCE_LOG_INTERVAL

    def configure(self, Py_ssize_t max_session, Py_ssize_t max_total) -> None:
        self.max_session = max_session
        self.max_total = max_total

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
        if self.total > self.max_total:
            self.enforce()

    cpdef enforce(self):
        cdef Endpoint endpoint
        cdef Py_ssize_t before, closed = 0
        cdef double now
        for endpoint in list(self.holders):
            endpoint._measure()
        if self.total <= self.max_total:
            return
        self.enforced += 1
        before = self.total
        for endpoint in sorted(self.holders, key=_held, reverse=True):
            if self.total <= self.max_total:
                break
            closed += 1
            try:
                endpoint._overflow(OVER_TOTAL)
            except Exception:
                _log.exception("closing %r over the outbound budget failed", endpoint)
            endpoint._release()
        self.closed_total += closed
        now = time.monotonic()
        if now - self.logged_at >= ENFORCE_LOG_INTERVAL:
            self.logged_at = now
            _log.warning(
                "outbound buffers held %d bytes, over gateway.outbound_total_max_bytes (%d): "
                "closed %d sessions holding the most (4005); %d bytes held now",
                before, self.max_total, closed, self.total)


cdef class Endpoint(WSListener):
    def __init__(self, Corker corker):
        self.transport = None
        self.state = S_PENDING
        self.paused = False
        self.corker = corker
        self._out = None
        self.acct = 0
        self.out_bytes = 0
        self.over = False

    cdef bint _enqueue(self, bytes frame, bint lossy) except -1:
        cdef Py_ssize_t n
        cdef Corker corker
        if self.state > S_OPEN:
            return True
        if lossy and self.paused:
            return False
        if self.over:
            return not lossy
        n = PyBytes_GET_SIZE(frame)
        corker = self.corker
        if self.acct + self.out_bytes + n > corker.max_session:
            self._measure()                   # acct may be stale: the buffer drains
            if self.acct + self.out_bytes + n > corker.max_session:
                self.over = True
                if self._out is None:
                    corker.add(self)
                return not lossy
        self.out_bytes += n
        corker.total += n
        if self._out is None:             # the turn's first frame: no list (no GC-tracked object)
            self._out = frame
            corker.add(self)
        elif type(self._out) is bytes:
            self._out = [self._out, frame]
        else:
            (<list>self._out).append(frame)
        return True

    def enqueue(self, bytes frame, bint lossy=False) -> bool:
        """Queue a built frame for this turn's write. False when a lossy frame is dropped
        (this endpoint is over its high-water mark, or over its budget)."""
        return self._enqueue(frame, lossy)

    def drop_queued(self) -> None:
        self._drop_queued()

    cdef int _drop_queued(self) except -1:
        self._out = None
        self.corker.total -= self.out_bytes
        self.out_bytes = 0
        self.over = False
        return 0

    cpdef flush(self):
        self._flush()

    cdef int _flush(self) except -1:
        global _scratch
        cdef object pending
        cdef WSTransport tr = self.transport
        cdef list out
        cdef bytes f
        cdef Py_ssize_t total = 0, pos = 0, n
        if self.over:
            self._drop_queued()
            self._overflow(OVER_SESSION)
            return 0
        pending = self._out
        if pending is None:
            return 0
        self._out = None
        self.corker.total -= self.out_bytes
        self.out_bytes = 0
        if tr is None or tr.is_disconnected or tr.is_close_frame_sent:
            return 0
        if type(pending) is bytes:
            f = <bytes>pending
            if PyBytes_GET_SIZE(f) <= _SCRATCH_MAX:
                return self._write(tr, PyBytes_AS_STRING(f), PyBytes_GET_SIZE(f))
            tr.underlying_transport.write(f)
            return self._measure()
        out = <list>pending
        for f in out:
            total += PyBytes_GET_SIZE(f)
        if total > _SCRATCH_MAX:
            tr.underlying_transport.writelines(out)
            return self._measure()
        if _scratch == NULL:
            _scratch = <char*>PyMem_Malloc(_SCRATCH_MAX)
            if _scratch == NULL:
                raise MemoryError()
        for f in out:
            n = PyBytes_GET_SIZE(f)
            memcpy(_scratch + pos, PyBytes_AS_STRING(f), n)
            pos += n
        return self._write(tr, _scratch, total)

    cdef int _write(self, WSTransport tr, const char* p, Py_ssize_t n) except -1:
        # picows' _fast_write (send() straight away when the transport holds nothing, the
        # rest copied to it), and from what it sent, what the transport holds now
        cdef Py_ssize_t before = (<object>tr._tr_get_write_buffer_size)()
        cdef Py_ssize_t sent
        if not before and not tr.is_secure:
            sent = send(tr._socket, p, <size_t>n, 0)
            if sent == n:
                return self._held(0)
            if sent >= 0:
                (<object>tr._tr_write)(PyBytes_FromStringAndSize(p + sent, n - sent))
                return self._held(n - sent)
        (<object>tr._tr_write)(PyBytes_FromStringAndSize(p, n))
        if tr.is_secure:                  # TLS encrypts and sends some of it at once
            return self._measure()
        return self._held(before + n)

    def measure(self) -> None:
        self._measure()

    cdef int _measure(self) except -1:
        cdef WSTransport tr = self.transport
        if tr is None or tr.is_disconnected or self.state > S_OPEN:
            return self._held(0)
        return self._held((<object>tr._tr_get_write_buffer_size)())

    cdef int _held(self, Py_ssize_t held) except -1:
        cdef Py_ssize_t acct = self.acct
        cdef Corker corker
        if self.state > S_OPEN:
            held = 0                      # a closing endpoint no longer counts
        if held != acct:
            corker = self.corker
            corker.total += held - acct
            if not acct:
                corker.holders.add(self)
            elif not held:
                corker.holders.discard(self)
            self.acct = held
        return 0

    def release(self) -> None:
        self._release()

    cdef int _release(self) except -1:
        cdef Corker corker = self.corker
        if self.acct:
            corker.holders.discard(self)
        corker.total -= self.acct + self.out_bytes
        self.acct = 0
        self.out_bytes = 0
        self._out = None
        self.over = False
        return 0

    def overflow(self, int reason) -> None:
        self._overflow(reason)

    cdef int _overflow(self, int reason) except -1:
        self._release()
        if self.transport is not None:
            self.transport.disconnect(False)
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
