"""The per-connection picows listener: frames in, lanes out.

Text frames go to the Ext Lane, binary frames to the Hot Lane. Fragmented messages
are reassembled up to the tenant's `max_frame_bytes` (the limit is on the whole
message). Pings are answered by picows itself; any inbound frame counts as activity.
"""
from picows import WSMsgType

from ..core import codes
from ..core.session import CLOSING, OPEN, Session
from ..policy import ext_lane, hot_lane
from ..policy.ext_lane import on_text
from ..policy.hot_lane import on_binary

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


class Connection(Session):
    __slots__ = ()

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        self.gateway.on_connected(self)

    def on_ws_disconnected(self, transport) -> None:
        self.gateway.on_disconnected(self)

    def on_ws_frame(self, transport, frame) -> None:
        self.seen = True
        mt = frame.msg_type
        if mt == _TEXT or mt == _BINARY:
            if self.frag is not None:
                self.close(1002, "new message inside a fragmented one")
                return
            if not frame.fin:
                self._start_fragments(frame, mt == _BINARY)
                return
            if self.state != OPEN:
                return
            if mt == _TEXT:
                on_text(self, frame.get_payload_as_bytes())
            else:
                on_binary(self, frame.get_payload_as_bytes())
        elif mt == _CONT:
            self._continue_fragments(frame)
        elif mt == _CLOSE:
            self._on_close_frame(transport, frame)

    # -- fragments -------------------------------------------------------------------
    def _start_fragments(self, frame, binary: bool) -> None:
        if frame.payload_size > self.tenant.max_frame_bytes:
            self._too_big(binary)
            return
        self.frag = bytearray(frame.get_payload_as_memoryview())
        self.frag_binary = binary

    def _continue_fragments(self, frame) -> None:
        buf = self.frag
        if buf is None:
            self.close(1002, "continuation without a message")
            return
        binary = self.frag_binary
        if len(buf) + frame.payload_size > self.tenant.max_frame_bytes:
            self.frag = None
            self._too_big(binary)
            return
        buf += frame.get_payload_as_memoryview()
        if not frame.fin:
            return
        self.frag = None
        if self.state != OPEN:
            return
        if binary:
            on_binary(self, bytes(buf))
        else:
            on_text(self, bytes(buf))

    def _too_big(self, binary: bool) -> None:
        # Same answer as an oversize single frame, without buffering the rest.
        if self.state != OPEN:
            self.close(codes.CLOSE_TOO_BIG, "message too big")
        elif binary:
            hot_lane.too_large(self)
        else:
            ext_lane.too_large(self)

    # -- closing ---------------------------------------------------------------------
    def _on_close_frame(self, transport, frame) -> None:
        if self.state != CLOSING and not transport.is_close_frame_sent:
            code = frame.get_close_code()
            if code == 0 or code == 1005:
                code = codes.CLOSE_NORMAL
            self.gateway.detach(self)
            transport.send_close(code)
        transport.disconnect()
