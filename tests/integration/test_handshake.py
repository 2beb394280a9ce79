"""SPEC section 1 / 14: every pre-upgrade answer, over real sockets."""
import pytest

from tests.client import UPGRADE_HEADERS, connect_authed, expect_close, http_get, recv_json, run

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
  - id: tiny
    limits: {max_sessions_total: 2}
  - id: closed
    auth: {mode: static, tickets: {tkA: alice, tkB: bob}}
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def upgrade(g, query: str, extra: dict | None = None):
    headers = dict(UPGRADE_HEADERS)
    headers.update(extra or {})
    return http_get(g.port, f"/v1/ws?{query}", headers)


def rejections(g, tenant: str, reason: str) -> int:
    stats = g.gw.unknown_stats if tenant == "_unknown" else g.tenant(tenant).stats
    return g.call(lambda: stats.handshake_rejections[reason])


def test_unknown_path_is_404(g):
    status, _, body = http_get(g.port, "/v2/ws?tenant=acme&ticket=dev", UPGRADE_HEADERS)
    assert status == 404 and body


def test_plain_get_without_upgrade_is_426(g):
    before = rejections(g, "_unknown", "not_upgrade")
    status, headers, body = http_get(g.port, "/v1/ws?tenant=acme&ticket=dev")
    assert status == 426
    assert body.strip()
    assert rejections(g, "_unknown", "not_upgrade") == before + 1
    assert g.call(lambda: g.gw.unknown_stats.upgrades.get("426", 0)) >= 1


def test_426_comes_before_query_checks(g):
    status, _, _ = http_get(g.port, "/v1/ws?tenant=nope")
    assert status == 426


@pytest.mark.parametrize("query", [
    "ticket=dev",                                 # tenant missing
    "tenant=acme",                                # ticket missing
    "tenant=&ticket=dev",                         # tenant empty
    "tenant=acme&ticket=",                        # ticket empty
    "tenant=ac%20me&ticket=dev",                  # tenant malformed
    "tenant=" + "a" * 65 + "&ticket=dev",         # tenant too long
    "tenant=%FF%FE&ticket=dev",                   # tenant not UTF-8
    "tenant=acme&ticket=" + "x" * 4097,           # ticket too long
    "tenant=acme&ticket=a%0Ab",                   # ticket not printable
    "tenant=acme&ticket=dev&sid=",                # sid empty
    "tenant=acme&ticket=dev&sid=a/b",             # sid malformed
    "tenant=acme&ticket=dev&sid=" + "s" * 65,     # sid too long
    "tenant=acme&tenant=acme&ticket=dev",         # key given twice
    "tenant=acme&ticket=dev&%74icket=dev",        # key twice, one percent-encoded
    "tenant=acme&ticket=dev&sid=a&sid=b",         # sid twice
])
def test_bad_query_is_400(g, query):
    status, _, body = upgrade(g, query)
    assert status == 400, query
    assert body.strip()


def test_percent_encoded_keys_and_values_are_decoded(g):
    async def main():
        ws, authed = await connect_authed(g.url(ticket="dev%3Acarol").replace("tenant=", "%74enant="))
        assert authed["data"]["user"] == "carol"
        await ws.close()
    run(main())


def test_ticket_of_4096_bytes_is_accepted_as_far_as_length_goes(g):
    status, _, _ = upgrade(g, "tenant=closed&ticket=" + "x" * 4096)
    assert status == 401


def test_unknown_tenant_is_400_labelled_unknown(g):
    before = rejections(g, "_unknown", "unknown_tenant")
    status, _, _ = upgrade(g, "tenant=ghost&ticket=dev")
    assert status == 400
    assert rejections(g, "_unknown", "unknown_tenant") == before + 1


def test_ticket_rejected_is_401(g):
    status, _, _ = upgrade(g, "tenant=closed&ticket=wrong")
    assert status == 401
    assert rejections(g, "closed", "auth_failed") >= 1


def test_static_ticket_accepted(g):
    async def main():
        ws, authed = await connect_authed(g.url("closed", "tkA"))
        assert authed["data"]["user"] == "alice"
        await ws.close()
    run(main())


