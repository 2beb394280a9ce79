# cython: language_level=3
"""Compiled per-connection frame handling. The logic and its documentation live in
framer_py.py (the twin); this module works on picows' frame pointer directly, so a
relayed Hot Lane frame creates one Python object: the outgoing frame, shared by all."""
import asyncio
from os import urandom

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.list cimport PyList_GET_ITEM
from cpython.mem cimport PyMem_Realloc
from libc.string cimport memset
from picows.picows cimport MemoryBuffer, WSCloseCode, WSFrame, WSMsgType, WSTransport

import msgspec

from .bucket_c cimport TokenBucket
from .clock cimport monotonic
from .codes_c cimport (
    C_DECODE_ERRORS, C_EGRESS_DROPS, C_EXT_DENY_BAD_REQUEST, C_EXT_DENY_TOO_LARGE, C_EXT_DROP_RATE_LIMITED,
    C_HOT_ALLOW_OK, C_HOT_DENY_TOO_LARGE, C_HOT_DROP_BAD_REQUEST, C_HOT_DROP_NO_ACTIVE_ROOM,
    C_HOT_DROP_NOT_ALLOWED, C_HOT_DROP_RATE_LIMITED, C_SLOW_OUTBOUND_MAX, C_SLOW_OUTBOUND_TOTAL_MAX,
    CLOSE_INVALID_UTF8, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, HDR_BAD_FLAGS,
    HDR_OK, HDR_SHORT, HOT_ACK_REQUESTED, HOT_IS_ACK, HOT_SEQ_PRESENT,
    N_COUNTERS, OP_BINARY, OP_TEXT, OVER_SESSION, S_CLOSING, S_OPEN,
)
from .fanout_c cimport Endpoint, broadcast, build_frame, build_frame_ptr
from .hotheader_c cimport HotAllowlist, allowed, hot_parse
from .utf8_c cimport utf8_valid_ptr

from .codes_c import ErrorCode as _ErrorCode

HOT_SAMPLE_MASK = 63
NOTICE_INTERVAL = 1.0
CLOSE_TIMEOUT = 1.0
N_HOT_SERVICES = 256
DEF _SAMPLE_MASK = 63
DEF _NOTICE = 1.0

WRITE_BUFFER_IDLE = 256
DEF _WRITE_BUFFER_IDLE = 256

cdef object _UNSET = msgspec.UNSET
cdef str _PAYLOAD_TOO_LARGE = _ErrorCode.PAYLOAD_TOO_LARGE.name
cdef str _RATE_LIMITED = _ErrorCode.RATE_LIMITED.name
cdef str _BAD_REQUEST = _ErrorCode.BAD_REQUEST.name
cdef str _NOT_ALLOWED = _ErrorCode.NOT_ALLOWED.name


cdef int _trim(WSTransport tr) except -1:
    """What an upgraded connection no longer needs (framer_py._trim says what and why)."""
    cdef MemoryBuffer wb = tr._write_buffer
    cdef char* data
    tr.request = None
    tr.response = None
    if wb is not None and wb.capacity > _WRITE_BUFFER_IDLE:
        data = <char*>PyMem_Realloc(wb.data, _WRITE_BUFFER_IDLE)
        if data != NULL:
            wb.data = data
            wb.capacity = _WRITE_BUFFER_IDLE
            wb.size = 0
    return 0


cdef inline bint _close_code_valid(int code) noexcept:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_code_valid(int code) -> bool:
    """A code a client may send in its close frame (RFC 6455 7.4)."""
    return _close_code_valid(code)


@cython.final
cdef class _Relay:
    def __repr__(self):
        return "RELAY"


RELAY = _Relay()
cdef object _RELAY = RELAY


