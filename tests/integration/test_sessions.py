"""SPEC section 2: per-user session policy, exact under concurrent connects."""
import asyncio

import pytest

from tests.client import PING, connect, connect_authed, error_of, expect_close, recv_json, request, run

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: deny2
    policy:
      ext_allowlist: ["room:*", "sys:*"]
      presence_events: true
      sessions: {mode: multi, max_sessions_per_user: 2, on_exceed: deny}
  - id: kick2
    policy:
      ext_allowlist: ["room:*", "sys:*"]
      presence_events: true
      sessions: {mode: multi, max_sessions_per_user: 2, on_exceed: kick_oldest}
  - id: single
    policy:
      sessions: {mode: single, max_sessions_per_user: 1, on_exceed: kick_oldest}
  - id: deny4
    policy:
      sessions: {mode: multi, max_sessions_per_user: 4, on_exceed: deny}
  - id: kick4
    policy:
      sessions: {mode: multi, max_sessions_per_user: 4, on_exceed: kick_oldest}
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def live(g, tenant, user):
    return g.call(lambda: len(g.tenant(tenant).sessions.sessions_of(user)))


def test_deny_sends_only_error_then_4004(g):
    async def main():
        a, _ = await connect_authed(g.url("deny2", "dev:ann"))
        b, _ = await connect_authed(g.url("deny2", "dev:ann"))
        c = await connect(g.url("deny2", "dev:ann"))
        msg = await recv_json(c)                  # no `authed` before it
        assert error_of(msg) == "TOO_MANY_SESSIONS"
        assert await expect_close(c) == 4004
        assert live(g, "deny2", "ann") == 2
        # the first two are untouched
        assert (await request(a, PING))["type"] == "pong"
        assert (await request(b, PING))["type"] == "pong"
        await a.close(); await b.close()
    run(main())
    assert g.call(lambda: g.tenant("deny2").stats.handshake_rejections["too_many_sessions"]) >= 1


def test_kick_oldest_kicks_with_message_and_4003(g):
    async def main():
        a, _ = await connect_authed(g.url("kick2", "dev:kim"))
        assert (await request(a, {"v": 1, "svc": "room", "type": "join", "room": "r"}))["type"] == "joined"
        assert (await recv_json(a))["type"] == "user_joined"       # presence_events on: members include the joiner
        b, _ = await connect_authed(g.url("kick2", "dev:kim"))
        c, _ = await connect_authed(g.url("kick2", "dev:kim"))
        assert await recv_json(a) == {"v": 1, "svc": "sys", "type": "kicked", "data": {"reason": "max_sessions_exceeded"}}
        assert await expect_close(a) == 4003
        assert live(g, "kick2", "kim") == 2
        assert g.call(lambda: g.tenant("kick2").rooms.get("r")) is None   # kicked session left its room
        await b.close(); await c.close()
    run(main())


def test_single_mode_login_elsewhere_kicks_previous(g):
    async def main():
        a, _ = await connect_authed(g.url("single", "dev:sam"))
        b, _ = await connect_authed(g.url("single", "dev:sam"))
        assert (await recv_json(a))["data"]["reason"] == "max_sessions_exceeded"
        assert await expect_close(a) == 4003
        assert (await request(b, PING))["type"] == "pong"
        other, _ = await connect_authed(g.url("single", "dev:tom"))   # other users unaffected
        await other.close(); await b.close()
    run(main())


def test_reconnect_with_same_sid_never_counts_twice(g):
    async def main():
        a, _ = await connect_authed(g.url("deny2", "dev:pat", sid="tab1"))
        b, _ = await connect_authed(g.url("deny2", "dev:pat", sid="tab2"))
        a2, _ = await connect_authed(g.url("deny2", "dev:pat", sid="tab1"))   # replaces a, not denied
        assert (await recv_json(a))["data"]["reason"] == "replaced"
        assert await expect_close(a) == 4003
        assert live(g, "deny2", "pat") == 2
        await b.close(); await a2.close()
    run(main())


async def _storm(g, tenant, user, n=50):
    async def one():
        try:
            ws = await connect(g.url(tenant, f"dev:{user}"))
        except Exception:
            return None, None
        first = await recv_json(ws)
        return ws, first

    results = await asyncio.gather(*(one() for _ in range(n)))
    return [r for r in results if r[0] is not None]


def test_fifty_simultaneous_connects_deny_exact(g):
    async def main():
        results = await _storm(g, "deny4", "storm")
        authed = [ws for ws, first in results if first["type"] == "authed"]
        denied = [ws for ws, first in results if first["type"] == "error"]
        assert len(authed) == 4
        assert len(denied) == len(results) - 4
        for ws in denied:
            assert await expect_close(ws) == 4004
        assert live(g, "deny4", "storm") == 4
        for ws in authed:
            await ws.close()
    run(main())


def test_fifty_simultaneous_connects_kick_oldest_never_over_limit(g):
    async def main():
        results = await _storm(g, "kick4", "storm")
        assert all(first["type"] == "authed" for _, first in results)
        assert live(g, "kick4", "storm") == 4
        await asyncio.sleep(0.2)
        open_ = [ws for ws, _ in results if ws.close_code is None]
        # everyone kicked got 4003; the survivors are exactly the last four admitted
        for ws, _ in results:
            if ws not in open_:
                assert ws.close_code == 4003
        assert len(open_) == 4
        for ws in open_:
            await ws.close()
    run(main())
