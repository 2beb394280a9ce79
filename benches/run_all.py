"""Run the whole benchmark suite and regenerate the results part of docs/benchmarks.md.

    PYTHONPATH=. python benches/run_all.py            # full suite, about 8 minutes on 2 cores
    PYTHONPATH=. python benches/run_all.py --quick    # 1 repeat, short windows: a dry run
    PYTHONPATH=. python benches/run_all.py --render benches/results/latest.jsonl   # page only

Every case runs against the gateway (spawned from benches/configs/bench.yaml on a free
port) and both bare baselines, alternating targets run by run, 3 repeats. The runs go
to benches/results/latest.jsonl (one JSON line each, after a first `machine` line); the
page's text between the `bench:results` markers is replaced, the rest is left alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:
    import wsprism  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

from wsprism.loadgen import main as bench  # noqa: E402
from wsprism.loadgen.report import (  # noqa: E402
    CaseSummary,
    fmt_value,
    machine_info,
    ratio_value,
    render_markdown,
    summarize,
)

CONFIG = REPO / "benches" / "configs" / "bench.yaml"
RESULTS = REPO / "benches" / "results" / "latest.jsonl"
DOCS = REPO / "docs" / "benchmarks.md"
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"

# (scenario, extra arguments). The first rate of chat/hot, ping's --rate 100 and
# connect's --rate 200 are the fixed loads below saturation used for CPU per message.
SUITE = [
    ("connect", ["--conns", "50", "--rate", "200,0"]),
    ("ping", ["--conns", "100", "--rate", "100,0", "--inflight", "1,16"]),
    ("chat", ["--conns", "1000", "--rate", "20,50,100,150", "--duration", "1.5", "--drain", "1"]),
    ("hot", ["--conns", "1000", "--rate", "20,50,100,150", "--duration", "1.5", "--drain", "1"]),
    ("idle", ["--conns", "5000", "--warmup", "0", "--duration", "1"]),  # holding time only
]
FIXED = {"connect": 200.0, "ping": 100.0, "chat": 20.0, "hot": 20.0}
GATEWAY = "wsprism"


def run_suite(out: Path, quick: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "machine", "time": _now(), "quick": quick, **machine_info()}) + "\n")
    timing = ["--repeat", "1", "--duration", "1", "--warmup", "0.3"] if quick else \
        ["--repeat", "3", "--duration", "2", "--warmup", "0.5"]
    for scenario, extra in SUITE:  # a scenario's own timing options come last and win
        t0 = time.monotonic()
        print(f"== {scenario}", file=sys.stderr, flush=True)
        code = bench([scenario, "--spawn", str(CONFIG), "--baseline", *timing, *extra, "--json", str(out)])
        if code == 130:  # interrupted (Ctrl-C or SIGTERM): stop the whole suite
            raise SystemExit(130)
        print(f"   {scenario}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load(path: Path) -> tuple[dict, list[dict]]:
    machine: dict = {}
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("kind") == "machine":
            machine = rec
        elif "case" in rec:
            runs.append(rec)
    return machine, runs


def _find(summaries: list[CaseSummary], scenario: str, **params) -> CaseSummary | None:
    for s in summaries:
        if s.scenario == scenario and all(s.params.get(k) == v for k, v in params.items()):
            return s
    return None


def _row(summary: CaseSummary | None, target: str):
    if summary is None:
        return None
    return next((r for r in summary.rows if r.target == target), None)


def _ratio_line(summaries, label, scenario, metric, goal, params) -> list[str]:
    s = _find(summaries, scenario, **params)
    r = ratio_value(s, GATEWAY, "picows", metric) if s else None
    if r is None:
        return [label, "not measured", f"<= {goal}x", "unknown"]
    return [label, f"{r:.2f}x", f"<= {goal}x", "met" if r <= goal else f"missed by {r / goal - 1:.0%}"]


def _saturation(summaries, scenario: str, target: str):
    """Highest median delivered/s over the rate sweep, and whether the client or host was full there."""
    best = None
    for s in summaries:
        if s.scenario != scenario:
            continue
        row = _row(s, target)
        if row is None:
            continue
        v = row.cells["delivered/s"].median
        if v is not None and (best is None or v > best[0]):
            best = (v, row.client_limited > 0 or row.host_full > 0, s.params.get("rate"))
    return best


def gaps(summaries: list[CaseSummary]) -> list[list[str]]:
    rows = [
        _ratio_line(summaries, "Hot relay: server CPU per delivered msg vs bare picows broadcast (room 1000, 20 msg/s)",
                    "hot", "srv µs/msg", 1.25, {"rate": FIXED["hot"]}),
        _ratio_line(summaries, "Chat fan-out: server CPU per delivered msg vs bare picows broadcast (room 1000, 20 msg/s)",
                    "chat", "srv µs/msg", 2.0, {"rate": FIXED["chat"]}),
        _ratio_line(summaries, "Ping: server CPU per pong vs bare picows echo (100 conns x 100/s)",
                    "ping", "srv µs/msg", 1.5, {"rate": FIXED["ping"]}),
        _ratio_line(summaries, "Connect: server CPU per session vs bare picows (200 sessions/s)",
                    "connect", "srv µs/session", 2.0, {"rate": FIXED["connect"]}),
    ]
    g = _saturation(summaries, "hot", GATEWAY)
    b = _saturation(summaries, "hot", "picows")
    if g and b:
        ratio = g[0] / b[0]
        limited = g[1] or b[1]
        status = ("met" if ratio >= 0.85 else "missed") + (
            " (but the client or the host CPU was the limit: not a server saturation)" if limited else "")
        rows.append(["Hot relay at saturation: delivered msgs/s vs bare picows (best of the rate sweep)",
                     f"{ratio:.2f}x ({fmt_value(g[0], 'rate')} vs {fmt_value(b[0], 'rate')})", ">= 0.85x", status])
    else:
        rows.append(["Hot relay at saturation vs bare picows", "not measured", ">= 0.85x", "unknown"])
    idle = _row(_find(summaries, "idle"), GATEWAY)
    kb = idle.cells["KB/conn"].median if idle else None
    rows.append(["Idle memory per connection (5000 conns, server RSS delta / conns)",
                 f"{kb:.1f} KB" if kb is not None else "not measured", "<= 12 KB",
                 "unknown" if kb is None else "met" if kb <= 12 else f"missed by {kb / 12 - 1:.0%}"])
    behind = []
    compared = 0
    for s in summaries:
        metric = {"idle": "KB/conn", "connect": "srv µs/session"}.get(s.scenario, "srv µs/msg")
        r = ratio_value(s, GATEWAY, "websockets", metric)
        if r is None:
            continue
        compared += 1
        if r >= 1.0:
            behind.append(f"{s.case} ({r:.2f}x)")
    rows.append(["Ahead of the `websockets` library (server CPU per msg/session, KB per idle conn) in every case",
                 f"{compared - len(behind)} of {compared} cases ahead", "all",
                 "met" if compared and not behind else "missed: " + "; ".join(behind) if behind else "unknown"])
    return rows


def render(machine: dict, runs: list[dict]) -> str:
    summaries = summarize(runs)
    out = [START, ""]
    when = machine.get("time", "")
    how = "python benches/run_all.py" + (" --quick" if machine.get("quick") else "")
    out.append(f"Measured {when[:10]} with `{how}` ({len(runs)} runs; raw results in "
               f"`benches/results/latest.jsonl`).")
    out.append("")
    out.append("| machine | |")
    out.append("|---|---|")
    out.append(f"| CPU | {machine.get('cpu', '?')}, {machine.get('cores_logical', '?')} logical cores "
               f"({machine.get('cores_physical', '?')} physical), {machine.get('memory_gb', '?')} GB |")
    out.append(f"| OS | {machine.get('os', '?')} |")
    out.append(f"| Python | {machine.get('python', '?')} |")
    compiled = machine.get("wsprism_compiled")
    out.append(f"| wsprism | {machine.get('wsprism', '?')} at commit `{machine.get('commit') or '?'}`, "
               f"compiled fast path {'active' if compiled else 'inactive' if compiled is not None else '?'} |")
    libs = ", ".join(f"{k} {machine[k]}" for k in ("picows", "uvloop", "aiofastnet", "websockets", "psutil", "bun")
                     if machine.get(k))
    out.append(f"| libraries | {libs} |")
    out.append("")
    out.append("### Against the targets")
    out.append("")
    out.append("| target | measured | goal | status |")
    out.append("|---|---|---|---|")
    for row in gaps(summaries):
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    titles = {
        "connect": "### connect: new sessions per second",
        "ping": "### ping: sys:ping round trips",
        "chat": "### chat: Ext Lane fan-out to a room of 1000",
        "hot": "### hot: Hot Lane relay to a room of 1000",
        "idle": "### idle: memory per idle connection",
    }
    for scen, title in titles.items():
        part = [s for s in summaries if s.scenario == scen]
        if not part:
            continue
        out.append(title)
        out.append("")
        out.append(render_markdown(part))
    out.append(END)
    return "\n".join(out)


def write_docs(docs: Path, section: str) -> None:
    text = docs.read_text(encoding="utf-8") if docs.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    docs.write_text(head + section + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the benchmark suite and regenerate docs/benchmarks.md.")
    ap.add_argument("--quick", action="store_true", help="1 repeat and 1 s windows (a dry run; numbers are rough)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(REPO)})")
    ap.add_argument("--docs", type=Path, default=DOCS, help=f"page to update (default {DOCS.relative_to(REPO)})")
    ap.add_argument("--render", type=Path, metavar="RESULTS", help="only regenerate the page from a results file")
    ap.add_argument("--no-docs", action="store_true", help="run, but leave the page alone")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    src = args.render
    if src is None:
        run_suite(args.out, args.quick)
        src = args.out
    machine, runs = load(src)
    if not args.no_docs:
        write_docs(args.docs, render(machine, runs))
        print(f"updated {args.docs}", file=sys.stderr)
    print(f"done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    failed = [r for r in runs if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
