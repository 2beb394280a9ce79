"""Smoke test of `wsprism bench`: every scenario, briefly, against the gateway and the baselines.

Real sockets and real server processes (the gateway from benches/configs/bench.yaml,
the baselines shipped in wsprism/loadgen/baselines/, Bun installed from npm into the
cache folder on first use) on free ports of 127.0.0.1; a few connections, fractions of a
second per run. It checks that the numbers are sane, not how good they are.
(scripts/check_wheel.sh runs `wsprism bench --spawn wsprism.yaml --baseline` from an
installed wheel, outside the source tree.)
"""
import json
import re
import stat
from pathlib import Path

import pytest

from wsprism.loadgen import main
from wsprism.loadgen.targets import SpawnedTarget, TargetError, bench_identity

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "benches" / "configs" / "bench.yaml"
TARGETS = ("wsprism", "picows", "websockets", "bun")
SCENARIOS = ("connect", "ping", "chat", "hot", "idle")
CONNS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "runs.jsonl"
    code = main([
        "all", "--spawn", str(CONFIG), "--baselines", "picows,websockets,bun",
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


SHORT = ["--conns", "2", "--repeat", "1", "--duration", "0.2", "--warmup", "0.05", "--drain", "1",
         "--connect-timeout", "3", "--quiet"]


def _runs_of(path: Path) -> dict:
    return {r["target"]: r for r in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip())}


@pytest.mark.parametrize("npm", ["missing", "fails"])
def test_bun_unavailable_is_one_line_and_the_others_still_run(tmp_path, monkeypatch, capsys, npm):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if npm == "fails":
        fake = bindir / "npm"
        fake.write_text("#!/bin/sh\necho 'npm ERR! code E404' >&2\necho 'npm ERR! 404 Not Found' >&2\nexit 1\n")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bindir))          # no npm (or the failing one) on PATH
    monkeypatch.setenv("WSPRISM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WSPRISM_BUN", raising=False)
    out = tmp_path / "runs.jsonl"
    code = main(["ping", "--spawn", str(CONFIG), "--baselines", "picows,bun", *SHORT, "--json", str(out)])
    err = capsys.readouterr().err
    bun_lines = [ln for ln in err.splitlines() if "bun" in ln and "error" in ln and "runs had errors" not in ln]
    why = "npm not found" if npm == "missing" else "npm install bun@"
    assert len(bun_lines) == 1 and why in bun_lines[0], err
    if npm == "fails":
        assert "failed (exit 1): npm ERR! code E404" in bun_lines[0]
    assert code == 1
    runs = _runs_of(out)
    assert runs["bun"]["error"].startswith("bun baseline skipped: ")
    for target in ("wsprism", "picows"):
        assert not runs[target].get("error") and runs[target]["delivered"] > 0
    assert not (tmp_path / "cache" / "bun").exists()      # nothing half-installed left behind


def test_spawn_takes_tenant_and_dev_ticket_from_the_config(tmp_path):
    """The repo's wsprism.yaml has tenant acme (dev auth), not `bench`."""
    assert bench_identity(str(REPO / "wsprism.yaml"), None, None) == ("acme", "dev:u{i}")
    out = tmp_path / "runs.jsonl"
    code = main(["chat", "--spawn", str(REPO / "wsprism.yaml"), *SHORT, "--json", str(out)])
    r = _runs_of(out)["wsprism"]
    assert code == 0 and not r.get("error") and not r.get("errors")
    assert r["delivered"] == r["sent"] * 2 > 0


def test_identity_rules(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: 1\ntenants:\n  - id: bank\n    auth: {mode: jwt, secret: x}\n"
                   "  - id: play\n  - id: fixed\n    auth: {mode: static, tickets: {t1: alice}}\n")
    assert bench_identity(str(cfg), None, None) == ("play", "dev:u{i}")      # first dev-auth tenant
    assert bench_identity(str(cfg), "fixed", "t1") == ("fixed", "t1")
    with pytest.raises(TargetError, match=r"^tenant 'bank' of .* uses jwt auth: give --ticket"):
        bench_identity(str(cfg), "bank", None)
    with pytest.raises(TargetError, match=r"^tenant 'nope' is not in .* \(it has bank, play, fixed\)$"):
        bench_identity(str(cfg), "nope", None)
    cfg.write_text("version: 1\ntenants: []\n")
    with pytest.raises(TargetError, match="has no tenants"):
        bench_identity(str(cfg), None, None)


