"""The picows server on `gateway.listen`.

We build picows' protocol ourselves (through `loop.create_server`) instead of calling
`ws_create_server`, so the router can reach the connection's transport and its peer
address: picows' `WSUpgradeRequest` carries no peer address (PICOWS-NOTES). The
protocol is `_fast.Protocol`, picows' `WSProtocol` with every read seen first: frame
headers over the tenant's limit are refused before their payload is buffered, the read
buffer returns to its idle size after a large message, and a method other than GET is
answered by the router (405/404) instead of picows' 400 (wsprism/_fast/reader_py.py).
Pings are answered by the session (picows' auto-pong is off) so a ping with a reserved
bit set is refused like any other frame (RFC 6455, SPEC 14).
"""
import asyncio
import logging

from picows import WSAutoPingStrategy

from .._fast import Protocol

HANDSHAKE_TIMEOUT = 5.0        # seconds for a client to send its whole upgrade request
READ_BUFFER_INIT = 2048        # picows' per-connection read buffer (its minimum; grows for big frames, the reader shrinks it back)


class _ClientFaults(logging.Filter):
    """picows logs a client's malformed frames ("WS parser error") at ERROR. They are the
    client's fault, not the gateway's: they go to DEBUG, so no client can flood the log
    or trip an alert on ERROR lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("WS parser error"):
            _log.debug("client protocol error: %s", record.getMessage())
            return False
        return True


_log = logging.getLogger("wsprism.transport")
_picows_base = logging.getLogger("wsprism.picows")
_picows_base.addFilter(_ClientFaults())


class _PicowsLog(logging.LoggerAdapter):
    """picows' logger. An adapter (not a Logger) stops picows from creating a child
    logger per connection. picows asks it `isEnabledFor` twice and logs two INFO lines
    per connection (connected, disconnected) that are off in production: both go
    straight to the logger's own check instead of through the adapter's two calls."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.isEnabledFor = logger.isEnabledFor

    def info(self, msg, *args, **kwargs) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.log(logging.INFO, msg, *args, **kwargs)


_picows_logger = _PicowsLog(_picows_base)


TRANSPORT_FRAME_FLOOR = 1 << 20


def transport_frame_limit(config) -> int:
    """picows' own frame limit, a backstop only: twice the largest tenant limit, and at
    least 1 MiB. The reader refuses any frame over its tenant's limit from the header
    (PAYLOAD_TOO_LARGE + 1009) before picows sees it."""
    return max(TRANSPORT_FRAME_FLOOR, 2 * max(t.limits.max_frame_bytes for t in config.tenants) + 1024)


async def start_server(gateway, host: str, port: int, *, ssl=None, reuse_port: bool = False):
    loop = asyncio.get_running_loop()
    router = gateway.router
    other_method = router.other_method      # one bound method for every connection
    frame_limit = [None, 0]         # (config, its transport_frame_limit): computed once per reload

    def protocol_factory():
        proto = None
        config = gateway.config
        if config is not frame_limit[0]:
            frame_limit[0], frame_limit[1] = config, transport_frame_limit(config)

        def listener_factory(request):
            return router(request, proto)

        proto = Protocol(
            None, None, False, listener_factory, _picows_logger,
            True,                       # disconnect_on_exception
            HANDSHAKE_TIMEOUT,
            False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,   # our own liveness
            False,                      # auto pong: the session answers pings
            frame_limit[1],             # follows reloads
            None,
            READ_BUFFER_INIT,
            answer_method=other_method,
        )
        return proto

    tls = {"ssl": ssl, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT} if ssl is not None else {}
    return await loop.create_server(
        protocol_factory, host or None, port, reuse_port=reuse_port or None, backlog=4096, **tls,
    )
