"""`GET /v1/ws/check` (why a handshake is refused, for browsers that only see 1006) and
the files `gateway.demo` serves: /demo/, /client/wsprism.js and .d.ts (SPEC 1, 16)."""
import json
from pathlib import Path

import pytest

from tests.client import UPGRADE_HEADERS, connect_authed, http_get, run

REPO = Path(__file__).resolve().parents[2]

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  demo: true
tenants:
  - id: acme
    limits: {max_sessions_total: 1}
  - id: shop
    auth: {mode: static, tickets: {tkA: alice}}
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def check(port, query, headers=None):
    status, hdrs, body = http_get(port, f"/v1/ws/check?{query}", headers)
    return status, hdrs, json.loads(body)


def test_check_says_ok_for_a_handshake_that_would_pass(g):
    status, hdrs, body = check(g.port, "tenant=shop&ticket=tkA&sid=tab-1")
    assert status == 200
    assert body["reason"] == "ok" and body["msg"]
    assert hdrs["content-type"] == "application/json"
    assert hdrs["access-control-allow-origin"] == "*"
    assert hdrs["cache-control"] == "no-store"
    assert g.call(lambda: g.tenant("shop").stats.upgrades.get("200")) == 1


@pytest.mark.parametrize("query, status, reason, tenant", [
    ("tenant=nope&ticket=dev", 400, "unknown_tenant", None),
    ("tenant=shop&ticket=wrong", 401, "auth_failed", "shop"),
    ("tenant=shop", 400, "bad_request", None),
    ("tenant=shop&ticket=tkA&sid=bad%20sid", 400, "bad_request", None),
])
def test_check_gives_the_reason_and_counts_it_like_the_upgrade(g, query, status, reason, tenant):
    stats = (lambda: g.tenant(tenant).stats) if tenant else (lambda: g.gw.unknown_stats)
    before = g.call(lambda: stats().handshake_rejections[reason])
    ws_status = http_get(g.port, f"/v1/ws?{query}", UPGRADE_HEADERS)[0]
    got_status, hdrs, body = check(g.port, query)
    assert ws_status == got_status == status
    assert body["reason"] == reason and isinstance(body["msg"], str)
    assert "retry_after" not in body
    assert hdrs["access-control-allow-origin"] == "*"
    # the same counter as the refused upgrade: two refusals, two counts
    assert g.call(lambda: stats().handshake_rejections[reason]) == before + 2


def test_check_tenant_full_has_retry_after(g):
    async def main():
        ws, _ = await connect_authed(g.url("acme", "dev:alice"))
        status, hdrs, body = check(g.port, "tenant=acme&ticket=dev:bob")
        assert status == 503 and hdrs["retry-after"] == "1"
        assert body == {"reason": "tenant_full", "msg": "tenant at max_sessions_total", "retry_after": 1}
        # the same user and sid reconnecting is not refused (it would replace itself)
        await ws.close()
    run(main())


def test_check_while_draining(gateway_factory):
    d = gateway_factory(YAML)
    d.call(lambda: setattr(d.gw, "draining", True))
    status, _, body = check(d.port, "tenant=shop&ticket=tkA")
    assert status == 503 and body["reason"] == "draining"
    assert d.call(lambda: d.gw.unknown_stats.handshake_rejections["draining"]) == 1
    d.call(lambda: setattr(d.gw, "draining", False))


DEFENDED = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  handshake_limit: {enabled: true, global_rps: 1000, global_burst: 1000, per_ip_rps: 0.1, per_ip_burst: 2}
tenants:
  - id: acme
"""


def test_check_takes_tokens_from_the_same_defender(gateway_factory):
    d = gateway_factory(DEFENDED)
    assert check(d.port, "tenant=acme&ticket=dev")[0] == 200

    async def one_session():
        ws, _ = await connect_authed(d.url())
        await ws.close()
    run(one_session())
    # the bucket (burst 2) is empty now, for checks and upgrades alike
    status, hdrs, body = check(d.port, "tenant=acme&ticket=dev")
    assert status == 429 and int(hdrs["retry-after"]) >= 1
    assert body["reason"] == "rate_limited" and body["retry_after"] == int(hdrs["retry-after"])
    assert http_get(d.port, "/v1/ws?tenant=acme&ticket=dev", UPGRADE_HEADERS)[0] == 429
    assert d.call(lambda: d.gw.unknown_stats.handshake_rejections["rate_limited_ip"]) == 2


def test_check_of_a_webhook_tenant_leaves_the_ticket_to_the_upgrade(gateway_factory):
    d = gateway_factory("""
version: 1
gateway: {listen: "127.0.0.1:0"}
tenants:
  - id: game
    auth: {mode: webhook, url: "http://127.0.0.1:9/auth", timeout_ms: 200}
""")
    status, _, body = check(d.port, "tenant=game&ticket=anything")
    assert status == 200 and body["reason"] == "ok"


@pytest.mark.parametrize("path, ctype, source", [
    ("/client/wsprism.js", "text/javascript; charset=utf-8", "clients/js/wsprism.js"),
    ("/client/wsprism.d.ts", "text/plain; charset=utf-8", "clients/js/wsprism.d.ts"),
    ("/demo/", "text/html; charset=utf-8", "wsprism/ops/static/demo.html"),
])
def test_demo_serves_the_client_and_the_page(g, path, ctype, source):
    status, hdrs, body = http_get(g.port, path)
    assert status == 200
    assert hdrs["content-type"] == ctype
    assert hdrs["access-control-allow-origin"] == "*"
    assert body == (REPO / source).read_bytes()


def test_demo_without_slash_redirects(g):
    status, hdrs, _ = http_get(g.port, "/demo")
    assert status == 308 and hdrs["location"] == "/demo/"


def test_client_files_only_with_demo_on(gateway_factory):
    off = gateway_factory(YAML.replace("  demo: true\n", ""))
    for path in ("/client/wsprism.js", "/client/wsprism.d.ts", "/demo/", "/demo", "/client/other.js"):
        assert http_get(off.port, path)[0] == 404, path
    assert http_get(off.port, "/v1/ws/check?tenant=shop&ticket=tkA")[0] == 200   # protocol, always on


def test_only_the_listed_files_are_served(g):
    for path in ("/client/", "/client/other.js", "/client/../demo/", "/demo/index.html", "/client/wsprism.js/"):
        assert http_get(g.port, path)[0] == 404, path
