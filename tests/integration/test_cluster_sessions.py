"""Session admission across gateways sharing a Redis, and what an outage does to it
(SPEC 11): two gateways in this process (each its own loop thread and broker node)."""
import asyncio
import time

import pytest

from tests.client import connect, connect_authed, expect_close, recv_json

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
broker: {{url: "{url}", prefix: "{prefix}", lease_ms: 2000}}
tenants:
  - id: acme
    limits: {{max_sessions_total: {total}}}
    policy:
      ext_allowlist: ["room:*", "sys:*"]
      sessions: {{max_sessions_per_user: {limit}, on_exceed: {on_exceed}}}
"""


def pair(gateway_factory, url, prefix, limit=1, on_exceed="deny", total=0):
    text = YAML.format(url=url, prefix=prefix, limit=limit, on_exceed=on_exceed, total=total)
    a, b = gateway_factory(text), gateway_factory(text)
    wait(lambda: a.gw.cluster.broker.up and b.gw.cluster.broker.up)
    return a, b


def wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


async def refused(url) -> tuple[str, int]:
    ws = await connect(url)
    msg = await recv_json(ws)
    assert msg["type"] == "error", msg
    return msg["data"]["code"], await expect_close(ws)


def test_deny_and_replacement_across_gateways(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cs1", limit=1)

    async def main():
        ws, authed = await connect_authed(a.url(ticket="dev:alice", sid="tab1"))
        # the same user on the other gateway: denied (4004), no `authed`
        assert await refused(b.url(ticket="dev:alice", sid="tab2")) == ("TOO_MANY_SESSIONS", 4004)
        # the same sid on the other gateway replaces the first (kicked, 4003)
        ws2, _ = await connect_authed(b.url(ticket="dev:alice", sid="tab1"))
        kicked = await recv_json(ws)
        assert kicked["data"] == {"reason": "replaced"}
        assert await expect_close(ws) == 4003
        await ws2.close()
        # once it is gone, the user may connect anywhere again
        await asyncio.sleep(0.1)
        ws3, _ = await connect_authed(a.url(ticket="dev:alice", sid="tab3"))
        await ws3.close()

    asyncio.run(main())


def test_kick_oldest_across_gateways(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cs2", limit=2, on_exceed="kick_oldest")

    async def main():
        first, _ = await connect_authed(a.url(ticket="dev:bob", sid="s1"))
        second, _ = await connect_authed(b.url(ticket="dev:bob", sid="s2"))
        third, _ = await connect_authed(b.url(ticket="dev:bob", sid="s3"))
        msg = await recv_json(first)
        assert msg["data"] == {"reason": "max_sessions_exceeded"}
        assert await expect_close(first) == 4003
        for ws in (second, third):
            await ws.close()

    asyncio.run(main())


def test_max_sessions_total_across_gateways(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cs3", limit=4, total=2)

    async def main():
        one, _ = await connect_authed(a.url(ticket="dev:u1"))
        two, _ = await connect_authed(b.url(ticket="dev:u2"))
        # this gateway holds one session, the tenant two: refused after the upgrade
        assert await refused(a.url(ticket="dev:u3")) == ("RESOURCE_EXHAUSTED", 1013)
        assert a.tenant().stats.handshake_rejections["tenant_full"] == 1
        await one.close()
        await asyncio.sleep(0.1)
        three, _ = await connect_authed(b.url(ticket="dev:u3"))
        for ws in (two, three):
            await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("on_exceed", ["deny", "kick_oldest"])
def test_admissions_during_an_outage_are_reconciled(gateway_factory, redis_factory, on_exceed):
    """Redis dies: each gateway admits alice on its own counts (limit 1), so she has two
    sessions. Redis comes back empty: both re-register, and the policy undoes the excess:
    deny closes the one registered second (4004), kick_oldest kicks the older (4003)."""
    r = redis_factory()
    a, b = pair(gateway_factory, r.url, "cs4", limit=1, on_exceed=on_exceed)

    async def main():
        r.kill()
        wait(lambda: not a.gw.cluster.broker.up and not b.gw.cluster.broker.up)
        on_a, _ = await connect_authed(a.url(ticket="dev:alice", sid="x"))
        await asyncio.sleep(0.05)
        on_b, _ = await connect_authed(b.url(ticket="dev:alice", sid="y"))
        carol, _ = await connect_authed(a.url(ticket="dev:carol"))      # within her limit
        r.start()
        t0 = time.monotonic()

        async def fate(ws):
            try:
                msg = await recv_json(ws, 6)
            except asyncio.TimeoutError:
                return None
            took = time.monotonic() - t0
            return msg["data"].get("code") or msg["data"].get("reason"), await expect_close(ws), took

        results = await asyncio.gather(fate(on_a), fate(on_b))
        undone = [x[:2] for x in results if x is not None]
        took = max(x[2] for x in results if x is not None)
        assert len(undone) == 1, results
        if on_exceed == "deny":
            assert undone[0] == ("TOO_MANY_SESSIONS", 4004)
        else:
            assert undone[0] == ("max_sessions_exceeded", 4003)
        assert took < 4                  # reconnect (backoff <= 2 s) and re-register
        assert r.cmd("ZCARD", "cs4:{acme}:u:alice") == 1
        assert r.cmd("GET", "cs4:{acme}:n") == "2"                     # alice once, carol
        stats = a.gw.cluster.broker.stats
        assert stats.reconciliations["ok"] >= 2
        await carol.close()
        for ws in (on_a, on_b):
            await ws.close()

    asyncio.run(main())


def test_broker_down_admits_locally_and_nothing_waits(gateway_factory, redis_factory):
    r = redis_factory()
    a, b = pair(gateway_factory, r.url, "cs5", limit=1)

    async def main():
        ws, _ = await connect_authed(a.url(ticket="dev:dan"))
        r.kill()
        wait(lambda: not a.gw.cluster.broker.up)
        # existing sessions keep working, new ones are admitted against local counts at once
        t0 = time.monotonic()
        other, _ = await connect_authed(a.url(ticket="dev:eve"))
        assert time.monotonic() - t0 < 0.5
        assert await refused(a.url(ticket="dev:dan")) == ("TOO_MANY_SESSIONS", 4004)
        pong = await asyncio.wait_for(_ping(ws), 2)
        assert pong["type"] == "pong"
        from tests.client import http_get

        status, _, body = http_get(a.port, "/readyz")
        assert status == 200
        _, _, metrics = http_get(a.port, "/metrics")
        assert b"wsprism_broker_up 0.0" in metrics
        for w in (ws, other):
            await w.close()

    asyncio.run(main())


async def _ping(ws):
    from tests.client import request

    return await request(ws, {"v": 1, "svc": "sys", "type": "ping"})
