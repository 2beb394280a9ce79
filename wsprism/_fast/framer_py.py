"""Per-connection frame handling: every session is the picows listener of its
connection (pure-Python twin of `framer_c`, which picows calls through its vtable).
`Conn` holds what a frame touches; the session's Python side subclasses it
(core/session.py).

A frame's way in (the reader, reader_py.py, has already refused any frame whose header
announced more than the tenant's `max_frame_bytes`):

- RFC 6455 first: a reserved bit set (no extension is negotiated) closes 1002; pings are
  answered here (picows' auto-pong is off, so a ping with a reserved bit is refused like
  any other frame); a client's close code is answered with the same code, or 1002 when
  it is one a client must not send (`close_code_valid`);
- text and binary frames, reassembled from fragments up to the tenant's
  `max_frame_bytes` (the limit is on the whole message);
- both lanes first: size (PAYLOAD_TOO_LARGE, close 1009), then the rate limit (tokens
  from the session's bucket and/or the tenant's; the sender hears RATE_LIMITED at
  most once a second);
- Ext Lane (text): strict UTF-8 or close 1007, then the tenant's Ext Lane entry,
  `lane.ext_entry(session, payload)` (decode, allowlist, dispatch:
  wsprism/policy/ext_lane.py);
- Hot Lane (binary): header, `hot_allowlist`, `hot_requires_active_room`, then the
  service registered for the frame's svc_id in `lane.hot_handlers`:
  - `RELAY` (svc 1, built in, run here): the frame's exact bytes, ACK_REQUESTED
    cleared, built once and queued lossy for every member of the active room (or back
    to the sender alone with no active room);
  - any other handler (a Python service's `on_hot`, wsprism/services/python.py) is
    called as `handler(session, opcode, flags, payload)` with the payload after the
    header; it answers whether it succeeded;
  - none: NOT_ALLOWED.
  After a service that succeeded, the ack `[svc][op][0x05][seq]` when asked for. A
  frame failing a check is dropped; `hot_error_mode: sys_error` also tells the sender.

What the listener calls, it is handed: the `host` it is built with (connect,
disconnect, detach, backpressure; wsprism/lifecycle.py) and its tenant's `LanePolicy`
(limits, buckets, allowlist, counters, the Ext Lane entry, the Hot Lane handlers and
the sys.error encoder), which sessions of the tenant share, so a reload changes it for
everyone's next frame.

Over its outbound budget (fanout_py.py), a session is a slow consumer: `overflow`
closes it 4005 at once, whatever the lane, counted by reason in the lane's counters
(`C_SLOW_OUTBOUND_MAX`, `C_SLOW_OUTBOUND_TOTAL_MAX`).
"""
import asyncio
from os import urandom
from time import monotonic, perf_counter

import msgspec
from picows import WSMsgType

from .codes_py import CloseCode, Counter, ErrorCode, HotFlag, HotHeaderStatus, Opcode, OverflowReason, SessionState
from .fanout_py import Endpoint, broadcast, build_frame
from .hotheader_py import HotAllowlist, parse_header
from .utf8_py import utf8_valid

HOT_SAMPLE_MASK = 63     # time 1 Hot Lane frame in 64 (relayed or handed to a service)
NOTICE_INTERVAL = 1.0    # RATE_LIMITED notices: at most one a second per session
CLOSE_TIMEOUT = 1.0      # abort the socket if the peer has not completed the close by then
N_HOT_SERVICES = 256
WRITE_BUFFER_IDLE = 256  # picows' per-transport frame buffer once upgraded (it grows again for a big frame)

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_UNSET = msgspec.UNSET
_OPEN, _CLOSING = SessionState.S_OPEN, SessionState.S_CLOSING
_SEQ, _ACK = HotFlag.HOT_SEQ_PRESENT, HotFlag.HOT_ACK_REQUESTED
_N_COUNTERS = Counter.N_COUNTERS


def _trim(transport) -> None:
    """Once upgraded, a connection no longer needs the handshake: picows keeps the request
    and our 101 response on the transport for the connection's life (`WSTransport.request`,
    `.response`: two `CIMultiDict`s with every header as a `str`, ~2 KB). Everything the
    gateway takes from them (peer address, X-Forwarded-For, the query) was read by the
    router before the upgrade. The compiled twin drops both objects and shrinks picows'
    frame buffer (`_write_buffer`, 1024 bytes, used only for the pings, pongs and closes
    picows frames itself: never more than 139 bytes) to WRITE_BUFFER_IDLE; Python cannot
    reach either field, so here the header dicts are emptied (docs/benchmarks.md, "Memory
    per idle connection")."""
    for held in (transport.request, transport.response):
        if held is not None:
            held.headers.clear()


