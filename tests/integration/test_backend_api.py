"""SPEC section 10: the server API for backends, on its own listener, over real HTTP."""
import asyncio
import json
import os

import aiohttp
import pytest

from tests.client import connect_authed, expect_close, expect_silence, recv_json, request, run
from tests.integration.backend_app import sample, scrape

ACME_KEY = "acme-0123456789abcdef0123456789"
BANK_KEY = "bank-fedcba9876543210fedcba9876"
ENV = "WSPRISM_TEST_ACME_API_KEY"

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  api:
    listen: "127.0.0.1:0"
    keys:
      acme: {{env: {env}}}
      bank: {{file: "{bank_file}"}}
tenants:
  - id: acme
    policy: {{ext_allowlist: ["room:*", "sys:*"]}}
  - id: bank
    policy: {{ext_allowlist: ["room:*", "sys:*"]}}
  - id: nokey
"""


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "bank.key"
    path.write_text(BANK_KEY + "\n")
    return path


@pytest.fixture(scope="module")
def g(gateway_factory, bank_file):
    os.environ[ENV] = ACME_KEY
    try:
        return gateway_factory(YAML.format(env=ENV, bank_file=bank_file))
    finally:
        del os.environ[ENV]          # read at start: the running gateway keeps it


def call(g, method: str, path: str, body=None, key: str | None = ACME_KEY, raw: bytes | None = None,
         headers: dict | None = None, scheme: str = "http", ssl=None) -> tuple[int, dict]:
    async def main():
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with aiohttp.ClientSession() as s:
            url = f"{scheme}://127.0.0.1:{g.gw.api.port}{path}"
            async with s.request(method, url, data=data, headers=hdrs, ssl=ssl) as resp:
                assert resp.content_type == "application/json"
                return resp.status, await resp.json()
    return asyncio.run(main())


JOIN = {"v": 1, "svc": "room", "type": "join", "room": "match:1"}


def test_publish_reaches_room_members_only(g):
    async def main():
        a, _ = await connect_authed(g.url("acme", "dev:ann"))
        b, _ = await connect_authed(g.url("acme", "dev:bob"))
        c, _ = await connect_authed(g.url("acme", "dev:cid"))
        for ws in (a, b):
            assert (await request(ws, JOIN))["type"] == "joined"
        body = {"tenant": "acme", "room": "match:1", "svc": "match", "type": "state", "data": {"turn": "bob", "n": [1, 2]}}
        status, answer = await asyncio.to_thread(call, g, "POST", "/v1/publish", body)
        assert (status, answer) == (200, {"delivered": 2})
        expected = {"v": 1, "svc": "match", "type": "state", "room": "match:1", "data": {"turn": "bob", "n": [1, 2]}}
        assert await recv_json(a) == expected
        assert await recv_json(b) == expected
        await expect_silence(c, 0.2)
        body = {"tenant": "acme", "room": "match:1", "svc": "match", "type": "ping"}
        assert await asyncio.to_thread(call, g, "POST", "/v1/publish", body) == (200, {"delivered": 2})
        assert await recv_json(a) == {"v": 1, "svc": "match", "type": "ping", "room": "match:1"}
        body = {"tenant": "acme", "room": "nobody-here", "svc": "match", "type": "ping"}
        assert await asyncio.to_thread(call, g, "POST", "/v1/publish", body) == (200, {"delivered": 0})
        for ws in (a, b, c):
            await ws.close()
    run(main())


def test_send_reaches_every_session_of_the_user(g):
    async def main():
        t1, _ = await connect_authed(g.url("acme", "dev:dora", sid="tab1"))
        t2, _ = await connect_authed(g.url("acme", "dev:dora", sid="tab2"))
        other, _ = await connect_authed(g.url("acme", "dev:eve"))
        body = {"tenant": "acme", "user": "dora", "svc": "notice", "type": "hello", "data": "hi"}
        assert await asyncio.to_thread(call, g, "POST", "/v1/send", body) == (200, {"delivered": 2})
        for ws in (t1, t2):
            assert await recv_json(ws) == {"v": 1, "svc": "notice", "type": "hello", "data": "hi"}
        await expect_silence(other, 0.2)
        body["user"] = "nobody"
        assert await asyncio.to_thread(call, g, "POST", "/v1/send", body) == (200, {"delivered": 0})
        for ws in (t1, t2, other):
            await ws.close()
    run(main())


def test_disconnect_codes(g):
    async def main():
        a, _ = await connect_authed(g.url("acme", "dev:fred", sid="1"))
        b, _ = await connect_authed(g.url("acme", "dev:fred", sid="2"))
        status, answer = await asyncio.to_thread(call, g, "POST", "/v1/disconnect", {"tenant": "acme", "user": "fred"})
        assert (status, answer) == (200, {"delivered": 2})
        assert await expect_close(a) == 4006
        assert await expect_close(b) == 4006
        c, _ = await connect_authed(g.url("acme", "dev:gus"))
        for code in (4001, 4005, 3999, 1000, 5000):       # refused: the session stays
            status, answer = await asyncio.to_thread(
                call, g, "POST", "/v1/disconnect", {"tenant": "acme", "user": "gus", "code": code})
            assert status == 400 and answer["field"] == "code", (code, answer)
        status, answer = await asyncio.to_thread(
            call, g, "POST", "/v1/disconnect", {"tenant": "acme", "user": "gus", "reason": "é" * 61})
        assert status == 400 and answer["field"] == "reason"
        assert (await request(c, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        body = {"tenant": "acme", "user": "gus", "code": 4321, "reason": "banned for cheating"}
        assert await asyncio.to_thread(call, g, "POST", "/v1/disconnect", body) == (200, {"delivered": 1})
        try:
            while True:
                await asyncio.wait_for(c.recv(), 3)
        except Exception:
            pass
        assert c.close_code == 4321 and c.close_reason == "banned for cheating"
        d, _ = await connect_authed(g.url("acme", "dev:hal"))
        body = {"tenant": "acme", "user": "hal", "code": 4000}
        assert await asyncio.to_thread(call, g, "POST", "/v1/disconnect", body) == (200, {"delivered": 1})
        assert await expect_close(d) == 4000
    run(main())


def test_presence_and_stats(g):
    async def main():
        socks = []
        for user in ("p1", "p2", "p3", "p3"):
            ws, _ = await connect_authed(g.url("acme", f"dev:{user}"))
            assert (await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "lobby"}))["type"] == "joined"
            socks.append(ws)
        q = "/v1/presence?tenant=acme&room=lobby"
        status, answer = await asyncio.to_thread(call, g, "GET", q)
        assert status == 200 and answer["count"] == 3 and sorted(answer["users"]) == ["p1", "p2", "p3"]
        status, answer = await asyncio.to_thread(call, g, "GET", q + "&limit=2")
        assert status == 200 and answer["count"] == 3 and len(answer["users"]) == 2
        status, answer = await asyncio.to_thread(call, g, "GET", q + "&limit=0")
        assert (status, answer) == (200, {"count": 3, "users": []})
        assert await asyncio.to_thread(call, g, "GET", "/v1/presence?tenant=acme&room=empty") == \
            (200, {"count": 0, "users": []})
        status, stats = await asyncio.to_thread(call, g, "GET", "/v1/stats?tenant=acme")
        assert status == 200 and set(stats) == {"sessions", "rooms", "users"}
        assert stats["sessions"] >= 4 and stats["rooms"] >= 1 and stats["users"] >= 3
        live = g.call(lambda: (g.tenant().sessions.count, len(g.tenant().rooms.rooms), g.tenant().sessions.users))
        assert (stats["sessions"], stats["rooms"], stats["users"]) == live
        for ws in socks:
            await ws.close()
    run(main())


@pytest.mark.parametrize("query, field", [
    ("tenant=acme&room=lobby&limit=10001", "limit"),
    ("tenant=acme&room=lobby&limit=-1", "limit"),
    ("tenant=acme&room=lobby&limit=abc", "limit"),
    ("tenant=acme", "room"),
    ("tenant=acme&room=bad%20room", "room"),
    ("tenant=acme&room=lobby&extra=1", "extra"),
    ("tenant=acme&room=lobby&room=other", None),
])
def test_presence_bad_query(g, query, field):
    status, answer = call(g, "GET", f"/v1/presence?{query}")
    assert status == 400 and isinstance(answer["error"], str)
    assert answer.get("field") == field


def test_keys(g):
    body = {"tenant": "acme", "room": "r", "svc": "s", "type": "t"}
    assert call(g, "POST", "/v1/publish", body, key=None)[0] == 401
    assert call(g, "POST", "/v1/publish", body, key="wrong")[0] == 401
    assert call(g, "POST", "/v1/publish", body, key=ACME_KEY + "x")[0] == 401
    assert call(g, "POST", "/v1/publish", body, key=None, headers={"Authorization": f"Basic {ACME_KEY}"})[0] == 401
    assert call(g, "GET", "/v1/stats?tenant=acme", key=None)[0] == 401
    # a valid key for another tenant, or for a tenant that does not exist
    assert call(g, "POST", "/v1/publish", dict(body, tenant="bank"))[0] == 403
    assert call(g, "POST", "/v1/publish", dict(body, tenant="nokey"))[0] == 403
    assert call(g, "POST", "/v1/publish", dict(body, tenant="nope"))[0] == 403
    assert call(g, "GET", "/v1/stats?tenant=bank")[0] == 403
    assert call(g, "GET", "/v1/stats?tenant=acme", key=BANK_KEY)[0] == 403
    # the key read from a file works for its tenant
    assert call(g, "GET", "/v1/stats?tenant=bank", key=BANK_KEY)[0] == 200
    assert call(g, "POST", "/v1/publish", dict(body, tenant="bank"), key=BANK_KEY) == (200, {"delivered": 0})


BAD_BODIES = {
    "room_not_a_string": ({"tenant": "acme", "room": 5, "svc": "s", "type": "t"}, "room"),
    "tenant_not_a_string": ({"tenant": ["acme"], "room": "r", "svc": "s", "type": "t"}, "tenant"),
    "bad_room_name": ({"tenant": "acme", "room": "a b", "svc": "s", "type": "t"}, "room"),
    "empty_svc": ({"tenant": "acme", "room": "r", "svc": "", "type": "t"}, "svc"),
    "missing_type": ({"tenant": "acme", "room": "r", "svc": "s"}, "type"),
    "unknown_field": ({"tenant": "acme", "room": "r", "svc": "s", "type": "t", "qos": 1}, "qos"),
    "array": ([1, 2], None),
    "null": (None, None),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_publish_bad_body_is_400_naming_the_field(g, case):
    body, field = BAD_BODIES[case]
    status, answer = call(g, "POST", "/v1/publish", raw=json.dumps(body).encode())
    assert status == 400 and isinstance(answer["error"], str)
    assert answer.get("field") == field, answer


def test_send_and_disconnect_validate_too(g):
    status, answer = call(g, "POST", "/v1/send", {"tenant": "acme", "user": 7, "svc": "s", "type": "t"})
    assert status == 400 and answer["field"] == "user"
    status, answer = call(g, "POST", "/v1/disconnect", {"tenant": "acme", "user": "x", "code": "4006"})
    assert status == 400 and answer["field"] == "code"
    status, answer = call(g, "POST", "/v1/send", raw=b"{not json")
    assert status == 400
    status, answer = call(g, "POST", "/v1/send", raw=b"")
    assert status == 400


def test_oversized_body_is_413(g):
    big = {"tenant": "acme", "room": "r", "svc": "s", "type": "t", "data": "x" * (2 * 1024 * 1024)}
    status, answer = call(g, "POST", "/v1/publish", big)
    assert status == 413 and "error" in answer


def test_unknown_route_and_method_are_json(g):
    assert call(g, "GET", "/v1/nothing")[0] == 404
    assert call(g, "GET", "/v1/publish")[0] == 405
    assert call(g, "POST", "/v1/stats?tenant=acme")[0] == 405


def test_api_metrics(g):
    before = scrape(g)
    call(g, "GET", "/v1/stats?tenant=acme")
    call(g, "GET", "/v1/stats?tenant=acme", key="nope")
    after = scrape(g)
    name = "wsprism_api_requests_total"

    def delta(**labels):
        return sample(after, name, **labels) - (before.get((name, frozenset(labels.items())), 0))
    assert delta(tenant="acme", route="stats", status="200") == 1
    assert delta(tenant="_unknown", route="stats", status="401") == 1


def test_api_is_off_by_default(gw):
    assert gw.gw.api is None


def test_missing_key_fails_startup(gateway_factory):
    from wsprism.config import ConfigError

    yaml = YAML.format(env="WSPRISM_TEST_UNSET_KEY", bank_file="/nonexistent/key")
    with pytest.raises(ConfigError, match="WSPRISM_TEST_UNSET_KEY"):
        gateway_factory(yaml)


def test_reload_rereads_a_rotated_key_file_and_keeps_keys_it_cannot_read(g, bank_file):
    from wsprism.config import parse_config

    yaml = YAML.format(env=ENV, bank_file=bank_file)
    bank_file.write_text("bank-rotated-key-000000000000")
    try:
        os.environ[ENV] = ACME_KEY
        g.call(lambda: g.gw.reload(parse_config(yaml)))
        assert call(g, "GET", "/v1/stats?tenant=bank", key=BANK_KEY)[0] == 401
        assert call(g, "GET", "/v1/stats?tenant=bank", key="bank-rotated-key-000000000000")[0] == 200
        del os.environ[ENV]                  # unreadable now: the previous keys stay
        bank_file.write_text(BANK_KEY)
        g.call(lambda: g.gw.reload(parse_config(yaml)))
        assert call(g, "GET", "/v1/stats?tenant=acme")[0] == 200
        assert call(g, "GET", "/v1/stats?tenant=bank", key="bank-rotated-key-000000000000")[0] == 200
    finally:
        os.environ.pop(ENV, None)
        bank_file.write_text(BANK_KEY)
        os.environ[ENV] = ACME_KEY
        g.call(lambda: g.gw.reload(parse_config(yaml)))
        call(g, "GET", "/v1/stats?tenant=acme")
        del os.environ[ENV]
    assert call(g, "GET", "/v1/stats?tenant=bank", key=BANK_KEY)[0] == 200
