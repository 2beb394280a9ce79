"""SPEC section 8: every metric name and label set; labels never carry client input."""
import re

from tests.client import UPGRADE_HEADERS, connect_authed, http_get, request, run

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*", "evil:*"]
      hot_allowlist: ["1:*"]
      hot_requires_active_room: false
"""

NAMES = [
    "wsprism_ws_upgrades_total", "wsprism_ws_sessions_active", "wsprism_policy_decisions_total",
    "wsprism_handshake_rejections_total", "wsprism_dispatch_duration_seconds_bucket",
    "wsprism_decode_errors_total", "wsprism_service_errors_total", "wsprism_writer_timeouts_total",
    "wsprism_egress_drop_total", "wsprism_draining",
]


def scrape(port) -> str:
    status, headers, body = http_get(port, "/metrics")
    assert status == 200
    return body.decode()


def test_metric_names_labels_and_hostile_input(gateway_factory):
    g = gateway_factory(YAML)

    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:mallory"))
        for svc in ["evil<script>", 'x"}\n', "svc_" + "z" * 200]:
            msg = await request(ws, {"v": 1, "svc": svc, "type": "t\u2028y", "seq": 1})
            assert msg["data"]["code"] == "NOT_ALLOWED"
        msg = await request(ws, {"v": 1, "svc": "evil", "type": "x"})
        assert msg["data"]["msg"] == "unknown service"
        assert (await request(ws, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        for i in range(70):
            await ws.send(bytes([1, 1, 0]) + b"hi")
            assert await ws.recv() == bytes([1, 1, 0]) + b"hi"
        await ws.close()
    run(main())
    http_get(g.port, "/v1/ws?tenant=ghost-tenant&ticket=dev", UPGRADE_HEADERS)
    text = scrape(g.port)
    for name in NAMES:
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    for bad in ["evil<script>", "svc_zzz", "ghost-tenant", "mallory", "t\u2028y"]:
        assert bad not in text
    assert 'wsprism_policy_decisions_total{decision="deny",lane="ext",reason="unknown_service",tenant="acme"} 1.0' in text
    assert 'wsprism_policy_decisions_total{decision="deny",lane="ext",reason="not_allowed",tenant="acme"} 3.0' in text
    assert 'wsprism_policy_decisions_total{decision="allow",lane="hot",reason="ok",tenant="acme"} 70.0' in text
    assert 'wsprism_handshake_rejections_total{reason="unknown_tenant",tenant="_unknown"} 1.0' in text
    assert 'wsprism_draining 0.0' in text
    # histogram: buckets from 5 µs to 1 s, Hot Lane sampled 1 in 64
    assert 'wsprism_dispatch_duration_seconds_bucket{lane="ext",le="5e-06",tenant="acme"}' in text
    assert 'wsprism_dispatch_duration_seconds_bucket{lane="ext",le="1.0",tenant="acme"}' in text
    hot_count = re.search(r'wsprism_dispatch_duration_seconds_count\{lane="hot",tenant="acme"\} (\S+)', text)
    assert float(hot_count.group(1)) == 1.0       # 70 frames, 1 in 64 timed
    assert re.search(r'wsprism_ws_upgrades_total\{status="101",tenant="acme"\} 1\.0', text)


def test_demo_page_only_when_enabled(gateway_factory):
    on = gateway_factory(YAML.replace('listen: "127.0.0.1:0"', 'listen: "127.0.0.1:0"\n  demo: true'))
    status, headers, body = http_get(on.port, "/demo/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'from "../client/wsprism.js"' in body
    off = gateway_factory(YAML)
    assert http_get(off.port, "/demo/")[0] == 404