@pytest.mark.parametrize("args, reason", [
    (["--tenant", "nope"], "bad usage"),
    (["--ticket", "zz"], "HTTP 401 (ticket rejected)"),
])
def test_refusals_are_named_in_one_line(tmp_path, capsys, args, reason):
    cfg = tmp_path / "static.yaml"
    cfg.write_text((REPO / "wsprism.yaml").read_text().replace(
        "    auth:\n      mode: dev\n", "    auth:\n      mode: static\n      tickets: {good: alice}\n", 1))
    code = main(["ping", "--spawn", str(cfg), *SHORT, *args])
    err = capsys.readouterr().err
    if reason == "bad usage":
        assert code == 2
        assert err.strip() == f"wsprism bench: error: tenant 'nope' is not in {cfg} (it has acme)"
    else:
        assert code == 1
        line = [ln for ln in err.splitlines() if "runs had errors" in ln]
        assert len(line) == 1, err
        assert re.search(r"no connection to ws://127\.0\.0\.1:\d+/v1/ws\?tenant=acme: HTTP 401 \(ticket rejected\)$",
                         line[0]), line[0]


def test_unknown_tenant_at_a_running_gateway_is_named(capsys):
    """--url with a tenant the gateway does not have: the 400's reason, not just "HTTP 400"."""
    t = SpawnedTarget("wsprism", "gateway", config=str(CONFIG))
    t.start()
    try:
        code = main(["ping", "--url", f"ws://127.0.0.1:{t.port}", "--tenant", "other", *SHORT])
    finally:
        t.cleanup()
    err = capsys.readouterr().err
    assert code == 1
    assert "no connection to ws://127.0.0.1:%d/v1/ws?tenant=other: HTTP 400 (unknown tenant)" % t.port in err


def test_pin_puts_the_server_and_the_clients_on_their_cpus(tmp_path, monkeypatch):
    """--pin 0:0 (this host may have one core): the spawned server and the client processes
    run with that CPU set; PIN is reset afterwards so other tests run unpinned."""
    import os

    from wsprism.loadgen import runner, targets

    seen = {}
    real = os.sched_setaffinity

    def record(pid, cpus):
        if pid:
            seen.setdefault("client", set(cpus))
        else:                                   # in the server's child, before exec
            (tmp_path / "server-cpus").write_text(",".join(map(str, sorted(cpus))))
        return real(pid, cpus)

    monkeypatch.setattr(os, "sched_setaffinity", record)
    monkeypatch.setattr(targets, "PIN", {"server": None, "client": None})
    monkeypatch.setattr(runner, "PIN", targets.PIN)
    out = tmp_path / "runs.jsonl"
    code = main(["ping", "--spawn", str(CONFIG), *SHORT, "--pin", "0:0", "--json", str(out)])
    assert code == 0
    assert seen == {"client": {0}} and (tmp_path / "server-cpus").read_text() == "0"


@pytest.mark.parametrize("bad", ["0", "a:1", "0:", "0:b-1"])
def test_pin_wants_two_cpu_lists(capsys, bad):
    assert main(["ping", "--spawn", str(CONFIG), "--pin", bad]) == 2
    assert "--pin wants SERVER:CLIENT CPU lists" in capsys.readouterr().err


def test_nodes_spread_a_room_over_gateways_on_one_redis(tmp_path):
    """`--nodes 1,2`: one gateway alone, then two broker nodes on a redis-server the bench
    starts; the second target reports each node's CPU per delivery to its own members,
    Redis' own cost and the publishes each node sent (frames per publish)."""
    out = tmp_path / "runs.jsonl"
    code = main(["hot", "--spawn", str(CONFIG), "--nodes", "1,2", "--conns", "8", "--rooms", "2",
                 "--senders", "2", "--rate", "50", "--repeat", "1", "--duration", "0.5", "--warmup", "0.2",
                 "--drain", "1", "--json", str(out), "--quiet"])
    assert code == 0
    runs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert {r["target"] for r in runs} == {"wsprism", "wsprism x2 nodes"}
    for r in runs:
        assert r["case"].startswith(f"{r['scenario']} rooms=2x4 senders=2")
        assert r["drops"] == 0 and r["delivered"] == r["expected"] > 0, r
        srv = r["server"]
        if r["target"] == "wsprism":
            assert "nodes" not in srv
            continue
        names = [n["name"] for n in srv["nodes"]]
        assert names == ["node0", "node1", "redis"]
        assert all(n["cpu_us_per_delivery"] for n in srv["nodes"][:2]), srv
        lane = "hot" if r["scenario"] == "hot" else "ext"
        pubs = srv["node_publishes"][0][lane]
        assert pubs["frames"] >= pubs["publishes"] > 0
        assert "publish" in srv["commandstats"]
