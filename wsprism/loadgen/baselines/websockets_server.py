"""The same bare server written with the `websockets` library (asyncio API, on uvloop).

Behaviour matches picows_server.py: fixed `authed` after the upgrade, fixed `pong` and
`joined` replies, every other message (text or binary) broadcast as is to every open
connection with `websockets.broadcast` (which never waits for slow readers). Compression
is off, as in the gateway and the picows baseline.

    python wsprism/loadgen/baselines/websockets_server.py --port 9002
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

AUTHED = '{"v":1,"svc":"sys","type":"authed","data":{"tenant":"bench","user":"bench","sid":"s"}}'
PONG = '{"v":1,"svc":"sys","type":"pong"}'
JOINED = '{"v":1,"svc":"sys","type":"joined","room":"bench"}'
PING_HEAD = '{"v":1,"svc":"sys","type":"ping"'
JOIN_HEAD = '{"v":1,"svc":"room","type":"join"'

CONNS: set = set()


async def handler(ws) -> None:
    CONNS.add(ws)
    try:
        await ws.send(AUTHED)
        async for msg in ws:
            if isinstance(msg, str):
                if msg.startswith(PING_HEAD):
                    await ws.send(PONG)
                    continue
                if msg.startswith(JOIN_HEAD):
                    await ws.send(JOINED)
                    continue
            broadcast(CONNS, msg)
    except ConnectionClosed:
        pass
    finally:
        CONNS.discard(ws)


async def run(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, host, port, compression=None, max_size=1 << 20,
                     ping_interval=None, backlog=4096):
        print(f"websockets baseline listening on {host}:{port}", flush=True)
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    uvloop.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
