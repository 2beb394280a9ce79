"""A/B: one `wsprism bench` case against several source trees, alternated run by run.

    python benches/ab.py --tree base=/tmp/wsp-base --tree new=. --repeat 5 -- \\
        hot --conns 1000 --rate 50 --duration 3

Each tree must be a checkout with its compiled modules built in place
(`python setup.py build_ext --inplace`). For every repeat, the case runs once per tree,
in turn, each with the tree's own load generator and gateway (`--spawn` of the tree's
`benches/configs/bench.yaml` unless the arguments give one), so a drift of the machine
hits all trees alike. Prints, per tree, the median and min-max of server CPU per message
(or RSS per connection for `idle`) and throughput, and the ratio to the first tree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- then the wsprism bench arguments")
    args = ap.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree]
    bench = [a for a in args.bench if a != "--"]
    if "--spawn" not in bench:
        bench += ["--spawn", "benches/configs/bench.yaml"]
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for name, path in trees:
                out = Path(tmp) / f"{name}-{rep}.jsonl"
                root = Path(path).resolve()
                env = dict(os.environ, PYTHONPATH=str(root))
                cmd = [sys.executable, "-m", "wsprism", "bench", *bench, "--repeat", "1", "--json", str(out), "--quiet"]
                subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, timeout=600)
                if out.exists():
                    for line in out.read_text().splitlines():
                        r = json.loads(line)
                        if r.get("target") == "wsprism":
                            runs[name].append(r)
                            print(f"{name:8} #{rep + 1}: {_line(r)}", flush=True)
    first = None
    print()
    for name, rs in runs.items():
        vals = [_figure(r) for r in rs if _figure(r) is not None]
        rate = [r.get("delivered_per_s") or 0 for r in rs]
        if not vals:
            print(f"{name:8} no result")
            continue
        med = statistics.median(vals)
        first = first or med
        unit = "KB/conn" if rs[0]["scenario"] == "idle" else "µs/msg"
        print(f"{name:8} {med:8.3f} {unit} ({min(vals):.3f}-{max(vals):.3f})  x{med / first:.3f}"
              f"   delivered/s median {statistics.median(rate):,.0f}")
    return 0


def _figure(r: dict):
    srv = r.get("server") or {}
    if r.get("error"):
        return None
    return srv.get("rss_per_conn_kb") if r["scenario"] == "idle" else srv.get("cpu_us_per_msg")


def _line(r: dict) -> str:
    if r.get("error"):
        return "error: " + r["error"]
    srv = r.get("server") or {}
    if r["scenario"] == "idle":
        return f"{srv.get('rss_per_conn_kb')} KB/conn"
    lat = r.get("lat_us") or {}
    return (f"{r.get('delivered_per_s') or 0:,.0f}/s  srv {srv.get('cpu_pct')}%  {srv.get('cpu_us_per_msg')} µs/msg"
            f"  p99 {lat.get('p99', 0) / 1000:.1f} ms  client {(r.get('client') or {}).get('cpu_pct_max')}%")


if __name__ == "__main__":
    sys.exit(main())
