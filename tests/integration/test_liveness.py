"""SPEC section 6 / issue 5: server pings, idle timeout (4002), half-open sockets,
slowloris handshakes, and slow consumers (4005). Uses the smallest allowed intervals."""
import asyncio
import json
import socket
import threading
import time

import pytest

from tests.client import (
    close_code_of, connect_authed, http_get, raw_upgrade, read_frames, recv_json, request, run, send_json,
)

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  ping_interval_ms: 5000
  idle_timeout_ms: 10000
  writer_send_timeout_ms: 200
  outbound_high_water_bytes: 65536
  outbound_max_bytes: 67108864      # the time rule, not the memory rule, closes the stuck reader here
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def test_idle_half_open_and_slowloris(g):
    """One run of ~15 s covers three clocks: an idle raw client gets TIMEOUT + 4002, a
    client answering pings stays, a handshake that never completes is cut at 5 s."""
    results = {}

    def idle_client():
        s = raw_upgrade(g.port, "tenant=acme&ticket=dev:idle")
        t0 = time.monotonic()
        frames = read_frames(s, 17)
        results["idle"] = (frames, time.monotonic() - t0)
        s.close()

    def slowloris():
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(b"GET /v1/ws?tenant=acme&ticket=dev HTTP/1.1\r\nHost: x\r\n")   # never finished
        t0 = time.monotonic()
        s.settimeout(8)
        try:
            data = s.recv(100)
        except OSError:
            data = b"?"
        results["slowloris"] = (data, time.monotonic() - t0)
        s.close()

    threads = [threading.Thread(target=idle_client), threading.Thread(target=slowloris)]
    for t in threads:
        t.start()

    async def live_client():
        ws, _ = await connect_authed(g.url(ticket="dev:alive"))   # the library answers pings
        t0 = time.monotonic()
        while time.monotonic() - t0 < 16:
            await asyncio.sleep(1)
        assert (await request(ws, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        await ws.close()
    run(live_client())
    for t in threads:
        t.join(20)

    frames, elapsed = results["idle"]
    ops = [op for op, _ in frames]
    assert 9 in ops, "server pings expected"
    texts = [json.loads(p) for op, p in frames if op == 1]
    assert texts[0]["type"] == "authed"
    assert texts[-1]["type"] == "error" and texts[-1]["data"]["code"] == "TIMEOUT"
    assert close_code_of(frames) == 4002
    assert 9.5 <= elapsed <= 16.5

    data, elapsed = results["slowloris"]
    assert data == b"" or data == b"?"
    assert 4.5 <= elapsed <= 7.0
    assert g.call(lambda: g.tenant().sessions.sessions_of("idle")) == []


def test_slow_consumer_closed_4005_others_unaffected(g):
    before = g.call(lambda: g.tenant().stats.writer_timeouts)
    stuck = raw_upgrade(g.port, "tenant=acme&ticket=dev:stuck", rcvbuf=4096)
    stuck.sendall(__import__("tests.client", fromlist=["mask_frame"]).mask_frame(
        1, b'{"v":1,"svc":"room","type":"join","room":"flood"}'))

    async def main():
        fast, _ = await connect_authed(g.url(ticket="dev:fast"), max_queue=None)
        assert (await request(fast, {"v": 1, "svc": "room", "type": "join", "room": "flood"}))["type"] == "joined"
        sender, _ = await connect_authed(g.url(ticket="dev:sender"), max_queue=None)
        assert (await request(sender, {"v": 1, "svc": "room", "type": "join", "room": "flood"}))["type"] == "joined"
        blob = "x" * 1000
        N = 8000          # 8 MB: more than the kernel's socket buffers (tcp_wmem max 4 MB) can hide

        async def drain(ws):
            got = 0
            while got < N:
                if (await recv_json(ws, timeout=5)).get("type") == "msg":
                    got += 1
            return got

        t0 = time.monotonic()
        readers = [asyncio.create_task(drain(fast)), asyncio.create_task(drain(sender))]
        for i in range(N):
            await send_json(sender, {"v": 1, "svc": "chat", "type": "send", "room": "flood", "data": {"msg": blob}})
            if i % 20 == 0:
                await asyncio.sleep(0)
        # the fast members receive everything, promptly, while the stuck one is dropped
        assert await asyncio.gather(*readers) == [N, N]
        assert time.monotonic() - t0 < 20
        await asyncio.sleep(1.2)
        await sender.close()
        await fast.close()
    run(main())
    assert g.call(lambda: g.tenant().stats.writer_timeouts) == before + 1
    assert g.call(lambda: g.tenant().sessions.sessions_of("stuck")) == []
    room = g.call(lambda: g.tenant().rooms.get("flood"))
    assert room is None or all(s.user != "stuck" for s in room.members)
    stuck.close()
    assert http_get(g.port, "/healthz")[0] == 200
