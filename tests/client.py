"""Small async WebSocket client helpers for the tests (over the `websockets` library)."""
import asyncio
import json
import socket

import websockets

TIMEOUT = 3.0


async def connect(url: str, **kw):
    return await websockets.connect(url, open_timeout=TIMEOUT, close_timeout=2, max_size=None, **kw)


async def connect_authed(url: str, **kw):
    """Connect and consume the `authed` greeting; returns (ws, authed message)."""
    ws = await connect(url, **kw)
    msg = await recv_json(ws)
    assert msg["type"] == "authed", msg
    return ws, msg


async def recv(ws, timeout: float = TIMEOUT):
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    raw = await recv(ws, timeout)
    assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
    return json.loads(raw)


async def send_json(ws, obj) -> None:
    await ws.send(json.dumps(obj))


async def request(ws, obj, timeout: float = TIMEOUT) -> dict:
    await send_json(ws, obj)
    return await recv_json(ws, timeout)


async def expect_close(ws, timeout: float = TIMEOUT) -> int | None:
    """Read until the server closes; return the close code it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def expect_silence(ws, timeout: float = 0.3) -> None:
    """Nothing arrives for `timeout` seconds (and the connection stays open)."""
    try:
        msg = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg!r}")


def error_of(msg: dict) -> str:
    assert msg["svc"] == "sys" and msg["type"] == "error", msg
    assert set(msg) <= {"v", "svc", "type", "data", "seq", "trace_id"}, msg
    assert isinstance(msg["trace_id"], str) and msg["trace_id"], msg
    assert isinstance(msg["data"]["msg"], str), msg
    return msg["data"]["code"]


def http_get(port: int, target: str, headers: dict | None = None, timeout: float = TIMEOUT) -> tuple[int, dict, bytes]:
    """A raw HTTP/1.1 GET (no client library in between): (status, headers, body)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in hdr_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body


UPGRADE_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def run(coro):
    return asyncio.run(coro)
