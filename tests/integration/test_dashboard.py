"""docs/grafana/wsprism.json and docs/prometheus/alerts.yml against a live gateway.

- the dashboard has what Grafana needs to import it (panels, ids, grid, data source
  variable, every `$variable` defined);
- every metric name, label name and fixed label value used by a panel, a variable or an
  alert is in a live `/metrics` scrape of a gateway that has every optional part on
  (server API, service webhook, webhook auth, a Redis broker), or of a `gateway.workers: 2`
  host (the supervisor's and the per-worker families);
- `promtool check rules` accepts the alerts and the dashboard's expressions (as recording
  rules), and `promtool test rules` passes alerts.test.yml;
- a real Prometheus scraping that gateway evaluates every panel's expression without an
  error, and the panels that always have data get series.
"""
import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.client import UPGRADE_HEADERS, connect, connect_authed, error_of, http_get, request, run
from tests.integration.backend_app import BackendServer
from tests.prometheus import Prometheus, binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "wsprism.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "docs" / "prometheus" / "alerts.test.yml"
KEY = "dash-api-key-0123456789abcdef012"

METRIC = re.compile(r"\b((?:wsprism|process)_[a-z_]+)\b")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
PROMETHEUS_LABELS = {"job", "instance"}
# what Grafana puts in for its variables when "All" is picked
SUBSTITUTE = {"$__rate_interval": "1m", "$job": "wsprism", "$instance": ".*", "$tenant": ".*"}

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  api:
    listen: "127.0.0.1:0"
    keys: {acme: {env: WSPRISM_DASH_KEY}}
broker: {url: "REDIS", prefix: "dash"}
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*", "echo:*"]
      hot_allowlist: ["1:*"]
      history: {size: 100, ttl_ms: 60000}
    services:
      echo: {webhook: "BACKEND/svc", timeout_ms: 1000}
  - id: hook
    auth: {mode: webhook, url: "BACKEND/auth"}
"""


@pytest.fixture(scope="module")
def backend():
    b = BackendServer()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def g(gateway_factory, backend, redis_server):
    os.environ["WSPRISM_DASH_KEY"] = KEY
    try:
        gw = gateway_factory(YAML.replace("BACKEND", f"http://127.0.0.1:{backend.port}")
                             .replace("REDIS", redis_server.url))
    finally:
        del os.environ["WSPRISM_DASH_KEY"]
    deadline = time.monotonic() + 5
    while not gw.gw.cluster.up:
        assert time.monotonic() < deadline, "broker did not come up"
        time.sleep(0.02)
    traffic(gw)
    return gw


@pytest.fixture(scope="module")
def host_families(tmp_path_factory, redis_server) -> dict:
    """One scrape of a supervised `gateway.workers: 2` host (worker restarts, `worker` labels)."""
    from tests.integration.test_workers import Host

    host = Host(tmp_path_factory.mktemp("dash-host"), "dash", redis_server.url, workers=2, prefix="dashw")
    try:
        host.wait_log("broker up at", count=2, timeout=15)
        status, _, body = http_get(host.port, "/metrics")
        assert status == 200
        return parse_families(body.decode())
    finally:
        host.stop(signal.SIGTERM)


def traffic(g) -> None:
    """A little of everything, so every family has samples and the histograms counts."""
    async def main():
        ws, _ = await connect_authed(g.url())
        joined = await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "r"})
        assert joined["type"] == "joined"
        await request(ws, {"v": 1, "svc": "chat", "type": "send", "room": "r", "data": {"msg": "hi"}})
        since = {"since": {"offset": 0, "epoch": joined["data"]["epoch"]}}      # a replay of one
        await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "r2", "data": since})
        assert (await request(ws, {"v": 1, "svc": "echo", "type": "x"}))["type"] == "reply"
        assert error_of(await request(ws, {"v": 1, "svc": "nope", "type": "x"})) == "NOT_ALLOWED"
        for _ in range(70):
            await ws.send(b"\x01\x01\x00hot")
        hook = await connect(g.url("hook", "ok:hookuser"))
        assert json.loads(await hook.recv())["type"] == "authed"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{g.gw.api.port}/v1/stats?tenant=acme",
                             headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200
        await hook.close()
        await ws.close()
    run(main())
    assert http_get(g.port, "/v1/ws?tenant=acme", UPGRADE_HEADERS)[0] == 400
    assert http_get(g.port, "/nowhere")[0] == 404


def scrape_families(g) -> dict:
    """{sample name: {label name: set of values}} from the gateway's /metrics."""
    status, _, body = http_get(g.port, "/metrics")
    assert status == 200
    return parse_families(body.decode())


def parse_families(text: str, out: dict | None = None) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {} if out is None else out
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = out.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def variable_queries(dash: dict) -> list[tuple[str, str]]:
    return [(v["name"], v["query"]["query"]) for v in dash["templating"]["list"] if v["type"] == "query"]


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for grp in doc["groups"] for r in grp["rules"]]


def substituted(expr: str) -> str:
    for var, value in SUBSTITUTE.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


# -- the dashboard as Grafana imports it -------------------------------------------------