@cython.final
cdef class LanePolicy:
    def __init__(self):
        self.max_frame_bytes = 4096
        self.hot_silent = False
        self.hot_requires_room = True
        self.hot_allow = HotAllowlist()
        self.bucket = None
        memset(self.counts_, 0, sizeof(self.counts_))
        self.hot_seq = 0
        self.hist_hot = None
        self.ext_entry = None
        self.encode_error = None
        self.hot_handlers = [None] * N_HOT_SERVICES
        self.relay_tap = None

    def configure(self, Py_ssize_t max_frame_bytes, bint hot_silent, bint hot_requires_room,
                  HotAllowlist hot_allow, TokenBucket bucket) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.hot_silent = hot_silent
        self.hot_requires_room = hot_requires_room
        self.hot_allow = hot_allow
        self.bucket = bucket

    def set_hot_handlers(self, handlers) -> None:
        handlers = list(handlers)
        if len(handlers) != N_HOT_SERVICES:
            raise ValueError("hot_handlers needs 256 entries")
        self.hot_handlers = handlers

    def bump(self, int idx, unsigned long long n=1) -> None:
        if not 0 <= idx < N_COUNTERS:
            raise IndexError("list index out of range")
        self.counts_[idx] += n

    def snapshot(self) -> list:
        return [self.counts_[i] for i in range(<int>N_COUNTERS)]

    @property
    def counts(self) -> list:
        return self.snapshot()


