# cython: language_level=3
"""Compiled inbound side: every read seen before picows parses it (frame headers checked
against the tenant's limit, non-GET requests answered, the read buffer shrunk back to
its idle size). The logic and its documentation live in reader_py.py (the twin); this
module also restores picows' read buffer, which only C code can reach."""
import asyncio
import gc
import logging

cimport cython
from cpython.object cimport PyObject, PyTypeObject
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Realloc
from libc.errno cimport errno
from picows.picows cimport MemoryBuffer, WSTransport

from picows.picows import WSProtocol

from .codes_c cimport OP_BINARY, OP_CONT, OP_TEXT, S_OPEN
from .framer_c cimport Conn

_log = logging.getLogger("wsprism.reader")

_get_buffer = WSProtocol.get_buffer
_buffer_updated = WSProtocol.buffer_updated

HEAD_MAX = 65536
READ_SLICE = 16384
SHRINK_AFTER = 0.1
DEF _HEAD_MAX = 65536
DEF _READ_SLICE = 16384
DEF _SIMD_PAD = 256          # picows keeps the last 256 bytes of its buffer for its parsers
cdef bint _warned = False
DEF _INFO = 20               # logging.INFO


cdef extern from "<sys/socket.h>" nogil:
    int c_setsockopt "setsockopt" (int fd, int level, int name, const void* value, unsigned int size)


@cython.final
cdef class _SockoptShim:
    """The transport as picows' `connection_made` sees it while its INFO line is off
    (reader_py.Protocol.connection_made says why): the socket options it sets go
    straight to `setsockopt(2)`, the ones it reads only for that line are not read."""
    cdef object tr
    cdef int fd
    cdef public object write, get_write_buffer_size

    def __init__(self, tr, int fd):
        self.tr = tr
        self.fd = fd
        self.write = tr.write
        self.get_write_buffer_size = tr.get_write_buffer_size

    def get_extra_info(self, name, default=None):
        if name == "socket":
            return self
        if name == "peername" or name == "sockname":
            return None                  # only for the INFO line
        return self.tr.get_extra_info(name, default)

    def setsockopt(self, int level, int name, int value):
        if c_setsockopt(self.fd, level, name, &value, sizeof(int)) != 0:
            raise OSError(errno, "setsockopt failed")

    def getsockopt(self, int level, int name):
        return 0                         # only for the INFO line

    def fileno(self):
        return self.fd


@cython.final
cdef class FrameGuard:
    def __init__(self):
        self.hdr_got = 0
        self.hdr_need = 2
        self.remaining = 0
        self.in_msg = False
        self.msg_binary = False
        self.msg_total = 0
        self.held = 0
        self.refused = False
        self.refused_binary = False

    def feed(self, data, limit) -> int:
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.feed_ptr(<const unsigned char*>view.buf, view.len, limit)
        finally:
            PyBuffer_Release(&view)

    cdef Py_ssize_t feed_ptr(self, const unsigned char* p, Py_ssize_t n, unsigned long long limit) noexcept:
        cdef Py_ssize_t i = 0, start = 0, take
        cdef int got, flag, op, k
        cdef bint fin, binary
        cdef unsigned long long length, before
        if self.refused:
            return 0
        while i < n:
            if self.remaining:
                take = n - i
                if <unsigned long long>take >= self.remaining:
                    take = <Py_ssize_t>self.remaining
                    self.held = 0
                else:
                    self.held += take
                i += take
                self.remaining -= <unsigned long long>take
                continue
            got = self.hdr_got
            if got == 0:
                start = i
            self.hdr[got] = p[i]
            got += 1
            i += 1
            self.held += 1
            if got == 2:
                flag = self.hdr[1] & 0x7F
                self.hdr_need = 2 + (2 if flag == 126 else (8 if flag == 127 else 0)) + (4 if self.hdr[1] & 0x80 else 0)
            if got < 2 or got < self.hdr_need:
                self.hdr_got = got
                continue
            self.hdr_got = 0
            flag = self.hdr[1] & 0x7F
            if flag == 126:
                length = (<unsigned long long>self.hdr[2] << 8) | self.hdr[3]
            elif flag == 127:
                length = 0
                for k in range(2, 10):
                    length = (length << 8) | self.hdr[k]
            else:
                length = flag
            op = self.hdr[0] & 0x0F
            fin = (self.hdr[0] & 0x80) != 0
            if op == OP_TEXT or op == OP_BINARY:
                binary = op == OP_BINARY
                if length > limit:
                    return self._refuse(binary, start)
                self.in_msg = not fin
                self.msg_binary = binary
                self.msg_total = length
            elif op == OP_CONT:
                binary = self.msg_binary if self.in_msg else False
                before = self.msg_total if self.in_msg else 0
                if length > limit or before + length > limit:
                    return self._refuse(binary, start)
                if self.in_msg:
                    self.msg_total = before + length
                    if fin:
                        self.in_msg = False
            self.remaining = length
            if not length:
                self.held = 0
        return n

    cdef Py_ssize_t _refuse(self, bint binary, Py_ssize_t start) noexcept:
        self.refused = True
        self.refused_binary = binary
        return start