def test_dashboard_is_importable():
    dash = dashboard()
    assert dash["uid"] == "wsprism-gateway" and dash["title"] and dash["schemaVersion"] >= 36
    assert dash["id"] is None                      # Grafana assigns it on import
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "heatmap"}
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and all(t["refId"] and t["expr"] and t["datasource"] == p["datasource"]
                                    for t in p["targets"])
    used = {m.group(1) or m.group(2) for _, e in panel_exprs(dash) + variable_queries(dash)
            for m in VARIABLE.finditer(e)}
    assert used - {"__rate_interval"} <= set(variables), used
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Sessions per tenant", "Upgrades by HTTP status", "Handshake rejections by reason",
                   "Messages denied or dropped, by reason", "Dispatch latency per lane",
                   "Dispatch latency histogram, Ext Lane", "Dispatch latency histogram, Hot Lane (sampled 1 in 64)",
                   "Egress drops (lossy frames not sent)", "Writer timeouts (slow consumers, 4005)",
                   "Webhook latency per service", "Webhook outcomes"):
        assert wanted in titles


# -- every name against a live scrape ----------------------------------------------------

def check_names(where: str, expr: str, families: dict) -> None:
    names = set(METRIC.findall(expr))
    assert names or "up{" in expr, f"{where}: no wsprism metric in {expr!r}"
    for name in names:
        assert name in families, f"{where}: {name} is not exported by /metrics"
    labels: dict = {}
    for name in names:
        for k, values in families[name].items():
            labels.setdefault(k, set()).update(values)
    if any(n.endswith("_bucket") for n in names):
        labels.setdefault("le", set())
    for label, op, value in MATCHER.findall(expr):
        if label not in labels and label in PROMETHEUS_LABELS:
            continue
        assert label in labels, f"{where}: label {label} is on none of {sorted(names)}"
        if "$" in value or ".*" in value:
            continue
        wanted = [value] if op in ("=", "!=") else value.split("|")
        for v in wanted:
            assert v in labels[label], f"{where}: {label}={v!r} never appears (values: {sorted(labels[label])})"
    for group in GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in labels or label in PROMETHEUS_LABELS, f"{where}: cannot group by {label}"


def test_every_metric_name_and_label_is_exported(g, host_families):
    families = scrape_families(g)
    for name, labels in host_families.items():
        for k, values in labels.items():
            families.setdefault(name, {}).setdefault(k, set()).update(values)
    exprs = panel_exprs(dashboard()) + variable_queries(dashboard()) + alert_exprs()
    for where, expr in exprs:
        check_names(where, expr, families)
    used = {n for _, e in exprs for n in METRIC.findall(e)}
    # the SPEC 8 families all have a panel or an alert
    for spec in ("wsprism_ws_upgrades_total", "wsprism_ws_sessions_active", "wsprism_policy_decisions_total",
                 "wsprism_handshake_rejections_total", "wsprism_dispatch_duration_seconds_bucket",
                 "wsprism_decode_errors_total", "wsprism_service_errors_total", "wsprism_writer_timeouts_total",
                 "wsprism_egress_drop_total", "wsprism_draining", "wsprism_webhook_requests_total",
                 "wsprism_webhook_duration_seconds_bucket", "wsprism_auth_webhook_requests_total",
                 "wsprism_api_requests_total", "wsprism_history_bytes", "wsprism_history_rooms",
                 "wsprism_history_messages", "wsprism_history_replays_total",
                 "wsprism_history_replayed_messages_total", "wsprism_broker_up", "wsprism_broker_published_frames_total",
                 "wsprism_broker_received_frames_total", "wsprism_broker_dropped_total",
                 "wsprism_broker_roundtrip_seconds_bucket", "wsprism_broker_link_lost_total",
                 "wsprism_broker_reconciled_total", "wsprism_worker_restarts_total"):
        assert spec in used, spec


def test_name_check_catches_typos(g):
    families = scrape_families(g)
    for bad in ('sum(rate(wsprism_ws_upgrade_total[1m]))', 'sum(wsprism_ws_sessions_active{tenat="a"})',
                'rate(wsprism_policy_decisions_total{decision="allowed"}[1m])',
                'sum by (service) (wsprism_ws_sessions_active)'):
        with pytest.raises(AssertionError):
            check_names("typo", bad, families)


# -- promtool ----------------------------------------------------------------------------

def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_alerts_pass_promtool_check_and_unit_tests():
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0 and "SUCCESS: 22 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_dashboard_expressions_parse(tmp_path):
    rules = [{"record": f"wsprism:dashboard:{i}", "expr": substituted(e)}
             for i, (_, e) in enumerate(panel_exprs(dashboard()))]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


# -- a real Prometheus -------------------------------------------------------------------

def test_prometheus_evaluates_every_panel(g):
    prom = Prometheus([f"127.0.0.1:{g.port}"], interval=0.5)
    try:
        prom.wait_for_scrapes(4)
        traffic(g)                                # rates need an increase between two scrapes
        prom.wait_for_scrapes(8)
        results = {}
        for title, expr in panel_exprs(dashboard()):
            results[(title, expr)] = prom.query(substituted(expr))       # raises on a PromQL error
        for name, query in variable_queries(dashboard()):
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
            values = prom.api(f"label/{m.group(2)}/values", **{"match[]": substituted(m.group(1))})
            assert values, f"variable {name} would be empty"
        always = ["Sessions", "Inbound messages/s", "Gateway CPU", "Draining", "Sessions per tenant",
                  "Upgrades by HTTP status", "Messages allowed per lane", "Dispatch latency per lane",
                  "Dispatch latency histogram, Ext Lane", "Webhook latency per service", "Resident memory",
                  "File descriptors"]
        for (title, expr), series in results.items():
            if title in always:
                assert series, f"{title}: {expr} has no series"
        sessions = prom.query('sum by (tenant) (wsprism_ws_sessions_active{job="wsprism"})')
        assert {s["metric"]["tenant"] for s in sessions} == {"acme", "hook"}
    finally:
        prom.stop()
