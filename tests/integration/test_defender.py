"""Handshake defender (SPEC 1/9/14): global and per-IP buckets, 429 + Retry-After,
bounded per-IP table, X-Forwarded-For only from trusted proxies."""
import pytest

from tests.client import UPGRADE_HEADERS, connect_authed, http_get, request, run

PER_IP = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  handshake_limit: {enabled: true, global_rps: 1000, global_burst: 1000, per_ip_rps: 0.5, per_ip_burst: 3, max_ip_entries: 3}
  trusted_proxies: ["127.0.0.2/32"]
tenants:
  - id: acme
"""

GLOBAL = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  handshake_limit: {enabled: true, global_rps: 0.5, global_burst: 2, per_ip_rps: 100, per_ip_burst: 100}
  trusted_proxies: ["127.0.0.1/32"]
tenants:
  - id: acme
"""


def upgrade(port, extra=None):
    headers = dict(UPGRADE_HEADERS)
    headers.update(extra or {})
    return http_get(port, "/v1/ws?tenant=acme&ticket=dev", headers)


def test_per_ip_bucket(gateway_factory):
    g = gateway_factory(PER_IP)

    async def main():
        sessions = [(await connect_authed(g.url(ticket=f"dev:u{i}")))[0] for i in range(3)]
        status, headers, body = upgrade(g.port)
        assert status == 429
        assert int(headers["retry-after"]) >= 1
        assert body.strip()
        # probes and metrics are never limited; existing sessions keep working
        for _ in range(10):
            assert http_get(g.port, "/healthz")[0] == 200
        assert (await request(sessions[0], {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        for ws in sessions:
            await ws.close()
    run(main())
    assert g.call(lambda: g.gw.unknown_stats.handshake_rejections["rate_limited_ip"]) == 1
    # X-Forwarded-For from an untrusted peer (127.0.0.1 is not listed) is ignored
    assert upgrade(g.port, {"X-Forwarded-For": "10.9.9.9"})[0] == 429


def test_global_bucket_and_trusted_forwarded_for(gateway_factory):
    g = gateway_factory(GLOBAL)

    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:a"), additional_headers={"X-Forwarded-For": "203.0.113.1"})
        b, _ = await connect_authed(g.url(ticket="dev:b"), additional_headers={"X-Forwarded-For": "203.0.113.2"})
        await a.close(); await b.close()
    run(main())
    status, headers, _ = upgrade(g.port, {"X-Forwarded-For": "203.0.113.3"})
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert g.call(lambda: g.gw.unknown_stats.handshake_rejections["rate_limited_global"]) == 1
    # the trusted proxy's X-Forwarded-For named the clients
    assert g.call(lambda: sorted(g.gw.defender.per_ip)) == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]


def test_per_ip_table_is_bounded_lru():
    from wsprism.config import parse_config
    from wsprism.policy.defender import Defender

    cfg = parse_config(PER_IP).gateway
    d = Defender(cfg.handshake_limit, ["10.0.0.0/8"])
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"]:
        assert d.check(ip) is None
    assert d.check("1.1.1.1") is None          # 1.1.1.1 is now the most recently seen
    assert d.check("4.4.4.4") is None          # evicts 2.2.2.2, the least recently seen
    assert list(d.per_ip) == ["3.3.3.3", "1.1.1.1", "4.4.4.4"]
    assert d.client_ip("10.1.2.3", "198.51.100.7, 10.0.0.5") == "198.51.100.7"
    assert d.client_ip("10.1.2.3", "not-an-ip") == "10.1.2.3"
    assert d.client_ip("192.0.2.1", "198.51.100.7") == "192.0.2.1"


@pytest.mark.parametrize("burst", [1, 5])
def test_retry_after_is_whole_seconds_at_least_one(burst):
    from wsprism.policy.defender import _whole_seconds

    assert _whole_seconds(0.0) == 1
    assert _whole_seconds(0.01 * burst) == 1
    assert _whole_seconds(1.2) == 2