cdef inline char* _view_ptr(object view) except? NULL:
    cdef Py_buffer b
    PyObject_GetBuffer(view, &b, PyBUF_SIMPLE)
    PyBuffer_Release(&b)        # picows' memory: the view does not own it
    return <char*>b.buf


cdef Py_ssize_t _buf_offset = 0      # where in a protocol object its read buffer was found


cdef int _remember_offset(object proto, MemoryBuffer buf) except -1:
    global _buf_offset
    cdef Py_ssize_t off, size = type(proto).__basicsize__
    cdef char* base = <char*><PyObject*>proto
    off = sizeof(PyObject)
    while off + <Py_ssize_t>sizeof(PyObject*) <= size:
        if (<PyObject**>(base + off))[0] == <PyObject*>buf:
            _buf_offset = off
            return 0
        off += sizeof(PyObject*)
    return 0


@cython.final
cdef class Reader:
    def __init__(self, proto, answer_method):
        global _warned
        self.answer_method = answer_method
        self.head = bytearray()
        self.session = None
        self.guard = FrameGuard()
        self.dropping = False
        self.turn_bytes = 0
        self.reads = 0
        self.check_armed = False
        self.buf = None
        self.idle_cap = 0
        # picows keeps its read buffer in a private field; the collector's view of the
        # protocol's references is the one way to it that does not depend on its layout.
        # Where the first connection's was found, the next ones' are looked at first
        # (one pointer read, its type checked; the collector's view again if it is not one)
        cdef PyObject* at
        if _buf_offset > 0:
            at = (<PyObject**>((<char*><PyObject*>proto) + _buf_offset))[0]
            if at != NULL and at.ob_type == <PyTypeObject*>MemoryBuffer:
                self.buf = <MemoryBuffer><object>at
                self.idle_cap = self.buf.capacity
                return
        found = [r for r in gc.get_referents(proto) if type(r) is MemoryBuffer]
        if len(found) == 1:
            self.buf = <MemoryBuffer>found[0]
            self.idle_cap = self.buf.capacity
            _remember_offset(proto, self.buf)
        elif not _warned:
            _warned = True
            _log.warning("picows' read buffer not found: it will keep its peak size after large messages")

    @property
    def capacity(self):
        return None if self.buf is None else self.buf.capacity

    cdef int _updated(self, object proto, object view, Py_ssize_t n) except -1:
        cdef Conn session
        cdef FrameGuard guard
        cdef Py_ssize_t k
        if self.dropping:
            return 0
        session = self.session
        if session is None:
            return self._http(proto, view, n)
        guard = self.guard
        k = guard.feed_ptr(<const unsigned char*>_view_ptr(view), n, session.lane.max_frame_bytes)
        if k:
            _buffer_updated(proto, k)
        if guard.refused:
            return self._refuse(proto)
        self.reads += 1
        if self.buf is not None and self.buf.capacity > self.idle_cap and not self.check_armed:
            self._arm(proto)
        self.turn_bytes += n
        if self.turn_bytes >= _READ_SLICE:
            self._yield_turn(proto)
        return 0

    cdef int _yield_turn(self, object proto) except -1:
        self.turn_bytes = 0
        tr = proto.transport.underlying_transport
        tr.pause_reading()
        asyncio.get_running_loop().call_soon(self._resume, tr)
        return 0

    def _resume(self, tr):
        if not self.dropping and not tr.is_closing():
            tr.resume_reading()

    cdef int _http(self, object proto, object view, Py_ssize_t n) except -1:
        cdef bytearray head = self.head
        cdef Py_ssize_t end
        if head is None:
            _buffer_updated(proto, n)
            return 0
        if len(head) < _HEAD_MAX:
            head += view[:n]
            if self.answer_method is not None and self._other_method(proto, head):
                return 0
        _buffer_updated(proto, n)
        listener = proto.listener
        if listener is None:
            return 0
        self.head = None
        if not isinstance(listener, Conn):
            return 0
        self.session = <Conn>listener
        end = head.find(b"\r\n\r\n")
        self.guard.feed(head[end + 4:], self.session.lane.max_frame_bytes)
        if self.guard.refused:
            self._refuse(proto)
        elif self.buf is not None and self.buf.capacity > self.idle_cap:
            self._arm(proto)
        return 0

    cdef bint _other_method(self, object proto, bytearray head) except -1:
        cdef Py_ssize_t eol
        if head.startswith(b"GET "):
            self.answer_method = None
            return False
        eol = head.find(b"\r\n")
        if eol < 0:
            return False
        parts = bytes(head[:eol]).split(b" ")
        if len(parts) != 3 or parts[0] == b"GET":
            self.answer_method = None
            return False
        response = self.answer_method(parts[0], parts[1])
        self.answer_method = None
        self.head = None
        self.dropping = True
        response.headers["Connection"] = "close"
        tr = proto.transport
        tr.underlying_transport.write(bytes(response.to_bytes()))
        tr.disconnect()
        return True

    cdef int _refuse(self, object proto) except -1:
        cdef Conn session = self.session
        self.dropping = True
        if session.state <= S_OPEN:
            session._too_large(self.guard.refused_binary)
        proto.transport.underlying_transport.pause_reading()
        return 0

    cdef int _arm(self, object proto) except -1:
        """The buffer grew: look again once the connection has been quiet for SHRINK_AFTER
        (a client streaming large messages keeps its buffer while it streams)."""
        self.check_armed = True
        asyncio.get_running_loop().call_later(SHRINK_AFTER, self._quiet_check, proto, self.reads)
        return 0

    def _quiet_check(self, proto, Py_ssize_t reads):
        self.check_armed = False
        if self.buf is None or self.buf.capacity <= self.idle_cap or self.dropping:
            return
        if reads != self.reads:          # still reading: look again later
            self._arm(proto)
            return
        self._shrink(proto)

    cdef int _shrink(self, object proto) except -1:
        """Back to the idle capacity once what picows holds fits in half of it."""
        cdef MemoryBuffer buf = self.buf
        cdef Py_ssize_t used
        cdef char* data
        if self.session.state > S_OPEN or proto.transport.is_close_frame_sent or proto.transport.is_disconnected:
            return 0
        # where picows will write next = how much it holds (its frame under way starts at 0)
        used = _view_ptr(_get_buffer(proto, -1)) - buf.data
        if used < 0 or used > (self.idle_cap - _SIMD_PAD) // 2:
            return 0
        data = <char*>PyMem_Realloc(buf.data, self.idle_cap)
        if data == NULL:
            return 0                    # keep the big one; try again after the next read
        buf.data = data
        buf.capacity = self.idle_cap
        buf.size = self.idle_cap - _SIMD_PAD
        proto._view = None
        return 0


