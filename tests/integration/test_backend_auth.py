"""SPEC section 10: `auth.mode: webhook`, decided by a real HTTP backend right after the upgrade."""
import asyncio
import json
import logging
import time

import pytest

from tests.client import PING, PONG, connect, error_of, expect_close, expect_silence, recv_json, request, run, send_json
from tests.integration.backend_app import BackendServer, free_port, sample, scrape


YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: hook
    auth: {{mode: webhook, url: "{auth}", timeout_ms: 300}}
    policy:
      ext_allowlist: ["sys:*", "room:*"]
      sessions: {{max_sessions_per_user: 1, on_exceed: deny}}
  - id: deadhook
    auth: {{mode: webhook, url: "http://127.0.0.1:{dead}/auth", timeout_ms: 300}}
"""


@pytest.fixture(scope="module")
def backend():
    server = BackendServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def g(gateway_factory, backend):
    return gateway_factory(YAML.format(auth=backend.url("/auth"), dead=free_port()))


def auth_requests(backend, ticket: str) -> list[dict]:
    return [json.loads(b) for b in backend.bodies("/auth") if json.loads(b)["ticket"] == ticket]


def test_accepted_ticket_greets_with_the_backends_user(g, backend):
    async def main():
        ws = await connect(g.url("hook", "ok:alice", sid="tab-a"))
        authed = await recv_json(ws)
        assert authed["type"] == "authed"
        assert authed["data"] == {"tenant": "hook", "user": "alice", "sid": "tab-a"}
        assert await request(ws, PING) == PONG
        await ws.close()
        ws = await connect(g.url("hook", "ok:alice2"))
        authed = await recv_json(ws)
        assert authed["data"]["user"] == "alice2" and authed["data"]["sid"]
        await ws.close()
    run(main())
    assert auth_requests(backend, "ok:alice") == [{"tenant": "hook", "ticket": "ok:alice", "ip": "127.0.0.1", "sid": "tab-a"}]
    assert auth_requests(backend, "ok:alice2")[0]["sid"] is None


REFUSED = {
    "status_403": ("hook", "deny"),
    "status_500": ("hook", "500"),
    "not_json": ("hook", "nonjson"),
    "exp_in_the_past": ("hook", "past:bob"),
    "no_user": ("hook", "nouser"),
    "timeout": ("hook", "hang"),
    "backend_down": ("deadhook", "ok:bob"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_is_auth_failed_then_4007(g, case):
    tenant, ticket = REFUSED[case]

    async def main():
        t0 = time.monotonic()
        ws = await connect(g.url(tenant, ticket))
        msg = await recv_json(ws)
        assert error_of(msg) == "AUTH_FAILED"
        assert await expect_close(ws) == 4007
        assert time.monotonic() - t0 < 1.5
    run(main())


def test_extra_fields_in_the_answer_are_ignored(g):
    """SPEC 10: any 2xx with {"user", "exp"?} accepts, whatever else the backend adds."""
    async def main():
        ws = await connect(g.url("hook", "extra:bob"))
        authed = await recv_json(ws)
        assert authed["type"] == "authed" and authed["data"]["user"] == "bob"
        await ws.close()
    run(main())


def test_one_refresh_at_a_time(g):
    async def main():
        ws = await connect(g.url("hook", "ok:rosa"))
        assert (await recv_json(ws))["type"] == "authed"
        await send_json(ws, {"v": 1, "svc": "sys", "type": "refresh", "seq": 1, "data": {"ticket": "slow:0.15:rosa"}})
        second = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "seq": 2, "data": {"ticket": "ok:rosa"}})
        assert error_of(second) == "RESOURCE_EXHAUSTED" and second["seq"] == 2
        assert (await recv_json(ws))["type"] == "refreshed"
        third = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": "ok:rosa"}})
        assert third["type"] == "refreshed"                    # free again once answered
        await ws.close()
    run(main())


def test_frames_before_the_answer_are_dropped(g):
    async def main():
        # the answer comes 0.1 s late, well inside the tenant's 300 ms (0.2 s timed out
        # under heavy machine load); the two frames are sent long before it
        ws = await connect(g.url("hook", "slow:0.1:carol"))
        await send_json(ws, PING)
        await send_json(ws, {"v": 1, "svc": "room", "type": "join", "room": "early"})
        authed = await recv_json(ws)
        assert authed["type"] == "authed" and authed["data"]["user"] == "carol"
        await expect_silence(ws, 0.2)
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())
    assert g.call(lambda: g.tenant("hook").rooms.get("early")) is None


def test_exp_from_the_backend_closes_4001(g):
    async def main():
        ws = await connect(g.url("hook", "exp:0.5:dave"))
        assert (await recv_json(ws))["type"] == "authed"
        t0 = time.monotonic()
        assert await expect_close(ws) == 4001
        assert 0.2 < time.monotonic() - t0 < 1.5
    run(main())


def test_session_limits_apply_once_the_user_is_known(g):
    async def main():
        first = await connect(g.url("hook", "ok:erin", sid="one"))
        assert (await recv_json(first))["type"] == "authed"
        second = await connect(g.url("hook", "ok:erin", sid="two"))
        assert error_of(await recv_json(second)) == "TOO_MANY_SESSIONS"
        assert await expect_close(second) == 4004
        # same sid: the reconnecting tab replaces the old one
        again = await connect(g.url("hook", "ok:erin", sid="one"))
        assert (await recv_json(again))["type"] == "authed"
        assert (await recv_json(first))["data"] == {"reason": "replaced"}
        assert await expect_close(first) == 4003
        await again.close()
    run(main())


def test_refresh_asks_the_webhook(g):
    async def main():
        ws = await connect(g.url("hook", "ok:gina"))
        assert (await recv_json(ws))["type"] == "authed"
        exp = time.time() + 60
        msg = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": "exp:60:gina"}})
        assert msg["type"] == "refreshed" and abs(msg["data"]["exp"] - exp) < 5
        msg = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "seq": 4, "data": {"ticket": "ok:mallory"}})
        assert error_of(msg) == "AUTH_FAILED" and msg["seq"] == 4
        msg = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": "deny"}})
        assert error_of(msg) == "AUTH_FAILED"
        # with ACK_REQUESTED, the ack follows the webhook's answer, as for any service
        msg = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "seq": 8, "flags": 4,
                                 "data": {"ticket": "exp:60:gina"}})
        assert msg["type"] == "refreshed"
        assert await recv_json(ws) == {"v": 1, "svc": "sys", "type": "ack", "seq": 8}
        msg = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "seq": 9, "flags": 4,
                                 "data": {"ticket": "deny"}})
        assert error_of(msg) == "AUTH_FAILED" and msg["seq"] == 9
        assert await request(ws, PING) == PONG          # no ack after a refusal
        await ws.close()
    run(main())
    user = g.call(lambda: [s.user for s in g.tenant("hook").sessions.all_sessions()])
    assert "mallory" not in user


def test_client_leaving_during_auth_leaves_nothing_behind(g):
    before = g.call(lambda: g.tenant("hook").sessions.count)

    async def main():
        ws = await connect(g.url("hook", "slow:0.2:hank"))
        await ws.close()
        await asyncio.sleep(0.4)
    run(main())
    assert g.call(lambda: g.tenant("hook").sessions.count) == before
    assert g.call(lambda: g.tenant("hook").sessions.sessions_of("hank")) == []


def test_ticket_never_logged_and_outcomes_counted(g, caplog):
    before = scrape(g)
    with caplog.at_level(logging.DEBUG, logger="wsprism"):
        async def main():
            ws = await connect(g.url("hook", "deny:SECRET-TICKET-1"))
            assert error_of(await recv_json(ws)) == "AUTH_FAILED"
            assert await expect_close(ws) == 4007
        run(main())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("wsprism")]
    assert any("auth webhook refused" in m for m in ours)
    assert not any("SECRET-TICKET-1" in m for m in ours)
    after = scrape(g)
    name = "wsprism_auth_webhook_requests_total"
    assert sample(after, name, tenant="hook", outcome="refused") == sample(before, name, tenant="hook", outcome="refused") + 1
    assert sample(after, name, tenant="deadhook", outcome="unreachable") >= 1
