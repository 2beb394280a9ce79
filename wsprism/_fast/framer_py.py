"""Per-connection frame handling: every session is the picows listener of its
connection (pure-Python twin of `framer_c`, which picows calls through its vtable).

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
- Ext Lane (text): strict UTF-8 or close 1007, then the envelope handler installed by
  the gateway (decode, allowlist, dispatch: wsprism/policy/ext_lane.py);
- Hot Lane (binary), entirely here: header, `hot_allowlist`, `hot_requires_active_room`,
  then service 1 (relay): the frame's exact bytes, ACK_REQUESTED cleared, built once and
  queued lossy for every member of the active room (or back to the sender alone with
  no active room), then the ack `[svc][op][0x05][seq]` when asked for. A frame failing
  a check is dropped; `hot_error_mode: sys_error` also tells the sender.

`LanePolicy` is one tenant's compiled lane settings and decision counters; sessions of
the tenant share it, so a reload changes it for everyone's next frame.
"""
import asyncio
import secrets
from time import monotonic, perf_counter

import msgspec
from picows import WSMsgType

from .fanout_py import (
    CLOSED, CLOSING, OP_BINARY, OP_TEXT, OPEN, OVER_SESSION, PENDING, Endpoint, broadcast, build_frame,
)
from .hotheader_py import (
    FLAG_ACK_REQUESTED, FLAG_SEQ_PRESENT, HDR_BAD_FLAGS, HDR_OK, HDR_SHORT, HotAllowlist, parse_header,
)
from .utf8_py import utf8_valid

# decision counters of LanePolicy (metrics: wsprism_policy_decisions_total and friends)
C_EXT_ALLOW = 0
C_EXT_NOT_ALLOWED = 1
C_EXT_RATE_LIMITED = 2
C_EXT_TOO_LARGE = 3
C_EXT_BAD_REQUEST = 4
C_EXT_UNKNOWN_SERVICE = 5
C_HOT_ALLOW = 6
C_HOT_NOT_ALLOWED = 7
C_HOT_RATE_LIMITED = 8
C_HOT_TOO_LARGE = 9
C_HOT_BAD_REQUEST = 10
C_HOT_NO_ACTIVE_ROOM = 11
C_DECODE_ERRORS = 12
C_EGRESS_DROPS = 13
N_COUNTERS = 14

RELAY_SVC = 1            # the built-in Hot Lane service (echo/relay)
HOT_SAMPLE_MASK = 63     # time 1 relayed frame in 64
NOTICE_INTERVAL = 1.0    # RATE_LIMITED notices: at most one a second per session
CLOSE_TIMEOUT = 1.0      # abort the socket if the peer has not completed the close by then

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_UNSET = msgspec.UNSET

_on_envelope = None      # set by install(): the Ext Lane after the first checks
_encode_error = None     # set by install(): builds a sys.error payload


def close_code_valid(code: int) -> bool:
    """A code a client may send in its close frame (RFC 6455 7.4): 1000-1003, 1007-1014
    (the IANA-registered ones a peer may send) and 3000-4999 (registered / private)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def install(on_envelope, encode_error) -> None:
    """Wire the layers above (the gateway does this once at import)."""
    global _on_envelope, _encode_error
    _on_envelope = on_envelope
    _encode_error = encode_error


class LanePolicy:
    """One tenant's lane settings, compiled at config load, and its decision counters."""

    __slots__ = ("max_frame_bytes", "hot_silent", "hot_requires_room", "hot_allow", "bucket",
                 "counts", "hot_seq", "hist_hot")

    def __init__(self) -> None:
        self.max_frame_bytes = 4096
        self.hot_silent = False
        self.hot_requires_room = True
        self.hot_allow = HotAllowlist()
        self.bucket = None
        self.counts = [0] * N_COUNTERS
        self.hot_seq = 0
        self.hist_hot = None

    def configure(self, max_frame_bytes: int, hot_silent: bool, hot_requires_room: bool,
                  hot_allow, bucket) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.hot_silent = hot_silent
        self.hot_requires_room = hot_requires_room
        self.hot_allow = hot_allow
        self.bucket = bucket

    def bump(self, idx: int, n: int = 1) -> None:
        self.counts[idx] += n

    def snapshot(self) -> list:
        return list(self.counts)


