"""The inbound side of a connection: what the gateway reads, before picows parses it
(pure-Python twin of `reader_c`).

picows buffers a frame until all of it has arrived and only then calls the listener,
so the listener alone cannot refuse a frame before its payload is held in memory, and
picows' read buffer, once grown for a large frame, never shrinks. `Protocol`
subclasses picows' `WSProtocol` and sits on the two calls every read goes through
(`get_buffer`, then `buffer_updated(n)` with the `n` new bytes), so each read is seen
before picows takes it:

- before the upgrade: the request line. A method other than GET gets the router's
  answer (405 with `Allow: GET`) instead of picows' 400 "Unsupported HTTP method";
- after it, every frame header (`FrameGuard`): a data frame whose announced length,
  or a fragmented message whose announced fragments add up to more than the tenant's
  `max_frame_bytes`, is refused from its header (SPEC 5): the bytes before that header
  go on to picows (the frames they complete are handled first), the header and
  everything after it never do; the session answers PAYLOAD_TOO_LARGE + 1009 and the
  socket stops being read. Control frames are left to picows (it refuses those over
  125 bytes from their header itself);
- the read buffer back to its idle size once a large message is gone and the
  connection has been quiet for `SHRINK_AFTER` (a client that keeps streaming keeps its
  buffer while it streams); compiled module only: picows' `MemoryBuffer` is reachable
  from C, not from Python, so with the twins the buffer keeps its peak;
- fairness: one read takes at most `READ_SLICE` bytes, and a connection that has read
  that much stops being read until the next loop turn (pause_reading, then
  resume_reading from call_soon), so a flooding client cannot fill a whole turn with
  its frames and hold up everyone else (and /healthz) while the others wait.

The guard follows the stream with its own small state (the current header, the bytes
of payload still to come, the running size of a fragmented message); it never looks at
a payload byte, so its cost is a few operations per frame and per read.
"""
import asyncio

from picows.picows import WSProtocol

from .codes_py import Opcode, SessionState
from .framer_py import Conn

_OPEN = SessionState.S_OPEN
_get_buffer = WSProtocol.get_buffer
_buffer_updated = WSProtocol.buffer_updated

_OP_CONT, _OP_TEXT, _OP_BINARY = (int(o) for o in (Opcode.OP_CONT, Opcode.OP_TEXT, Opcode.OP_BINARY))
HEAD_MAX = 65536       # bytes of an unfinished HTTP request kept for the method check
READ_SLICE = 16384     # bytes one connection reads before it yields a loop turn to the others
SHRINK_AFTER = 0.1     # seconds of quiet after which a grown read buffer is shrunk (compiled)


class FrameGuard:
    """Frame boundaries of one client stream, followed header by header.

    `feed(data, limit)` takes the next bytes of the stream and returns how many of them
    may reach the parser: all of them, or, when a data frame's header announces more
    than `limit` (alone, or with the fragments of its message before it), the bytes
    before that header (0 when the header began in an earlier chunk). From then on
    `refused` is set (`refused_binary` says which lane) and every feed returns 0.
    `held` is the number of bytes of the frame under way seen so far.
    """

    __slots__ = ("_hdr", "hdr_got", "hdr_need", "remaining", "in_msg", "msg_binary", "msg_total",
                 "held", "refused", "refused_binary")

    def __init__(self) -> None:
        self._hdr = bytearray(14)
        self.hdr_got = 0
        self.hdr_need = 2
        self.remaining = 0
        self.in_msg = False
        self.msg_binary = False
        self.msg_total = 0
        self.held = 0
        self.refused = False
        self.refused_binary = False

    def feed(self, data, limit: int) -> int:
        if self.refused:
            return 0
        n = len(data)
        i = 0
        start = 0                      # where the header under way began in this chunk
        hdr = self._hdr
        while i < n:
            remaining = self.remaining
            if remaining:
                take = min(remaining, n - i)
                i += take
                self.remaining = remaining - take
                self.held = 0 if take == remaining else self.held + take
                continue
            got = self.hdr_got
            if got == 0:
                start = i
            hdr[got] = data[i]
            got += 1
            i += 1
            self.held += 1
            if got == 2:
                flag = hdr[1] & 0x7F
                self.hdr_need = 2 + (2 if flag == 126 else 8 if flag == 127 else 0) + (4 if hdr[1] & 0x80 else 0)
            if got < 2 or got < self.hdr_need:
                self.hdr_got = got
                continue
            self.hdr_got = 0
            flag = hdr[1] & 0x7F
            if flag == 126:
                length = (hdr[2] << 8) | hdr[3]
            elif flag == 127:
                length = int.from_bytes(hdr[2:10], "big")
            else:
                length = flag
            op = hdr[0] & 0x0F
            fin = hdr[0] & 0x80
            if op == _OP_TEXT or op == _OP_BINARY:
                binary = op == _OP_BINARY
                if length > limit:
                    return self._refuse(binary, start)
                self.in_msg = not fin
                self.msg_binary = binary
                self.msg_total = length
            elif op == _OP_CONT:
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

    def _refuse(self, binary: bool, start: int) -> int:
        self.refused = True
        self.refused_binary = binary
        return start