def close_code_valid(code: int) -> bool:
    """A code a client may send in its close frame (RFC 6455 7.4): 1000-1003, 1007-1014
    (the IANA-registered ones a peer may send) and 3000-4999 (registered / private)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class _Relay:
    """The built-in Hot Lane relay's entry in `LanePolicy.hot_handlers` (run by the framer)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RELAY"


RELAY = _Relay()


class LanePolicy:
    """One tenant's lane settings, compiled at config load, its decision counters, and
    the entries the framer hands messages to (set when the tenant is assembled)."""

    __slots__ = ("max_frame_bytes", "hot_silent", "hot_requires_room", "hot_allow", "bucket",
                 "counts", "hot_seq", "hist_hot", "ext_entry", "encode_error", "hot_handlers", "relay_tap")

    def __init__(self) -> None:
        self.max_frame_bytes = 4096
        self.hot_silent = False
        self.hot_requires_room = True
        self.hot_allow = HotAllowlist()
        self.bucket = None
        self.counts = [0] * _N_COUNTERS
        self.hot_seq = 0
        self.hist_hot = None
        self.ext_entry = None          # ext_entry(session, payload): the Ext Lane after UTF-8
        self.encode_error = None       # encode_error(code, msg, seq, trace_id) -> bytes
        self.hot_handlers = [None] * N_HOT_SERVICES
        self.relay_tap = None          # relay_tap(session, frame): the relay's frames for other nodes

    def configure(self, max_frame_bytes: int, hot_silent: bool, hot_requires_room: bool,
                  hot_allow, bucket) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.hot_silent = hot_silent
        self.hot_requires_room = hot_requires_room
        self.hot_allow = hot_allow
        self.bucket = bucket

    def set_hot_handlers(self, handlers) -> None:
        """Install the Hot Lane services: 256 entries, each None, RELAY or a callable."""
        handlers = list(handlers)
        if len(handlers) != N_HOT_SERVICES:
            raise ValueError("hot_handlers needs 256 entries")
        self.hot_handlers = handlers

    def bump(self, idx: int, n: int = 1) -> None:
        if not 0 <= idx < _N_COUNTERS:
            raise IndexError("list index out of range")
        self.counts[idx] += n

    def snapshot(self) -> list:
        return list(self.counts)


