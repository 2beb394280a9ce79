"""Small async WebSocket client helpers for the tests (over the `websockets` library)."""
import asyncio
import json
import socket
import time

import websockets

TIMEOUT = 3.0

PING = {"v": 1, "svc": "sys", "type": "ping"}
PONG = {"v": 1, "svc": "sys", "type": "pong"}


def joined(room: str) -> dict:
    return {"v": 1, "svc": "sys", "type": "joined", "room": room}


def left(room: str) -> dict:
    return {"v": 1, "svc": "sys", "type": "left", "room": room}


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


async def until(ws, pred, timeout: float = 3.0) -> dict:
    """The first text message `pred` accepts (others, and binary frames, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        raw = await recv(ws, max(0.05, deadline - time.monotonic()))
        if isinstance(raw, bytes):
            continue
        msg = json.loads(raw)
        if pred(msg):
            return msg


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
    return http_raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode(), timeout)


def http_raw(port: int, request: bytes, timeout: float = TIMEOUT) -> tuple[int, dict, bytes]:
    """Send these exact request bytes; (status, lower-cased headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
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


# --- raw sockets: clients that misbehave on purpose ----------------------------------

def raw_upgrade(port: int, query: str, rcvbuf: int | None = None, timeout: float = TIMEOUT) -> socket.socket:
    """Open a WebSocket with a bare socket (no library answering pings or reading for us).
    Returns the socket positioned right after the 101 response headers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    lines = [f"GET /v1/ws?{query} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in UPGRADE_HEADERS.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed during upgrade")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def read_frames(s: socket.socket, timeout: float) -> list[tuple[int, bytes]]:
    """Read server frames (opcode, payload) until the socket closes or `timeout` passes."""
    import time

    s.settimeout(0.2)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    return parse_frames(buf)[0]


def parse_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete server frames (opcode, payload) at the start of `buf`, and the rest."""
    frames = []
    while len(buf) >= 2:
        op, n = buf[0] & 0x0F, buf[1] & 0x7F
        pos = 2
        if n == 126:
            n, pos = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, pos = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < pos + n:
            break
        frames.append((op, buf[pos:pos + n]))
        buf = buf[pos + n:]
    return frames, buf


def mask_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (masked, as RFC 6455 requires); fast enough for 10 MB payloads."""
    import os as _os

    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = _os.urandom(4)
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key * (n // 4 + 1), "little")
              ).to_bytes(n + 4, "little")[:n] if n else b""
    return head + key + masked


def close_code_of(frames) -> int | None:
    for op, payload in frames:
        if op == 8 and len(payload) >= 2:
            return int.from_bytes(payload[:2], "big")
    return None