class Reader:
    """What one connection's `Protocol` keeps: the request while it arrives, then the
    session and its frame guard."""

    __slots__ = ("answer_method", "head", "session", "guard", "dropping", "turn_bytes")

    def __init__(self, proto, answer_method) -> None:
        self.answer_method = answer_method   # (method, target) -> WSUpgradeResponse, or None
        self.head = bytearray()  # the HTTP request so far; None once upgraded or answered
        self.session = None      # the listener, once upgraded (a session: a framer Conn)
        self.guard = FrameGuard()
        self.dropping = False    # refused: nothing more goes to picows
        self.turn_bytes = 0      # read since this connection last yielded a turn

    @property
    def capacity(self):
        """picows' read buffer capacity (None: not reachable from Python)."""
        return None

    def _updated(self, proto, view, n: int) -> None:
        if self.dropping:
            return
        session = self.session
        if session is None:
            self._http(proto, view, n)
            return
        guard = self.guard
        k = guard.feed(view[:n], session.lane.max_frame_bytes)
        if k:
            _buffer_updated(proto, k)
        if guard.refused:
            self._refuse(proto)
            return
        self.turn_bytes += n
        if self.turn_bytes >= READ_SLICE:
            self._yield_turn(proto)

    def _yield_turn(self, proto) -> None:
        self.turn_bytes = 0
        tr = proto.transport.underlying_transport
        tr.pause_reading()
        asyncio.get_running_loop().call_soon(self._resume, tr)

    def _resume(self, tr) -> None:
        if not self.dropping and not tr.is_closing():
            tr.resume_reading()

    def _http(self, proto, view, n: int) -> None:
        head = self.head
        if head is None:                 # answered without an upgrade, or not a session
            _buffer_updated(proto, n)
            return
        if len(head) < HEAD_MAX:
            head += view[:n]
            if self.answer_method is not None and self._other_method(proto, head):
                return
        _buffer_updated(proto, n)
        listener = proto.listener
        if listener is None:
            return
        # upgraded during this read: what followed the request was frames, already parsed
        self.head = None
        if not isinstance(listener, Conn):
            return
        self.session = listener
        end = head.find(b"\r\n\r\n")
        guard = self.guard
        guard.feed(head[end + 4:], listener.lane.max_frame_bytes)
        if guard.refused:
            self._refuse(proto)

    def _other_method(self, proto, head: bytearray) -> bool:
        """A request line whose method is not GET: answer it here and hang up."""
        if head.startswith(b"GET "):        # the usual request: nothing to look at
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

    def _refuse(self, proto) -> None:
        """A frame over the limit: the session answers (PAYLOAD_TOO_LARGE, 1009) and the
        socket is no longer read; its close timer aborts it if the peer lingers."""
        self.dropping = True
        session = self.session
        if session.state <= _OPEN:       # OPEN or PENDING: tell it
            session._too_large(self.guard.refused_binary)
        proto.transport.underlying_transport.pause_reading()


class Protocol(WSProtocol):
    """picows' server protocol with every read seen first (module docstring)."""

    __slots__ = ("_view", "_reader")

    def __init__(self, *args, answer_method=None) -> None:
        WSProtocol.__init__(self, *args)
        self._view = None
        self._reader = Reader(self, answer_method)

    def connection_made(self, transport) -> None:
        """picows' own. Its `connection_made` sets TCP_NODELAY and TCP_QUICKACK, then reads
        four socket options (and the peer and socket names) for an INFO line it builds
        even when INFO is off. On uvloop each socket option call makes and detaches a
        `socket.socket` (uvloop's `PseudoSocket`): about 40 k instructions per connect,
        more than all the gateway's own handshake work. The compiled module hands picows'
        `connection_made` a shim while picows' logger has INFO off: the two options set
        go straight to `setsockopt(2)`, the reads for the line are skipped, and the
        WSTransport it made gets the real transport back (a field only C can write)."""
        WSProtocol.connection_made(self, transport)

    def get_buffer(self, size_hint):
        view = _get_buffer(self, size_hint)
        if len(view) > READ_SLICE:          # one read takes at most a slice
            view = view[:READ_SLICE]
        self._view = view
        return view

    def buffer_updated(self, nbytes) -> None:
        view, self._view = self._view, None     # an idle connection holds no view (312 bytes)
        self._reader._updated(self, view, nbytes)


def reader_of(proto) -> Reader:
    """The Reader of a gateway connection (tests and diagnostics)."""
    return proto._reader


__all__ = ["FrameGuard", "Protocol", "Reader", "reader_of"]