cdef class Conn(Endpoint):
    def __init__(self, host, LanePolicy lane):
        Endpoint.__init__(self, host.corker)
        self.host = host
        self.lane = lane
        self.bucket = None
        self.room_members = None
        self.rl_notice_at = -1.0
        self.frag = None
        self.frag_binary = False
        self.trace_id = urandom(8).hex()          # secrets.token_hex(8), without its two Python calls
        self.n_traces = 0
        self.seen = True
        self.close_handle = None

    def next_trace_id(self) -> str:
        self.n_traces += 1
        return f"{self.trace_id}-{self.n_traces}"

    # -- sending -----------------------------------------------------------------------
    cpdef send(self, bytes data):
        if data is None:
            raise TypeError("send() needs bytes, not None")
        self._enqueue(build_frame_ptr(OP_TEXT, <const unsigned char*>PyBytes_AS_STRING(data), len(data)), False)

    def send_binary(self, data) -> None:
        self._enqueue(build_frame(OP_BINARY, data), False)

    def send_lossy(self, data) -> bool:
        return self._enqueue(build_frame(OP_BINARY, data), True)

    cpdef send_error(self, str code, str msg, object seq=_UNSET):
        self.send(self.lane.encode_error(code, msg, seq, self.next_trace_id()))

    # -- closing -----------------------------------------------------------------------
    cpdef close(self, int code=1000, str reason=""):
        if self.state >= S_CLOSING:
            return
        if self.over:
            self._drop_queued()
        self._flush()
        self.state = S_CLOSING
        self._release()
        self.host.detach(self)
        cdef WSTransport tr = self.transport
        if tr is None:
            return
        tr.send_close(<WSCloseCode>code, reason.encode()[:120])
        self.close_handle = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, (<object>tr).disconnect, False)

    def refuse(self, str code, str msg, int close_code, object seq=_UNSET) -> None:
        if self.state >= S_CLOSING:
            return
        self.send_error(code, msg, seq)
        self.close(close_code, msg)

    cdef int _overflow(self, int reason) except -1:
        if self.state > S_OPEN:
            return 0
        self.lane.inc(C_SLOW_OUTBOUND_MAX if reason == OVER_SESSION else C_SLOW_OUTBOUND_TOTAL_MAX)
        self._drop_queued()
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer over its limit")
        return 0

    # -- picows callbacks --------------------------------------------------------------
    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        _trim(transport)
        self.host.on_connected(self)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self._release()
        self.host.on_disconnected(self)

    cpdef pause_writing(self):
        self.paused = True
        self.host.on_paused(self)

    cpdef resume_writing(self):
        self.paused = False
        self.host.on_resumed(self)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType mt = frame.msg_type
        self.seen = True
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._protocol_error(transport, "reserved bits set without an extension")
            return
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            if self.frag is not None:
                self.close(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            if not frame.fin:
                self._start_fragments(frame, mt == WSMsgType.BINARY)
                return
            if self.state != S_OPEN:
                return
            if mt == WSMsgType.BINARY:
                self._binary(<const unsigned char*>frame.payload_ptr, frame.payload_size)
            else:
                self._text(<const unsigned char*>frame.payload_ptr, frame.payload_size, frame)
        elif mt == WSMsgType.CONTINUATION:
            self._continue_fragments(frame)
        elif mt == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif mt == WSMsgType.CLOSE:
            self._on_close_frame(transport, frame)

    # -- fragments ---------------------------------------------------------------------
    def _start_fragments(self, WSFrame frame, bint binary):
        if frame.payload_size > self.lane.max_frame_bytes:
            self._too_large(binary)
            return
        self.frag = bytearray(frame.get_payload_as_bytes())
        self.frag_binary = binary

    def _continue_fragments(self, WSFrame frame):
        cdef bytearray buf = self.frag
        cdef bint binary
        cdef bytes whole
        if buf is None:
            self.close(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            return
        binary = self.frag_binary
        if len(buf) + frame.payload_size > self.lane.max_frame_bytes:
            self.frag = None
            self._too_large(binary)
            return
        buf += frame.get_payload_as_bytes()
        if not frame.fin:
            return
        self.frag = None
        if self.state != S_OPEN:
            return
        whole = bytes(buf)
        if binary:
            self._binary(<const unsigned char*>PyBytes_AS_STRING(whole), len(whole))
        else:
            self._text(<const unsigned char*>PyBytes_AS_STRING(whole), len(whole), whole)

    def _on_close_frame(self, WSTransport transport, WSFrame frame):
        cdef int code
        if self.state != S_CLOSING and not transport.is_close_frame_sent:
            if frame.payload_size < 2:
                code = CLOSE_NORMAL
            else:
                code = frame.get_close_code()
                if not _close_code_valid(code):
                    self._protocol_error(transport, "invalid close code")
                    return
            if self.over:
                self._drop_queued()
            self._flush()
            self.state = S_CLOSING
            self._release()
            self.host.detach(self)
            transport.send_close(<WSCloseCode>code)
        transport.disconnect()
        # a peer that stops reading cannot hold the socket (framer_py: when a timer is needed)
        if self.close_handle is None and (transport.is_secure or transport.underlying_transport.get_write_buffer_size()):
            self.close_handle = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, (<object>transport).disconnect, False)

    def _protocol_error(self, WSTransport transport, str reason):
        if self.state >= S_CLOSING or transport.is_close_frame_sent:
            transport.disconnect()
            return
        self.close(CLOSE_PROTOCOL_ERROR, reason)
        transport.disconnect()

    # -- both lanes --------------------------------------------------------------------
    cdef int _too_large(self, bint binary) except -1:
        cdef LanePolicy lane = self.lane
        if self.state == S_OPEN:
            lane.inc(C_HOT_DENY_TOO_LARGE if binary else C_EXT_DENY_TOO_LARGE)
            if not (binary and lane.hot_silent):
                self.send_error(_PAYLOAD_TOO_LARGE, f"message larger than {lane.max_frame_bytes} bytes")
        self.close(CLOSE_TOO_BIG, "message too big")
        return 0

    cdef bint _rate_ok(self, double now) except -1:
        cdef TokenBucket bucket = self.bucket
        cdef TokenBucket shared = self.lane.bucket
        if bucket is not None and not bucket.allow_at(now):
            return False
        if shared is not None and not shared.allow_at(now):
            if bucket is not None:
                bucket.refund()
            return False
        return True

    cdef bint _should_notify(self, double now):
        if now - self.rl_notice_at >= _NOTICE:
            self.rl_notice_at = now
            return True
        return False

    # -- Ext Lane (text) ---------------------------------------------------------------
    def on_text(self, bytes payload) -> None:
        self._text(<const unsigned char*>PyBytes_AS_STRING(payload), len(payload), payload)

    cdef int _text(self, const unsigned char* p, Py_ssize_t n, object payload) except -1:
        cdef LanePolicy lane = self.lane
        cdef double now
        if n > lane.max_frame_bytes:
            return self._too_large(False)
        now = monotonic()
        if not self._rate_ok(now):
            lane.inc(C_EXT_DROP_RATE_LIMITED)
            if self._should_notify(now):
                self.send_error(_RATE_LIMITED, "rate limit exceeded, message dropped")
            return 0
        if not utf8_valid_ptr(p, n):
            lane.inc(C_DECODE_ERRORS)
            lane.inc(C_EXT_DENY_BAD_REQUEST)
            self.close(CLOSE_INVALID_UTF8, "invalid UTF-8")
            return 0
        if type(payload) is not bytes:
            payload = (<WSFrame>payload).get_payload_as_bytes()
        lane.ext_entry(self, payload)
        return 0

    # -- Hot Lane (binary) -------------------------------------------------------------
    def on_binary(self, bytes payload) -> None:
        self._binary(<const unsigned char*>PyBytes_AS_STRING(payload), len(payload))

    cdef int _binary(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef LanePolicy lane = self.lane
        cdef unsigned long long h
        cdef unsigned char status, svc, op, flags
        cdef object handler
        cdef double now, t0
        if n > lane.max_frame_bytes:
            return self._too_large(True)
        now = monotonic()
        if not self._rate_ok(now):
            lane.inc(C_HOT_DROP_RATE_LIMITED)
            if not lane.hot_silent and self._should_notify(now):
                self.send_error(_RATE_LIMITED, "rate limit exceeded, frame dropped")
            return 0
        h = hot_parse(p, n)
        status = h & 0xFF
        if status != HDR_OK:
            if status == HDR_SHORT:
                return self._hot_reject(C_HOT_DROP_BAD_REQUEST, _BAD_REQUEST, "hot header needs 3 bytes")
            if status == HDR_BAD_FLAGS:
                return self._hot_reject(C_HOT_DROP_BAD_REQUEST, _BAD_REQUEST, "invalid hot header flags")
            return self._hot_reject(C_HOT_DROP_BAD_REQUEST, _BAD_REQUEST, "SEQ_PRESENT without 4 seq bytes")
        svc = (h >> 8) & 0xFF
        op = (h >> 16) & 0xFF
        flags = (h >> 24) & 0xFF
        if not allowed(<const unsigned char*>PyBytes_AS_STRING(lane.hot_allow.bits), svc, op):
            return self._hot_reject(C_HOT_DROP_NOT_ALLOWED, _NOT_ALLOWED, "svc_id:opcode not in the tenant's hot_allowlist")
        if lane.hot_requires_room and self.room_members is None:
            return self._hot_reject(C_HOT_DROP_NO_ACTIVE_ROOM, _NOT_ALLOWED, "join a room first")
        handler = <object>PyList_GET_ITEM(lane.hot_handlers, svc)
        if handler is None:
            return self._hot_reject(C_HOT_DROP_NOT_ALLOWED, _NOT_ALLOWED, "no service for this svc_id")
        lane.inc(C_HOT_ALLOW_OK)
        lane.hot_seq += 1
        if lane.hot_seq & _SAMPLE_MASK:
            return self._hot_service(handler, p, n, op, flags)
        t0 = monotonic()
        self._hot_service(handler, p, n, op, flags)
        lane.hist_hot.observe(monotonic() - t0)
        return 0

    cdef int _hot_reject(self, int counter, str code, str msg) except -1:
        cdef LanePolicy lane = self.lane
        lane.inc(counter)
        if not lane.hot_silent:
            self.send_error(code, msg)
        return 0

    cdef int _hot_service(self, object handler, const unsigned char* p, Py_ssize_t n,
                          unsigned char op, unsigned char flags) except -1:
        cdef Py_ssize_t head = 7 if flags & HOT_SEQ_PRESENT else 3
        cdef unsigned char ack[7]
        if handler is _RELAY:
            self._relay(p, n, flags)
        elif not handler(self, op, flags, PyBytes_FromStringAndSize(<const char*>p + head, n - head)):
            return 0
        if flags & HOT_ACK_REQUESTED and flags & HOT_SEQ_PRESENT:
            ack[0] = p[0]; ack[1] = p[1]; ack[2] = HOT_SEQ_PRESENT | HOT_IS_ACK
            ack[3] = p[3]; ack[4] = p[4]; ack[5] = p[5]; ack[6] = p[6]
            self._enqueue(build_frame_ptr(OP_BINARY, ack, 7), False)
        return 0

    cdef int _relay(self, const unsigned char* p, Py_ssize_t n, unsigned char flags) except -1:
        cdef bytes frame = build_frame_ptr(OP_BINARY, p, n)
        cdef Py_ssize_t drops
        if flags & HOT_ACK_REQUESTED:
            # the frame is still ours alone: clear ACK_REQUESTED in place
            (<unsigned char*>PyBytes_AS_STRING(frame))[len(frame) - n + 2] = flags & ~HOT_ACK_REQUESTED
        if self.room_members is None:
            drops = 0 if self._enqueue(frame, True) else 1
        else:
            drops = broadcast(self.room_members, frame, True)
            if self.lane.relay_tap is not None:     # a broker: the room's members on other nodes
                self.lane.relay_tap(self, frame)
        if drops:
            self.lane.add(C_EGRESS_DROPS, drops)
        return 0
