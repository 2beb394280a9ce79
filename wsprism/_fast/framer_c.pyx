# cython: language_level=3
"""Compiled per-connection frame handling. The logic and its documentation live in
framer_py.py (the twin); this module works on picows' frame pointer directly, so a
relayed Hot Lane frame creates one Python object: the outgoing frame, shared by all."""
import asyncio
import secrets

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.time cimport timespec
from picows.picows cimport WSCloseCode, WSFrame, WSMsgType, WSTransport

import msgspec

from .bucket_c cimport TokenBucket
from .fanout_c cimport R_OVER_SESSION, S_CLOSING, S_OPEN, Endpoint, broadcast, build_frame, build_frame_ptr
from .hotheader_c cimport H_BAD_FLAGS, H_OK, H_SHORT, HotAllowlist, HotHeader, hot_parse
from .utf8_c cimport utf8_valid_ptr

from .fanout_c import CLOSED, CLOSING, OPEN, PENDING  # re-exported for parity with the twin

cdef extern from "<time.h>" nogil:
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC

C_EXT_ALLOW = _C_EXT_ALLOW
C_EXT_NOT_ALLOWED = _C_EXT_NOT_ALLOWED
C_EXT_RATE_LIMITED = _C_EXT_RATE_LIMITED
C_EXT_TOO_LARGE = _C_EXT_TOO_LARGE
C_EXT_BAD_REQUEST = _C_EXT_BAD_REQUEST
C_EXT_UNKNOWN_SERVICE = _C_EXT_UNKNOWN_SERVICE
C_HOT_ALLOW = _C_HOT_ALLOW
C_HOT_NOT_ALLOWED = _C_HOT_NOT_ALLOWED
C_HOT_RATE_LIMITED = _C_HOT_RATE_LIMITED
C_HOT_TOO_LARGE = _C_HOT_TOO_LARGE
C_HOT_BAD_REQUEST = _C_HOT_BAD_REQUEST
C_HOT_NO_ACTIVE_ROOM = _C_HOT_NO_ACTIVE_ROOM
C_DECODE_ERRORS = _C_DECODE_ERRORS
C_EGRESS_DROPS = _C_EGRESS_DROPS
N_COUNTERS = _N_COUNTERS

RELAY_SVC = 1
HOT_SAMPLE_MASK = 63
NOTICE_INTERVAL = 1.0
CLOSE_TIMEOUT = 1.0
DEF _RELAY_SVC = 1
DEF _SAMPLE_MASK = 63
DEF _NOTICE = 1.0

cdef object _UNSET = msgspec.UNSET
cdef object _on_envelope = None
cdef object _encode_error = None


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline bint _close_code_valid(int code) noexcept:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_code_valid(int code) -> bool:
    """A code a client may send in its close frame (RFC 6455 7.4)."""
    return _close_code_valid(code)


def install(on_envelope, encode_error) -> None:
    """Wire the layers above (the gateway does this once at import)."""
    global _on_envelope, _encode_error
    _on_envelope = on_envelope
    _encode_error = encode_error


@cython.final
cdef class LanePolicy:
    def __init__(self):
        self.max_frame_bytes = 4096
        self.hot_silent = False
        self.hot_requires_room = True
        self.hot_allow = HotAllowlist()
        self.bucket = None
        self.counts_[:] = [0] * 14
        self.hot_seq = 0
        self.hist_hot = None

    def configure(self, Py_ssize_t max_frame_bytes, bint hot_silent, bint hot_requires_room,
                  HotAllowlist hot_allow, TokenBucket bucket) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.hot_silent = hot_silent
        self.hot_requires_room = hot_requires_room
        self.hot_allow = hot_allow
        self.bucket = bucket

    def bump(self, int idx, unsigned long long n=1) -> None:
        if not 0 <= idx < _N_COUNTERS:
            raise IndexError("list index out of range")
        self.counts_[idx] += n

    def snapshot(self) -> list:
        return [self.counts_[i] for i in range(_N_COUNTERS)]

    @property
    def counts(self) -> list:
        return self.snapshot()