class Conn(Endpoint):
    """The compiled side of a session: what a frame touches (its connection, its lane
    policy and rate-limit state, the active room's members, fragments). The rest of the
    session, identity, rooms, expiry and timers, is the Python side that subclasses it
    (core/session.py)."""

    __slots__ = ("host", "lane", "bucket", "room_members", "rl_notice_at", "frag", "frag_binary",
                 "trace_id", "n_traces", "seen", "close_handle")

    def __init__(self, host, lane) -> None:
        Endpoint.__init__(self, host.corker)
        self.host = host
        self.lane = lane
        self.bucket = None
        self.room_members = None     # the active room's members, kept by the room table
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
    def send(self, data: bytes) -> None:
        """Reliable text frame (Ext Lane, sys)."""
        self.enqueue(build_frame(Opcode.OP_TEXT, data), False)

    def send_binary(self, data) -> None:
        """Reliable binary frame."""
        self.enqueue(build_frame(Opcode.OP_BINARY, data), False)

    def send_lossy(self, data) -> bool:
        """Lossy binary frame: dropped (False) while over the high-water mark."""
        return self.enqueue(build_frame(Opcode.OP_BINARY, data), True)

    def send_error(self, code: str, msg: str, seq=_UNSET) -> None:
        self.send(self.lane.encode_error(code, msg, seq, self.next_trace_id()))

    # -- closing -----------------------------------------------------------------------
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Flush what is queued, send a close frame and leave registry and rooms now;
        abort the socket if the peer has not completed the close within CLOSE_TIMEOUT."""
        if self.state >= _CLOSING:
            return
        if self.over:
            self.drop_queued()        # over its budget: what it could not hold is dropped
        self.flush()
        self.state = _CLOSING
        self.release()
        self.host.detach(self)
        tr = self.transport
        if tr is None:
            return
        tr.send_close(code, reason.encode()[:120])
        self.close_handle = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, tr.disconnect, False)

    def refuse(self, code: str, msg: str, close_code: int, seq=_UNSET) -> None:
        """`sys.error` then close: the one way a session is turned away with a reason
        (also before it is admitted, e.g. TOO_MANY_SESSIONS or AUTH_FAILED)."""
        if self.state >= _CLOSING:
            return
        self.send_error(code, msg, seq)
        self.close(close_code, msg)

    def overflow(self, reason: int) -> None:
        """Over the outbound budget (fanout): a slow consumer, closed 4005 at once and
        counted by reason, whatever the lane."""
        if self.state > _OPEN:
            return
        self.lane.counts[Counter.C_SLOW_OUTBOUND_MAX if reason == OverflowReason.OVER_SESSION
                         else Counter.C_SLOW_OUTBOUND_TOTAL_MAX] += 1
        self.drop_queued()
        self.close(CloseCode.CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer over its limit")

    # -- picows callbacks --------------------------------------------------------------
    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        _trim(transport)
        self.host.on_connected(self)

    def on_ws_disconnected(self, transport) -> None:
        self.release()
        self.host.on_disconnected(self)

    def pause_writing(self) -> None:
        self.paused = True
        self.host.on_paused(self)

    def resume_writing(self) -> None:
        self.paused = False
        self.host.on_resumed(self)

    def on_ws_frame(self, transport, frame) -> None:
        self.seen = True
        mt = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._protocol_error(transport, "reserved bits set without an extension")
            return
        if mt == _TEXT or mt == _BINARY:
            if self.frag is not None:
                self.close(CloseCode.CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            if not frame.fin:
                self._start_fragments(frame, mt == _BINARY)
                return
            if self.state != _OPEN:
                return
            if mt == _BINARY:
                self.on_binary(frame.get_payload_as_bytes())
            else:
                self.on_text(frame.get_payload_as_bytes())
        elif mt == _CONT:
            self._continue_fragments(frame)
        elif mt == _PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif mt == _CLOSE:
            self._on_close_frame(transport, frame)

    # -- fragments ---------------------------------------------------------------------
    def _start_fragments(self, frame, binary: bool) -> None:
        if frame.payload_size > self.lane.max_frame_bytes:
            self._too_large(binary)
            return
        self.frag = bytearray(frame.get_payload_as_bytes())
        self.frag_binary = binary

    def _continue_fragments(self, frame) -> None:
        buf = self.frag
        if buf is None:
            self.close(CloseCode.CLOSE_PROTOCOL_ERROR, "continuation without a message")
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
        if self.state != _OPEN:
            return
        if binary:
            self.on_binary(bytes(buf))
        else:
            self.on_text(bytes(buf))

    def _on_close_frame(self, transport, frame) -> None:
        """The client closes: answer with its code (1000 when it gave none), or 1002 when
        the code is one a client must not send (picows already refuses a 1-byte payload,
        an invalid UTF-8 reason and most unassigned codes below 3000)."""
        if self.state != _CLOSING and not transport.is_close_frame_sent:
            if frame.payload_size < 2:
                code = CloseCode.CLOSE_NORMAL
            else:
                code = frame.get_close_code()
                if not close_code_valid(code):
                    self._protocol_error(transport, "invalid close code")
                    return
            if self.over:
                self.drop_queued()
            self.flush()
            self.state = _CLOSING
            self.release()
            self.host.detach(self)
            transport.send_close(code)
        transport.disconnect()
        # A peer that stops reading cannot hold the socket: with bytes still buffered the
        # transport waits for them to drain (TLS: for the peer's close_notify), so it is
        # aborted after CLOSE_TIMEOUT. A plain transport with nothing buffered is gone
        # already (connection_lost is scheduled by its close()): no timer for it.
        if self.close_handle is None and (transport.is_secure or transport.underlying_transport.get_write_buffer_size()):
            self.close_handle = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, transport.disconnect, False)

    def _protocol_error(self, transport, reason: str) -> None:
        """RFC 6455 violation: close 1002 and hang up without waiting for the peer."""
        if self.state >= _CLOSING or transport.is_close_frame_sent:
            transport.disconnect()
            return
        self.close(CloseCode.CLOSE_PROTOCOL_ERROR, reason)
        transport.disconnect()

    # -- both lanes --------------------------------------------------------------------
    def _too_large(self, binary: bool) -> None:
        lane = self.lane
        if self.state == _OPEN:
            lane.counts[Counter.C_HOT_DENY_TOO_LARGE if binary else Counter.C_EXT_DENY_TOO_LARGE] += 1
            if not (binary and lane.hot_silent):
                self.send_error(ErrorCode.PAYLOAD_TOO_LARGE.name, f"message larger than {lane.max_frame_bytes} bytes")
        self.close(CloseCode.CLOSE_TOO_BIG, "message too big")

    def _rate_ok(self, now: float) -> bool:
        bucket = self.bucket
        if bucket is not None and not bucket.allow_at(now):
            return False
        shared = self.lane.bucket
        if shared is not None and not shared.allow_at(now):
            if bucket is not None:
                bucket.refund()
            return False
        return True

    def _should_notify(self, now: float) -> bool:
        if now - self.rl_notice_at >= NOTICE_INTERVAL:
            self.rl_notice_at = now
            return True
        return False

    # -- Ext Lane (text) ---------------------------------------------------------------
    def on_text(self, payload: bytes) -> None:
        lane = self.lane
        if len(payload) > lane.max_frame_bytes:
            self._too_large(False)
            return
        now = monotonic()
        if not self._rate_ok(now):
            lane.counts[Counter.C_EXT_DROP_RATE_LIMITED] += 1
            if self._should_notify(now):
                self.send_error(ErrorCode.RATE_LIMITED.name, "rate limit exceeded, message dropped")
            return
        if not utf8_valid(payload):
            lane.counts[Counter.C_DECODE_ERRORS] += 1
            lane.counts[Counter.C_EXT_DENY_BAD_REQUEST] += 1
            self.close(CloseCode.CLOSE_INVALID_UTF8, "invalid UTF-8")
            return
        lane.ext_entry(self, payload)

    # -- Hot Lane (binary) -------------------------------------------------------------
    def on_binary(self, payload: bytes) -> None:
        lane = self.lane
        if len(payload) > lane.max_frame_bytes:
            self._too_large(True)
            return
        now = monotonic()
        if not self._rate_ok(now):
            lane.counts[Counter.C_HOT_DROP_RATE_LIMITED] += 1
            if not lane.hot_silent and self._should_notify(now):
                self.send_error(ErrorCode.RATE_LIMITED.name, "rate limit exceeded, frame dropped")
            return
        status, svc, op, flags, seq = parse_header(payload)
        if status != HotHeaderStatus.HDR_OK:
            if status == HotHeaderStatus.HDR_SHORT:
                msg = "hot header needs 3 bytes"
            elif status == HotHeaderStatus.HDR_BAD_FLAGS:
                msg = "invalid hot header flags"
            else:
                msg = "SEQ_PRESENT without 4 seq bytes"
            self._hot_reject(Counter.C_HOT_DROP_BAD_REQUEST, ErrorCode.BAD_REQUEST, msg)
            return
        if not lane.hot_allow.allows(svc, op):
            self._hot_reject(Counter.C_HOT_DROP_NOT_ALLOWED, ErrorCode.NOT_ALLOWED,
                             "svc_id:opcode not in the tenant's hot_allowlist")
            return
        if lane.hot_requires_room and self.room_members is None:
            self._hot_reject(Counter.C_HOT_DROP_NO_ACTIVE_ROOM, ErrorCode.NOT_ALLOWED, "join a room first")
            return
        handler = lane.hot_handlers[svc]
        if handler is None:
            self._hot_reject(Counter.C_HOT_DROP_NOT_ALLOWED, ErrorCode.NOT_ALLOWED, "no service for this svc_id")
            return
        lane.counts[Counter.C_HOT_ALLOW_OK] += 1
        lane.hot_seq += 1
        if lane.hot_seq & HOT_SAMPLE_MASK:
            self._hot_service(handler, payload, op, flags)
        else:
            t0 = perf_counter()
            self._hot_service(handler, payload, op, flags)
            lane.hist_hot.observe(perf_counter() - t0)

    def _hot_reject(self, counter: int, code: ErrorCode, msg: str) -> None:
        lane = self.lane
        lane.counts[counter] += 1
        if not lane.hot_silent:
            self.send_error(code.name, msg)

    def _hot_service(self, handler, payload: bytes, op: int, flags: int) -> None:
        if handler is RELAY:
            self._relay(payload, flags)
        elif not handler(self, op, flags, payload[7 if flags & _SEQ else 3:]):
            return
        if flags & _ACK and flags & _SEQ:
            ack = bytes((payload[0], payload[1], _SEQ | HotFlag.HOT_IS_ACK)) + payload[3:7]
            self.enqueue(build_frame(Opcode.OP_BINARY, ack), False)

    def _relay(self, payload: bytes, flags: int) -> None:
        out = bytearray(build_frame(Opcode.OP_BINARY, payload))
        if flags & _ACK:
            out[len(out) - len(payload) + 2] = flags & ~_ACK
        frame = bytes(out)
        members = self.room_members
        if members is None:
            drops = 0 if self.enqueue(frame, True) else 1
        else:
            drops = broadcast(members, frame, True)
            if self.lane.relay_tap is not None:     # a broker: the room's members on other nodes
                self.lane.relay_tap(self, frame)
        if drops:
            self.lane.counts[Counter.C_EGRESS_DROPS] += drops


__all__ = ["LanePolicy", "Conn", "RELAY", "N_HOT_SERVICES"]