def test_authed_is_first_message_with_fields(g):
    async def main():
        ws, authed = await connect_authed(g.url(ticket="dev:alice", sid="tab-1"))
        assert authed == {
            "v": 1, "svc": "sys", "type": "authed",
            "data": {"tenant": "acme", "user": "alice", "sid": "tab-1"},
            "trace_id": authed["trace_id"],
        }
        assert authed["trace_id"]
        await ws.close()
        ws2, authed2 = await connect_authed(g.url(ticket="dev:alice"))
        assert authed2["data"]["sid"]            # generated when not given
        assert authed2["data"]["sid"] != "tab-1"
        await ws2.close()
    run(main())


def test_tenant_full_is_503_retry_after_and_exact(g):
    async def main():
        a, _ = await connect_authed(g.url("tiny", "dev:a"))
        b, _ = await connect_authed(g.url("tiny", "dev:b"))
        status, headers, _ = upgrade(g, "tenant=tiny&ticket=dev:c")
        assert status == 503
        assert headers.get("retry-after") == "1"
        assert g.call(lambda: g.tenant("tiny").sessions.count) == 2
        await a.close()
        await b.close()
        # the slot frees once the session is gone
        for _ in range(50):
            if g.call(lambda: g.tenant("tiny").sessions.count) == 0:
                break
            import asyncio
            await asyncio.sleep(0.02)
        c, _ = await connect_authed(g.url("tiny", "dev:c"))
        await c.close()
    run(main())


def test_same_sid_reconnect_at_the_tenant_cap_is_not_refused(g):
    async def main():
        a, _ = await connect_authed(g.url("tiny", "dev:tab", sid="t1"))
        b, _ = await connect_authed(g.url("tiny", "dev:other"))
        assert upgrade(g, "tenant=tiny&ticket=dev:third")[0] == 503          # full
        again, _ = await connect_authed(g.url("tiny", "dev:tab", sid="t1"))  # the same tab
        assert (await recv_json(a))["data"]["reason"] == "replaced"
        assert await expect_close(a) == 4003
        await again.close(); await b.close()
    run(main())


def test_same_sid_replaces_the_live_session(g):
    async def main():
        old, _ = await connect_authed(g.url(ticket="dev:rita", sid="tab"))
        new, _ = await connect_authed(g.url(ticket="dev:rita", sid="tab"))
        kicked = await recv_json(old)
        assert kicked == {"v": 1, "svc": "sys", "type": "kicked", "data": {"reason": "replaced"}}
        assert await expect_close(old) == 4003
        assert g.call(lambda: len(g.tenant().sessions.sessions_of("rita"))) == 1
        await new.close()
    run(main())


def test_health_ready_metrics_on_the_same_port(g):
    assert http_get(g.port, "/healthz")[0:3:2] == (200, b"ok\n")
    status, _, body = http_get(g.port, "/readyz")
    assert (status, body) == (200, b"ready\n")
    status, headers, body = http_get(g.port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"wsprism_ws_sessions_active" in body
    # the defender never applies to these
    for _ in range(5):
        assert http_get(g.port, "/healthz")[0] == 200


def test_upgrade_with_bad_websocket_key_is_400(g):
    status, _, _ = upgrade(g, "tenant=acme&ticket=dev", {"Sec-WebSocket-Key": "short"})
    assert status == 400
    status, headers, _ = upgrade(g, "tenant=acme&ticket=dev", {"Sec-WebSocket-Version": "99"})
    assert status == 426 and headers["sec-websocket-version"] == "13"   # RFC 6455 4.2.2


def test_connection_header_with_several_tokens_upgrades(g):
    # Firefox sends "Connection: keep-alive, Upgrade"
    async def main():
        ws, _ = await connect_authed(g.url(), additional_headers={"Connection": "keep-alive, Upgrade"})
        await ws.close()
    run(main())


def test_counts_101(g):
    before = g.call(lambda: g.tenant().stats.upgrades.get("101", 0))

    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.close()
    run(main())
    assert g.call(lambda: g.tenant().stats.upgrades.get("101", 0)) == before + 1
