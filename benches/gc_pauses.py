"""How long the collector stops the gateway's loop while sessions come and go.

    python benches/gc_pauses.py [--idle 10000] [--more 5000] [--rate 200] [--seconds 20]

Starts the gateway (`python -m wsprism start`) with a hook that times every collection
(gc.callbacks), opens `--idle` idle connections from a client process, then runs
`wsprism bench connect --rate R` (sessions opened and closed) against it for
`--seconds`, waits for a liveness sweep (`ping_interval_ms` is set to 5 s here) and
opens `--more` idle connections. Prints the collections by generation in each of the
three phases: count, total and longest pause, and how many objects the collector
tracks. With `--no-freeze`
the gateway is started with WSPRISM_GC_FREEZE=0 (docs/operations.md, "Garbage
collector"), for the before/after.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

from idle_memory import free_port, start_gateway, stop  # noqa: E402

_HOOK = r"""
import gc, json, os, runpy, signal, sys, time
pauses = []
t0 = [0.0]
def cb(phase, info):
    if phase == "start":
        t0[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - t0[0]))
gc.callbacks.append(cb)
def dump(signum, frame):
    with open(os.environ["GC_PAUSES_OUT"], "w") as f:
        json.dump({"pauses": pauses, "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}, f)
    pauses.clear()
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["wsprism"] + sys.argv[1:]
runpy.run_module("wsprism", run_name="__main__", alter_sys=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--more", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--no-freeze", action="store_true")
    ap.add_argument("--config", default=str(ROOT / "benches" / "configs" / "bench.yaml"))
    args = ap.parse_args()
    import yaml

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load(Path(args.config).read_text())
        cfg.setdefault("gateway", {})["listen"] = f"127.0.0.1:{port}"
        cfg["gateway"]["ping_interval_ms"] = 5000
        cfg_path = Path(tmp) / "gw.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        out = Path(tmp) / "pauses.json"
        env = dict(os.environ, GC_PAUSES_OUT=str(out), PYTHONPATH=str(ROOT))
        if args.no_freeze:
            env["WSPRISM_GC_FREEZE"] = "0"

        gw = start_gateway(_HOOK, cfg_path, port, env)
        client = more = None
        try:
            url = f"ws://127.0.0.1:{port}/v1/ws?tenant=bench&ticket=dev:idle{{i}}"
            client = subprocess.Popen([sys.executable, str(ROOT / "benches" / "idle_memory.py"), "--client", url,
                                       str(args.idle), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError("client did not get its connections up")
            time.sleep(1.0)
            ramp = _dump(gw, out)                       # the pauses while the idle sessions were opened
            subprocess.run([sys.executable, "-m", "wsprism", "bench", "connect", "--url",
                            f"ws://127.0.0.1:{port}/v1/ws", "--tenant", "bench", "--conns", "50",
                            "--rate", str(args.rate), "--duration", str(args.seconds), "--warmup", "0",
                            "--repeat", "1", "--quiet"], env=env, stdout=subprocess.DEVNULL, timeout=120 + args.seconds)
            churn = _dump(gw, out)
            time.sleep(6.0)                             # a liveness sweep
            _dump(gw, out)
            more = subprocess.Popen([sys.executable, str(ROOT / "benches" / "idle_memory.py"), "--client",
                                     url.replace("idle{i}", "more{i}"), str(args.more), "0"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            if more.stdout.readline().strip() != "ready":
                raise RuntimeError("client did not get its connections up")
            later = _dump(gw, out)
        finally:
            stop(gw, client, more)
    print(f"freeze {'off' if args.no_freeze else 'on'}")
    _report(f"opening {args.idle} idle sessions", ramp)
    _report(f"then {args.rate:g} connects/s for {args.seconds:g} s", churn)
    _report(f"then, after a liveness sweep, {args.more} more idle sessions", later)
    return 0


def _dump(gw, out: Path) -> dict:
    if out.exists():
        out.unlink()
    gw.send_signal(signal.SIGUSR2)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        time.sleep(0.2)
        try:
            return json.loads(out.read_text())
        except (OSError, ValueError):
            pass
    raise RuntimeError("the gateway did not dump its pauses")


def _report(what: str, data: dict) -> None:
    print(f"  {what}: {data['tracked']} objects tracked, {data['frozen']} frozen")
    for gen in (0, 1, 2):
        ps = [d for g, d in data["pauses"] if g == gen]
        if ps:
            print(f"    gen{gen}: {len(ps):5d} collections, total {sum(ps) * 1000:8.1f} ms, "
                  f"longest {max(ps) * 1000:7.2f} ms")
        else:
            print(f"    gen{gen}:     0 collections")


if __name__ == "__main__":
    sys.exit(main())
