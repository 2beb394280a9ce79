"""Bare picows server: the transport work alone, as the yardstick for the gateway.

It does what the gateway's transport must do and nothing of the gateway's own work
(no envelope decoding, policy, rooms or metrics):

- after the upgrade it sends a fixed `authed` message, so the bench client works unchanged;
- a text frame starting like `sys:ping` gets a fixed `pong`, one like `room:join` a fixed
  `joined` (both are echo-sized work);
- any other text frame (chat) and every binary frame (Hot Lane) is sent as is to every
  connection, the sender's included ("broadcast to all connected"). Binary frames are
  skipped for a connection whose socket buffer is over the high-water mark, as the
  gateway's lossy lane does; text frames are always queued;
- a close frame is answered and the socket closed.

    python wsprism/loadgen/baselines/picows_server.py --port 9001
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal

from picows import WSListener, WSMsgType, WSUpgradeRequest, ws_create_server

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE

AUTHED = b'{"v":1,"svc":"sys","type":"authed","data":{"tenant":"bench","user":"bench","sid":"s"}}'
PONG = b'{"v":1,"svc":"sys","type":"pong"}'
JOINED = b'{"v":1,"svc":"sys","type":"joined","room":"bench"}'
PING_HEAD = b'{"v":1,"svc":"sys","type":"ping"'
JOIN_HEAD = b'{"v":1,"svc":"room","type":"join"'
HIGH_WATER = 1 << 20

CONNS: dict = {}  # transport -> listener, in connection order


class Conn(WSListener):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def on_ws_connected(self, transport) -> None:
        transport.underlying_transport.set_write_buffer_limits(high=HIGH_WATER)
        CONNS[transport] = self
        transport.send(TEXT, AUTHED)

    def on_ws_disconnected(self, transport) -> None:
        CONNS.pop(transport, None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def on_ws_frame(self, transport, frame) -> None:
        mt = frame.msg_type
        if mt == BINARY:
            payload = frame.get_payload_as_bytes()
            for t, c in list(CONNS.items()):
                if not c.paused:
                    t.send(BINARY, payload)
        elif mt == TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(PING_HEAD):
                transport.send(TEXT, PONG)
            elif payload.startswith(JOIN_HEAD):
                transport.send(TEXT, JOINED)
            else:
                for t in list(CONNS):
                    t.send(TEXT, payload)
        elif mt == CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def listener_factory(request: WSUpgradeRequest):
    return Conn()


async def serve(host: str, port: int, read_buffer: int) -> None:
    server = await ws_create_server(listener_factory, host, port, read_buffer_init_size=read_buffer,
                                    websocket_handshake_timeout=5, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"picows baseline listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--read-buffer", type=int, default=16 * 1024,
                    help="picows read_buffer_init_size per connection (picows default 16 KiB)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    uvloop.run(serve(args.host, args.port, args.read_buffer))


if __name__ == "__main__":
    main()