class Protocol(WSProtocol):
    """picows' server protocol with every read seen first (reader_py)."""

    __slots__ = ("_view", "_reader")

    def __init__(self, *args, answer_method=None):
        WSProtocol.__init__(self, *args)
        self._view = None
        self._reader = Reader(self, answer_method)
        (<Reader>self._reader).info_on = len(args) > 4 and args[4].isEnabledFor(_INFO)

    def connection_made(self, transport):
        cdef WSTransport tr
        sock = None if (<Reader>self._reader).info_on else transport.get_extra_info("socket")
        if sock is None:
            WSProtocol.connection_made(self, transport)
            return
        WSProtocol.connection_made(self, _SockoptShim(transport, sock.fileno()))
        tr = <WSTransport>self.transport
        tr.underlying_transport = transport

    def get_buffer(self, size_hint):
        view = _get_buffer(self, size_hint)
        if len(view) > READ_SLICE:          # one read takes at most a slice
            view = view[:READ_SLICE]
        self._view = view
        return view

    def buffer_updated(self, Py_ssize_t nbytes):
        view = self._view
        self._view = None                       # an idle connection holds no view (reader_py)
        (<Reader>self._reader)._updated(self, view, nbytes)


def reader_of(proto) -> Reader:
    """The Reader of a gateway connection (tests and diagnostics)."""
    return proto._reader


__all__ = ["FrameGuard", "Protocol", "Reader", "reader_of"]