class Session(Endpoint):
    """One client session: identity, rooms, rate-limit state, and its connection."""

    __slots__ = (
        "gateway", "tenant", "lane", "user", "sid", "trace_id", "ip", "ticket_exp", "pending_ticket",
        "bucket", "rooms", "room_members", "rl_notice_at", "exp_handle", "close_handle", "slow_handle",
        "frag", "frag_binary", "n_traces", "seen", "idle_ticks", "registered", "refreshing",
    )

    def __init__(self, gateway, tenant, user, sid, ip, exp) -> None:
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
        self.rooms = {}              # joined rooms (name -> None), least recently (re)joined first
        self.room_members = None     # the active room's members, kept by the room table
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
        self.refreshing = False      # a webhook refresh is under way

    # -- identity ----------------------------------------------------------------------
    @property
    def active_room(self):
        return next(reversed(self.rooms), None)

    def next_trace_id(self) -> str:
        self.n_traces += 1
        return f"{self.trace_id}-{self.n_traces}"

    # -- sending -----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Reliable text frame (Ext Lane, sys)."""
        self.enqueue(build_frame(OP_TEXT, data), False)

    def send_binary(self, data) -> None:
        """Reliable binary frame."""
        self.enqueue(build_frame(OP_BINARY, data), False)

    def send_lossy(self, data) -> bool:
        """Lossy binary frame: dropped (False) while over the high-water mark."""
        return self.enqueue(build_frame(OP_BINARY, data), True)

    def send_error(self, code: str, msg: str, seq=_UNSET) -> None:
        self.send(_encode_error(code, msg, seq, self.next_trace_id()))

    # -- closing -----------------------------------------------------------------------
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Flush what is queued, send a close frame and leave registry and rooms now;
        abort the socket if the peer has not completed the close within CLOSE_TIMEOUT."""
        if self.state >= CLOSING:
            return
        if self.over:
            self.drop_queued()        # over its budget: what it could not hold is dropped
        self.flush()
        self.state = CLOSING
        self.release()
        self.gateway.detach(self)
        tr = self.transport
        if tr is None:
            return
        tr.send_close(code, reason.encode()[:120])
        self.close_handle = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, tr.disconnect, False)

    def overflow(self, reason: int) -> None:
        """Over the outbound budget (fanout): a slow consumer, closed 4005 at once and
        counted by reason, whatever the lane."""
        if self.state > OPEN:
            return
        stats = self.tenant.stats
        if reason == OVER_SESSION:
            stats.outbound_max_closes += 1
        else:
            stats.outbound_total_closes += 1
        self.drop_queued()
        self.close(4005, "slow consumer: outbound buffer over its limit")

    # -- picows callbacks --------------------------------------------------------------
    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        self.gateway.on_connected(self)

    def on_ws_disconnected(self, transport) -> None:
        self.release()
        self.gateway.on_disconnected(self)

    def pause_writing(self) -> None:
        self.paused = True
        if self.slow_handle is None and self.state <= OPEN:
            self.slow_handle = asyncio.get_running_loop().call_later(
                self.tenant.writer_send_timeout, self._slow_consumer)

    def resume_writing(self) -> None:
        self.paused = False
        if self.slow_handle is not None:
            self.slow_handle.cancel()
            self.slow_handle = None

    def _slow_consumer(self) -> None:
        self.slow_handle = None
        if self.paused and self.state <= OPEN:
            self.tenant.stats.writer_timeouts += 1
            self.close(4005, "slow consumer")

    def on_ws_frame(self, transport, frame) -> None:
        self.seen = True
        mt = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._protocol_error(transport, "reserved bits set without an extension")
            return
        if mt == _TEXT or mt == _BINARY:
            if self.frag is not None:
                self.close(1002, "new message inside a fragmented one")
                return
            if not frame.fin:
                self._start_fragments(frame, mt == _BINARY)
                return
            if self.state != OPEN:
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
        if self.state != OPEN:
            return
        if binary:
            self.on_binary(bytes(buf))
        else:
            self.on_text(bytes(buf))

    def _on_close_frame(self, transport, frame) -> None:
        """The client closes: answer with its code (1000 when it gave none), or 1002 when
        the code is one a client must not send (picows already refuses a 1-byte payload,
        an invalid UTF-8 reason and most unassigned codes below 3000)."""
        if self.state != CLOSING and not transport.is_close_frame_sent:
            if frame.payload_size < 2:
                code = 1000
            else:
                code = frame.get_close_code()
                if not close_code_valid(code):
                    self._protocol_error(transport, "invalid close code")
                    return
            if self.over:
                self.drop_queued()
            self.flush()
            self.release()
            self.gateway.detach(self)
            transport.send_close(code)
        transport.disconnect()
        if self.close_handle is None:   # a peer that stops reading cannot hold the socket
            self.close_handle = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, transport.disconnect, False)

    def _protocol_error(self, transport, reason: str) -> None:
        """RFC 6455 violation: close 1002 and hang up without waiting for the peer."""
        if self.state >= CLOSING or transport.is_close_frame_sent:
            transport.disconnect()
            return
        self.close(1002, reason)
        transport.disconnect()

    # -- both lanes --------------------------------------------------------------------
    def _too_large(self, binary: bool) -> None:
        lane = self.lane
        if self.state == OPEN:
            lane.counts[C_HOT_TOO_LARGE if binary else C_EXT_TOO_LARGE] += 1
            if not (binary and lane.hot_silent):
                self.send_error("PAYLOAD_TOO_LARGE", f"message larger than {lane.max_frame_bytes} bytes")
        self.close(1009, "message too big")

    def _rate_ok(self) -> bool:
        bucket = self.bucket
        if bucket is not None and not bucket.allow():
            return False
        shared = self.lane.bucket
        if shared is not None and not shared.allow():
            if bucket is not None:
                bucket.refund()
            return False
        return True

    def _should_notify(self) -> bool:
        now = monotonic()
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
        if not self._rate_ok():
            lane.counts[C_EXT_RATE_LIMITED] += 1
            if self._should_notify():
                self.send_error("RATE_LIMITED", "rate limit exceeded, message dropped")
            return
        if not utf8_valid(payload):
            lane.counts[C_DECODE_ERRORS] += 1
            lane.counts[C_EXT_BAD_REQUEST] += 1
            self.close(1007, "invalid UTF-8")
            return
        _on_envelope(self, payload)

    # -- Hot Lane (binary) -------------------------------------------------------------
    def on_binary(self, payload: bytes) -> None:
        lane = self.lane
        if len(payload) > lane.max_frame_bytes:
            self._too_large(True)
            return
        if not self._rate_ok():
            lane.counts[C_HOT_RATE_LIMITED] += 1
            if not lane.hot_silent and self._should_notify():
                self.send_error("RATE_LIMITED", "rate limit exceeded, frame dropped")
            return
        status, svc, op, flags, seq = parse_header(payload)
        if status != HDR_OK:
            if status == HDR_SHORT:
                msg = "hot header needs 3 bytes"
            elif status == HDR_BAD_FLAGS:
                msg = "invalid hot header flags"
            else:
                msg = "SEQ_PRESENT without 4 seq bytes"
            self._hot_reject(C_HOT_BAD_REQUEST, "BAD_REQUEST", msg)
            return
        if not lane.hot_allow.allows(svc, op):
            self._hot_reject(C_HOT_NOT_ALLOWED, "NOT_ALLOWED", "svc_id:opcode not in the tenant's hot_allowlist")
            return
        if lane.hot_requires_room and self.room_members is None:
            self._hot_reject(C_HOT_NO_ACTIVE_ROOM, "NOT_ALLOWED", "join a room first")
            return
        if svc != RELAY_SVC:
            self._hot_reject(C_HOT_NOT_ALLOWED, "NOT_ALLOWED", "no service for this svc_id")
            return
        lane.counts[C_HOT_ALLOW] += 1
        lane.hot_seq += 1
        if lane.hot_seq & HOT_SAMPLE_MASK:
            self._relay(payload, flags)
        else:
            t0 = perf_counter()
            self._relay(payload, flags)
            lane.hist_hot.observe(perf_counter() - t0)

    def _hot_reject(self, counter: int, code: str, msg: str) -> None:
        lane = self.lane
        lane.counts[counter] += 1
        if not lane.hot_silent:
            self.send_error(code, msg)

    def _relay(self, payload: bytes, flags: int) -> None:
        out = bytearray(build_frame(OP_BINARY, payload))
        if flags & FLAG_ACK_REQUESTED:
            out[len(out) - len(payload) + 2] = flags & ~FLAG_ACK_REQUESTED
        frame = bytes(out)
        members = self.room_members
        if members is None:
            drops = 0 if self.enqueue(frame, True) else 1
        else:
            drops = broadcast(members, frame, True)
        if drops:
            self.lane.counts[C_EGRESS_DROPS] += drops
        if flags & FLAG_ACK_REQUESTED and flags & FLAG_SEQ_PRESENT:
            ack = bytes((payload[0], payload[1], FLAG_SEQ_PRESENT | 0x04)) + payload[3:7]
            self.enqueue(build_frame(OP_BINARY, ack), False)


__all__ = [
    "LanePolicy", "Session", "install", "PENDING", "OPEN", "CLOSING", "CLOSED", "N_COUNTERS",
]
