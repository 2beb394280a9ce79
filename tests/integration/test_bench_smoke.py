"""Smoke test of `wsprism bench`: every scenario, briefly, against the gateway and both baselines.

Real sockets and real server processes (the gateway from benches/configs/bench.yaml,
benches/baselines/*.py) on free ports of 127.0.0.1; a few connections, fractions of a
second per run. It checks that the numbers are sane, not how good they are.
"""
import json
from pathlib import Path

import pytest

from wsprism.loadgen import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "benches" / "configs" / "bench.yaml"
TARGETS = ("wsprism", "picows", "websockets")
SCENARIOS = ("connect", "ping", "chat", "hot", "idle")
CONNS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "runs.jsonl"
    code = main([
        "all", "--spawn", str(CONFIG), "--baseline",
        "--conns", str(CONNS), "--repeat", "1",
        "--duration", "0.25", "--warmup", "0.05", "--drain", "1", "--connect-timeout", "3",
        "--keep-server", "--json", str(out), "--quiet",
    ])
    lines = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    return code, {(r["scenario"], r["target"]): r for r in lines}


def test_every_run_reported_and_clean(runs):
    code, by_key = runs
    assert set(by_key) == {(s, t) for s in SCENARIOS for t in TARGETS}
    problems = {k: r.get("error") or r.get("errors") for k, r in by_key.items() if r.get("error") or r.get("errors")}
    assert problems == {}
    assert code == 0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scenario", ["connect", "ping", "chat", "hot"])
def test_traffic_numbers_are_sane(runs, scenario, target):
    r = runs[1][(scenario, target)]
    assert r["delivered"] > 0
    assert r["delivered_per_s"] > 0
    lat = r["lat_us"]
    assert lat["p50"] is not None and 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert lat["p99"] < 1_000_000  # under a second on an idle loopback
    # psutil reads CPU time in clock ticks (10 ms): a light run may round down to 0.
    assert r["server"]["cpu_pct"] is not None
    assert r["server"]["cpu_us_per_msg"] is not None and r["server"]["cpu_us_per_msg"] >= 0
    assert r["client"]["cpu_pct_max"] is not None
    if scenario in ("chat", "hot"):
        assert r["members"] == CONNS
        assert r["delivered"] == r["sent"] * CONNS  # nobody is slow at this load: nothing lost
    if scenario == "ping":
        assert r["delivered"] == r["sent"]


@pytest.mark.parametrize("target", TARGETS)
def test_idle_measures_memory(runs, target):
    r = runs[1][("idle", target)]
    assert r["conns_ok"] == CONNS
    srv = r["server"]
    assert srv["rss_after_mb"] > 0 and srv["rss_before_mb"] > 0
    assert "rss_per_conn_kb" in srv