@cython.final
cdef class Session(Endpoint):
    def __init__(self, gateway, tenant, user, sid, ip, exp):
        Endpoint.__init__(self, gateway.corker)
        self.gateway = gateway
        self.tenant = tenant
        self.lane = tenant.lane
        self.user = user
        self.sid = sid
        self.trace_id = secrets.token_hex(8)
        self.ip = ip
        self.ticket_exp = exp
        self.pending_ticket = None
        self.bucket = None
        self.rooms = {}
        self.room_members = None
        self.rl_notice_at = -1.0
        self.exp_handle = None
        self.close_handle = None
        self.slow_handle = None
        self.frag = None
        self.frag_binary = False
        self.n_traces = 0
        self.seen = True
        self.idle_ticks = 0
        self.registered = False
        self.refreshing = False

    # -- identity ----------------------------------------------------------------------
    @property
    def active_room(self):
        return next(reversed(self.rooms), None)

    def next_trace_id(self) -> str:
        self.n_traces += 1
        return f"{self.trace_id}-{self.n_traces}"

    # -- sending -----------------------------------------------------------------------
    cpdef send(self, bytes data):
        if data is None:
            raise TypeError("send() needs bytes, not None")
        self._enqueue(build_frame_ptr(0x1, <const unsigned char*>PyBytes_AS_STRING(data), len(data)), False)

    def send_binary(self, data) -> None:
        self._enqueue(build_frame(0x2, data), False)

    def send_lossy(self, data) -> bool:
        return self._enqueue(build_frame(0x2, data), True)

    cpdef send_error(self, str code, str msg, object seq=_UNSET):
        self.send(_encode_error(code, msg, seq, self.next_trace_id()))

    # -- closing -----------------------------------------------------------------------
    cpdef close(self, int code=1000, str reason=""):
        if self.state >= S_CLOSING:
            return
        if self.over:
            self.drop_queued()
        self.flush()
        self.state = S_CLOSING
        self.release()
        self.gateway.detach(self)
        cdef WSTransport tr = self.transport
        if tr is None:
            return
        tr.send_close(<WSCloseCode>code, reason.encode()[:120])
        self.close_handle = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, (<object>tr).disconnect, False)

    cpdef overflow(self, int reason):
        if self.state > S_OPEN:
            return
        stats = self.tenant.stats
        if reason == R_OVER_SESSION:
            stats.outbound_max_closes += 1
        else:
            stats.outbound_total_closes += 1
        self.drop_queued()
        self.close(4005, "slow consumer: outbound buffer over its limit")

    # -- picows callbacks --------------------------------------------------------------
    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        self.gateway.on_connected(self)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.release()
        self.gateway.on_disconnected(self)

    cpdef pause_writing(self):
        self.paused = True
        if self.slow_handle is None and self.state <= S_OPEN:
            self.slow_handle = asyncio.get_running_loop().call_later(
                self.tenant.writer_send_timeout, self._slow_consumer)

    cpdef resume_writing(self):
        self.paused = False
        if self.slow_handle is not None:
            self.slow_handle.cancel()
            self.slow_handle = None

    def _slow_consumer(self) -> None:
        self.slow_handle = None
        if self.paused and self.state <= S_OPEN:
            self.tenant.stats.writer_timeouts += 1
            self.close(4005, "slow consumer")

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType mt = frame.msg_type
        self.seen = True
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._protocol_error(transport, "reserved bits set without an extension")
            return
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            if self.frag is not None:
                self.close(1002, "new message inside a fragmented one")
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
            self.close(1002, "continuation without a message")
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
                code = 1000
            else:
                code = frame.get_close_code()
                if not _close_code_valid(code):
                    self._protocol_error(transport, "invalid close code")
                    return
            if self.over:
                self.drop_queued()
            self.flush()
            self.release()
            self.gateway.detach(self)
            transport.send_close(<WSCloseCode>code)
        transport.disconnect()
        if self.close_handle is None:   # a peer that stops reading cannot hold the socket
            self.close_handle = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, (<object>transport).disconnect, False)

    def _protocol_error(self, WSTransport transport, str reason):
        if self.state >= S_CLOSING or transport.is_close_frame_sent:
            transport.disconnect()
            return
        self.close(1002, reason)
        transport.disconnect()

    # -- both lanes --------------------------------------------------------------------
    cdef int _too_large(self, bint binary) except -1:
        cdef LanePolicy lane = self.lane
        if self.state == S_OPEN:
            lane.counts_[_C_HOT_TOO_LARGE if binary else _C_EXT_TOO_LARGE] += 1
            if not (binary and lane.hot_silent):
                self.send_error("PAYLOAD_TOO_LARGE", f"message larger than {lane.max_frame_bytes} bytes")
        self.close(1009, "message too big")
        return 0

    cdef bint _rate_ok(self) except -1:
        cdef TokenBucket bucket = self.bucket
        cdef TokenBucket shared = self.lane.bucket
        if bucket is not None and not bucket.allow():
            return False
        if shared is not None and not shared.allow():
            if bucket is not None:
                bucket.refund()
            return False
        return True

    cdef bint _should_notify(self):
        cdef double now = _now()
        if now - self.rl_notice_at >= _NOTICE:
            self.rl_notice_at = now
            return True
        return False

    # -- Ext Lane (text) ---------------------------------------------------------------
    def on_text(self, bytes payload) -> None:
        self._text(<const unsigned char*>PyBytes_AS_STRING(payload), len(payload), payload)

    cdef int _text(self, const unsigned char* p, Py_ssize_t n, object payload) except -1:
        cdef LanePolicy lane = self.lane
        if n > lane.max_frame_bytes:
            return self._too_large(False)
        if not self._rate_ok():
            lane.counts_[_C_EXT_RATE_LIMITED] += 1
            if self._should_notify():
                self.send_error("RATE_LIMITED", "rate limit exceeded, message dropped")
            return 0
        if not utf8_valid_ptr(p, n):
            lane.counts_[_C_DECODE_ERRORS] += 1
            lane.counts_[_C_EXT_BAD_REQUEST] += 1
            self.close(1007, "invalid UTF-8")
            return 0
        if type(payload) is not bytes:
            payload = (<WSFrame>payload).get_payload_as_bytes()
        _on_envelope(self, payload)
        return 0

    # -- Hot Lane (binary) -------------------------------------------------------------
    def on_binary(self, bytes payload) -> None:
        self._binary(<const unsigned char*>PyBytes_AS_STRING(payload), len(payload))

    cdef int _binary(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef LanePolicy lane = self.lane
        cdef HotHeader h
        cdef int status
        cdef double t0
        if n > lane.max_frame_bytes:
            return self._too_large(True)
        if not self._rate_ok():
            lane.counts_[_C_HOT_RATE_LIMITED] += 1
            if not lane.hot_silent and self._should_notify():
                self.send_error("RATE_LIMITED", "rate limit exceeded, frame dropped")
            return 0
        status = hot_parse(p, n, &h)
        if status != H_OK:
            if status == H_SHORT:
                return self._hot_reject(_C_HOT_BAD_REQUEST, "BAD_REQUEST", "hot header needs 3 bytes")
            if status == H_BAD_FLAGS:
                return self._hot_reject(_C_HOT_BAD_REQUEST, "BAD_REQUEST", "invalid hot header flags")
            return self._hot_reject(_C_HOT_BAD_REQUEST, "BAD_REQUEST", "SEQ_PRESENT without 4 seq bytes")
        if not lane.hot_allow.allows_c(h.svc, h.op):
            return self._hot_reject(_C_HOT_NOT_ALLOWED, "NOT_ALLOWED", "svc_id:opcode not in the tenant's hot_allowlist")
        if lane.hot_requires_room and self.room_members is None:
            return self._hot_reject(_C_HOT_NO_ACTIVE_ROOM, "NOT_ALLOWED", "join a room first")
        if h.svc != _RELAY_SVC:
            return self._hot_reject(_C_HOT_NOT_ALLOWED, "NOT_ALLOWED", "no service for this svc_id")
        lane.counts_[_C_HOT_ALLOW] += 1
        lane.hot_seq += 1
        if lane.hot_seq & _SAMPLE_MASK:
            return self._relay(p, n, h.flags)
        t0 = _now()
        self._relay(p, n, h.flags)
        lane.hist_hot.observe(_now() - t0)
        return 0

    cdef int _hot_reject(self, int counter, str code, str msg) except -1:
        cdef LanePolicy lane = self.lane
        lane.counts_[counter] += 1
        if not lane.hot_silent:
            self.send_error(code, msg)
        return 0

    cdef int _relay(self, const unsigned char* p, Py_ssize_t n, unsigned char flags) except -1:
        cdef bytes frame = build_frame_ptr(0x2, p, n)
        cdef Py_ssize_t drops
        cdef unsigned char ack[7]
        if flags & 0x02:
            # the frame is still ours alone: clear ACK_REQUESTED in place
            (<unsigned char*>PyBytes_AS_STRING(frame))[len(frame) - n + 2] = flags & ~0x02
        if self.room_members is None:
            drops = 0 if self._enqueue(frame, True) else 1
        else:
            drops = broadcast(self.room_members, frame, True)
        if drops:
            self.lane.counts_[_C_EGRESS_DROPS] += drops
        if flags & 0x02 and flags & 0x01:
            ack[0] = p[0]; ack[1] = p[1]; ack[2] = 0x05
            ack[3] = p[3]; ack[4] = p[4]; ack[5] = p[5]; ack[6] = p[6]
            self._enqueue(build_frame_ptr(0x2, ack, 7), False)
        return 0
