"""`GET /v1/admin/state` and the `/admin/` files on the server API's listener, over real HTTP.

The page itself is tested in headless Chromium (tests/browser/test_admin.py); this file
holds the JSON contract both share, its auth, its bounds and its bad input.
"""
import asyncio
import json
import os
import time

import aiohttp
import pytest

from tests.client import UPGRADE_HEADERS, connect_authed, error_of, expect_close, http_get, request, run, send_json
from tests.integration.backend_app import sample, scrape

ACME_KEY = "acme-admin-0123456789abcdef0123"
BANK_KEY = "bank-admin-fedcba9876543210fedc"
ENV = {"WSPRISM_ADMIN_ACME": ACME_KEY, "WSPRISM_ADMIN_BANK": BANK_KEY}

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  api:
    listen: "127.0.0.1:0"
    keys:
      acme: {env: WSPRISM_ADMIN_ACME}
      bank: {env: WSPRISM_ADMIN_BANK}
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*"]
  - id: bank
    auth: {mode: static, tickets: {tk-bank-1: bob}}
    policy: {ext_allowlist: ["room:*", "sys:*"]}
"""

STATE_KEYS = {"tenant", "time", "process", "tenants", "sessions", "users", "rooms", "lanes", "delivery",
              "top_rooms", "rejections", "search"}


@pytest.fixture(scope="module")
def g(gateway_factory):
    os.environ.update(ENV)
    try:
        return gateway_factory(YAML)
    finally:
        for k in ENV:
            del os.environ[k]


def get(g, path: str, key: str | None = ACME_KEY, headers: dict | None = None):
    """(status, headers, body bytes) of a GET on the API listener."""
    async def main():
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{g.gw.api.port}{path}", headers=hdrs, allow_redirects=False) as r:
                return r.status, r.headers, await r.read()
    return asyncio.run(main())


def state(g, query: str = "", key: str = ACME_KEY) -> dict:
    status, headers, body = get(g, f"/v1/admin/state{query}", key)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    data = json.loads(body)
    assert set(data) == STATE_KEYS
    return data


async def join(ws, room: str) -> None:
    assert (await request(ws, {"v": 1, "svc": "room", "type": "join", "room": room}))["type"] == "joined"


def test_live_numbers_rooms_and_search(g):
    async def main():
        conns = []
        for i in range(6):
            ws, _ = await connect_authed(g.url(ticket=f"dev:ann{i}" if i < 4 else f"dev:zed{i}", sid=f"tab-{i}"))
            conns.append(ws)
        for i, ws in enumerate(conns):
            await join(ws, "lobby")
            if i < 3:
                await join(ws, "big:1")
        await join(conns[0], "solo")
        for _ in range(20):
            await send_json(conns[1], {"v": 1, "svc": "sys", "type": "ping"})
        await asyncio.sleep(1.3)              # the sampler has a baseline over a second old
        st = await asyncio.to_thread(state, g)
        assert st["tenant"] == "acme" and st["tenants"] == [{"id": "acme", "sessions": 6, "users": 6, "rooms": 3}]
        assert (st["sessions"], st["users"], st["rooms"]) == (6, 6, 3)
        assert st["top_rooms"] == [{"room": "lobby", "users": 6, "sessions": 6},
                                   {"room": "big:1", "users": 3, "sessions": 3},
                                   {"room": "solo", "users": 1, "sessions": 1}]
        assert st["lanes"]["ext"]["messages_total"] >= 30 and st["lanes"]["ext"]["per_s"] > 0
        assert st["lanes"]["hot"] == {"messages_total": 0, "per_s": 0.0}
        p = st["process"]
        assert p["scale_out"]["summary"] == "single process, no broker" and p["draining"] is False
        assert p["version"] == "0.1.0" and isinstance(p["compiled"], bool) and p["uptime_s"] > 0
        # every session, in registry order, paged
        sr = st["search"]
        assert (sr["q"], sr["offset"], sr["limit"], sr["total"]) == ("", 0, 50, 6)
        assert [s["user"] for s in sr["sessions"]] == ["ann0", "ann1", "ann2", "ann3", "zed4", "zed5"]
        page = (await asyncio.to_thread(state, g, "?offset=4&limit=2"))["search"]
        assert [s["user"] for s in page["sessions"]] == ["zed4", "zed5"] and page["total"] == 6
        # search: exact user first, then prefixes of users and sids
        sr = (await asyncio.to_thread(state, g, "?q=ann0"))["search"]
        assert sr["total"] == 1
        (one,) = sr["sessions"]
        assert one == {"user": "ann0", "sid": "tab-0", "trace_id": one["trace_id"], "state": "open", "ip": None,
                       "active_room": "solo", "rooms": ["solo", "big:1", "lobby"], "rooms_total": 3}
        assert [s["user"] for s in (await asyncio.to_thread(state, g, "?q=ann"))["search"]["sessions"]] == \
            ["ann0", "ann1", "ann2", "ann3"]
        assert [s["sid"] for s in (await asyncio.to_thread(state, g, "?q=tab-5"))["search"]["sessions"]] == ["tab-5"]
        assert (await asyncio.to_thread(state, g, "?q=nobody"))["search"] == {
            "q": "nobody", "offset": 0, "limit": 50, "total": 0, "sessions": []}
        for ws in conns:
            await ws.close()
    run(main())


def test_recent_rejections_by_reason(g):
    async def main():
        assert http_get(g.port, "/v1/ws?tenant=bank&ticket=wrong", UPGRADE_HEADERS)[0] == 401
        ws, _ = await connect_authed(g.url())
        assert error_of(await request(ws, {"v": 1, "svc": "nope", "type": "x"})) == "NOT_ALLOWED"
        await ws.send(b"\x01\x01\x00")            # hot frame with no active room: dropped
        await asyncio.sleep(0.2)
        acme = await asyncio.to_thread(state, g)
        policy = {(r["lane"], r["decision"], r["reason"]): r for r in acme["rejections"]["policy"]}
        assert policy[("ext", "deny", "not_allowed")]["total"] >= 1
        assert policy[("hot", "drop", "no_active_room")]["total"] >= 1
        assert all(r["recent"] <= r["total"] for r in policy.values())
        assert acme["rejections"]["handshake"] == []           # bank's refusal is not acme's
        bank = await asyncio.to_thread(state, g, "", BANK_KEY)
        assert bank["tenant"] == "bank"
        (auth,) = bank["rejections"]["handshake"]
        assert auth["reason"] == "auth_failed" and auth["total"] == 1
        await ws.close()
    run(main())


@pytest.mark.parametrize("key, query, status, error", [
    (None, "", 401, "missing bearer key (Authorization: Bearer <key>)"),
    ("not-a-key", "", 401, "invalid key"),
    (BANK_KEY, "?tenant=acme", 403, "this key is not valid for that tenant"),
    (ACME_KEY, "?tenant=bank", 403, "this key is not valid for that tenant"),
])
def test_no_or_another_tenants_key_gets_no_data(g, key, query, status, error):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:secret-user", sid="secret-sid"))
        code, headers, body = await asyncio.to_thread(get, g, f"/v1/admin/state{query}", key)
        assert code == status and headers["Content-Type"] == "application/json"
        assert json.loads(body)["error"] == error
        assert b"secret-user" not in body and b"secret-sid" not in body and b"sessions" not in body
        await ws.close()
    run(main())


@pytest.mark.parametrize("query, field", [
    ("?limit=0", "limit"), ("?limit=201", "limit"), ("?offset=-1", "offset"), ("?top=101", "top"),
    ("?limit=x", "limit"), ("?q=" + "a" * 257, "q"), ("?tenant=a%20b", "tenant"), ("?bogus=1", "bogus"),
    ("?q=a&q=b", None),
])
def test_bad_query_is_400(g, query, field):
    code, _, body = get(g, f"/v1/admin/state{query}")
    assert code == 400
    err = json.loads(body)
    assert err.get("field") == field and "sessions" not in err


def test_bounded_whatever_the_tenants_size(g):
    """Top-N rooms, a page of sessions, a few rooms per session: the answer does not grow
    with the tenant (10k sessions / 5k rooms are measured in benches/bench_admin.py)."""
    async def main():
        conns = [(await connect_authed(g.url(ticket=f"dev:u{i:03d}")))[0] for i in range(30)]
        for i, ws in enumerate(conns):
            await join(ws, f"room:{i}")
        for n in range(60):                       # one session in 60 rooms
            await join(conns[0], f"many:{n}")
        small = await asyncio.to_thread(get, g, "/v1/admin/state?top=5&limit=10")
        st = json.loads(small[2])
        assert len(st["top_rooms"]) == 5 and st["rooms"] == 90
        assert len(st["search"]["sessions"]) == 10 and st["search"]["total"] == 30
        first = st["search"]["sessions"][0]
        assert first["rooms_total"] == 61 and len(first["rooms"]) == 20 and first["rooms"][0] == "many:59"
        more = [(await connect_authed(g.url(ticket=f"dev:v{i:03d}")))[0] for i in range(30)]
        for i, ws in enumerate(more):
            await join(ws, f"room2:{i}")
        bigger = await asyncio.to_thread(get, g, "/v1/admin/state?top=5&limit=10")
        assert json.loads(bigger[2])["rooms"] == 120
        assert abs(len(bigger[2]) - len(small[2])) < 64          # same shape, same size
        for ws in conns + more:
            await ws.close()
    run(main())


def test_admin_page_files(g):
    code, headers, body = get(g, "/admin/", key=None)
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert b'<script type="module" src="admin.js">' in body and b"acme" not in body
    code, headers, body = get(g, "/admin/admin.js", key=None)
    assert code == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert b"/v1/admin/state" in body and b"Authorization" in body
    assert get(g, "/admin/admin.css", key=None)[0] == 200
    code, headers, _ = get(g, "/admin", key=None)
    assert code == 308 and headers["Location"] == "admin/"
    code, headers, body = get(g, "/admin/secrets.txt", key=None)
    assert code == 404 and json.loads(body) == {"error": "not found"}
    assert get(g, "/admin/../ops/api.py", key=None)[0] == 404
    # the gateway's public port has no admin page
    assert http_get(g.port, "/admin/")[0] == 404
    calls = scrape(g)
    assert sample(calls, "wsprism_api_requests_total", tenant="_unknown", route="admin_page", status="200") >= 3
    assert sample(calls, "wsprism_api_requests_total", tenant="acme", route="admin_state", status="200") >= 1


def test_no_api_no_admin(gateway_factory):
    g2 = gateway_factory('version: 1\ngateway: {listen: "127.0.0.1:0"}\ntenants: [{id: acme}]\n')
    assert g2.gw.api is None
    assert http_get(g2.port, "/admin/")[0] == 404 and http_get(g2.port, "/v1/admin/state")[0] == 404


def test_disconnect_from_the_page_is_the_apis(g):
    """The page's button posts /v1/disconnect with the same key: the user's sessions get 4006."""
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:kicked"))
        b, _ = await connect_authed(g.url(ticket="dev:kicked"))
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{g.gw.api.port}/v1/disconnect",
                              json={"tenant": "acme", "user": "kicked"},
                              headers={"Authorization": f"Bearer {ACME_KEY}"}) as r:
                assert (r.status, await r.json()) == (200, {"delivered": 2})
        assert [await expect_close(a), await expect_close(b)] == [4006, 4006]
        deadline = time.monotonic() + 3
        while (await asyncio.to_thread(state, g, "?q=kicked"))["search"]["total"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    run(main())
