"""Run the whole benchmark suite and regenerate the results part of docs/benchmarks.md.

    PYTHONPATH=. python benches/run_all.py            # full suite, about 25 minutes on 2 cores
    PYTHONPATH=. python benches/run_all.py --quick    # 1 repeat, short windows: a dry run
    PYTHONPATH=. python benches/run_all.py --render benches/results/latest.jsonl   # page only

Every case runs against the gateway (spawned from benches/configs/bench.yaml on a free
port) and the bare baselines (picows, websockets, Bun; Bun is installed from npm into a
cache folder on first use, and skipped with a one-line reason where that fails),
alternating targets run by run, 3 repeats (7 for the echo tail-latency cases). Then
benches/backend_bench.py measures the webhook path, one message per POST and batched,
alternated. The runs go to benches/results/latest.jsonl (one JSON line each, after a
first `machine` line); the page's text between the `bench:results` markers is
replaced, the rest is left alone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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

# (scenario, extra arguments, extra arguments of the full run only). The first rate of
# chat/hot, ping's --rate 100 and connect's --rate 200 are the fixed loads below
# saturation used for CPU per message; the two echo cases at 300/s and 50/s per
# connection are the tail-latency ones (7 alternated repeats).
SUITE = [
    ("connect", ["--conns", "50", "--rate", "200,0"], []),
    ("ping", ["--conns", "100", "--rate", "100,0", "--inflight", "1,16"], []),
    ("ping", ["--conns", "100", "--rate", "300", "--duration", "3"], ["--repeat", "7"]),
    ("ping", ["--conns", "1000", "--rate", "50", "--duration", "3"], ["--repeat", "7"]),
    ("chat", ["--conns", "1000", "--rate", "20,50,100,150", "--duration", "1.5", "--drain", "1"], []),
    ("hot", ["--conns", "1000", "--rate", "20,50,100,150", "--duration", "1.5", "--drain", "1"], []),
    ("idle", ["--conns", "5000", "--warmup", "0", "--duration", "1"], []),  # holding time only
    ("idle", ["--conns", "20000", "--procs", "2", "--warmup", "0", "--duration", "1", "--repeat", "1"], []),
]
BASELINES = "picows,websockets,bun"
FIXED = {"connect": 200.0, "ping": 100.0, "chat": 20.0, "hot": 20.0}
TAIL = ((100, 300.0), (1000, 50.0))          # echo p99 cases: (conns, pings/s per connection)
GATEWAY = "wsprism"
# The webhook path before issue 14 (aiohttp's client; commit 8a301dc built in a
# `git archive` copy, driven by this tree's benches/backend_bench.py with the service's
# `batch_max_messages` line removed (that key came later): `--phases ping,webhook
# --seconds 4`, 50 sessions x 8 in flight, median of 5 runs alternated with main,
# 2026-12-02). Re-measure it the same way when the machine's speed changes: on
# 2026-12-01 it was 176 us, on a machine about 1.3x faster (sys:ping 4-6.5 us, 7.7 us now).
WEBHOOK_BEFORE = {"cpu_us_per_msg": 255.2, "msgs_per_core_s": 3918.0}
BACKEND_BENCH = REPO / "benches" / "backend_bench.py"


def run_suite(out: Path, quick: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "machine", "time": _now(), "quick": quick, **machine_info()}) + "\n")
    timing = ["--repeat", "1", "--duration", "1", "--warmup", "0.3"] if quick else \
        ["--repeat", "3", "--duration", "2", "--warmup", "0.5"]
    for scenario, extra, full in SUITE:  # a scenario's own timing options come last and win
        t0 = time.monotonic()
        print(f"== {scenario} {' '.join(extra)}", file=sys.stderr, flush=True)
        # server on CPU 0, the load generator on CPU 1 (issue 14's same-pinning rule)
        code = bench([scenario, "--spawn", str(CONFIG), "--baselines", BASELINES, "--pin", "0:1", *timing, *extra,
                      *([] if quick else full), "--json", str(out)])
        if code == 130:  # interrupted (Ctrl-C or SIGTERM): stop the whole suite
            raise SystemExit(130)
        print(f"   {scenario}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    run_backend(out, quick)


def run_backend(out: Path, quick: bool) -> None:
    """The webhook path (benches/backend_bench.py): one message per POST, then batches
    of up to 8, alternated; each run appends one `backend` line to `out`."""
    print("== backend path", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    seconds = ["--seconds", "1", "--conns", "20"] if quick else ["--seconds", "4"]
    for _ in range(1 if quick else 3):
        for batch in (1, 8):
            phases = "ping,webhook,floor" if batch == 1 else "ping,webhook"   # the floor is unbatched
            proc = subprocess.run([sys.executable, str(BACKEND_BENCH), "--phases", phases, "--batch",
                                   str(batch), *seconds, "--json", str(out)],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                print(f"   backend_bench --batch {batch} failed: {tail[0]}", file=sys.stderr, flush=True)
    print(f"   backend path: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


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
        elif rec.get("kind") == "backend":
            runs.append(rec)
        elif "case" in rec:
            runs.append(rec)
    return machine, runs


def backend_summary(runs: list[dict]) -> dict:
    """{batch: {metric: (median, lo, hi)}} over the `backend` lines."""
    out: dict = {}
    for batch in sorted({r["batch"] for r in runs if r.get("kind") == "backend"}):
        these = [r for r in runs if r.get("kind") == "backend" and r["batch"] == batch]
        rs, pings, floors = ([r[phase] for r in these if r.get(phase)] for phase in ("webhook", "ping", "floor"))
        vals = {
            "msgs/s": [w["messages_per_s"] for w in rs],
            "gw µs/msg": [w["gateway_cpu_us_per_msg"] for w in rs],
            "msgs per gw core-s": [w["messages_per_s"] / w["gateway_cpu_share"] for w in rs if w["gateway_cpu_share"]],
            "backend µs/msg": [w["backend_cpu_us_per_msg"] for w in rs],
            "rtt p50 ms": [w["rtt_p50_ms"] for w in rs],
            "sys:ping gw µs/msg": [p["gateway_cpu_us_per_msg"] for p in pings],
            "floor µs/msg": [f["gateway_cpu_us_per_msg"] for f in floors],
            "load": [r["load"] for r in these],
        }
        out[batch] = {k: (statistics.median(v), min(v), max(v)) if v else None for k, v in vals.items()}
        out[batch]["runs"] = len(rs)
    return out


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


def _goal_line(label: str, value: float | None, text: str, goal: float, goal_text: str, higher=False):
    if value is None:
        return [label, "not measured", goal_text, "unknown"]
    ok = value >= goal if higher else value <= goal
    miss = (goal / value - 1) if higher else (value / goal - 1)
    return [label, text, goal_text, "met" if ok else f"missed by {miss:.0%}"]


def gaps(summaries: list[CaseSummary], backend: dict | None = None) -> list[list[str]]:
    rows = [
        _ratio_line(summaries, "Hot relay: server CPU per delivered msg vs bare picows broadcast (room 1000, 20 msg/s)",
                    "hot", "srv µs/msg", 1.25, {"rate": FIXED["hot"]}),
        _ratio_line(summaries, "Chat fan-out: server CPU per delivered msg vs bare picows broadcast (room 1000, 20 msg/s)",
                    "chat", "srv µs/msg", 2.0, {"rate": FIXED["chat"]}),
        _ratio_line(summaries, "Ping: server CPU per pong vs bare picows echo (100 conns x 100/s)",
                    "ping", "srv µs/msg", 1.5, {"rate": FIXED["ping"]}),
        _ratio_line(summaries, "Connect: server CPU per session vs bare picows (200 sessions/s)",
                    "connect", "srv µs/session", 1.0, {"rate": FIXED["connect"]}),
    ]
    s = _find(summaries, "connect", rate=FIXED["connect"])
    r = ratio_value(s, GATEWAY, "bun", "srv µs/session") if s else None
    rows.append(_goal_line("Connect: server CPU per session vs Bun (200 sessions/s; stretch)", r,
                           f"{r:.2f}x" if r is not None else "", 1.3, "<= 1.3x"))
    for conns, rate in TAIL:
        s = _find(summaries, "ping", conns=conns, rate=rate)
        r = ratio_value(s, GATEWAY, "picows", "p99 µs") if s else None
        runs = next((row.runs for row in s.rows if row.target == GATEWAY), 0) if s else 0
        rows.append(_goal_line(f"Echo p99 latency vs bare picows ({conns} conns x {rate:g}/s, median of {runs})", r,
                               f"{r:.2f}x" if r is not None else "", 1.5, "<= 1.5x"))
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
    for conns in (5000, 20000):
        idle = _row(_find(summaries, "idle", conns=conns), GATEWAY)
        kb = idle.cells["KB/conn"].median if idle else None
        rows.append(_goal_line(f"Idle memory per connection ({conns} conns, server RSS delta / conns)", kb,
                               f"{kb:.1f} KB" if kb is not None else "", 6.0, "<= 6 KB"))
    for batch in sorted(backend or {}):
        b = backend[batch]
        cpu = b["gw µs/msg"][0] if b.get("gw µs/msg") else None
        kind = "one message per POST" if batch == 1 else f"batches of up to {batch}"
        rows.append(_goal_line(f"Webhook: gateway CPU per forwarded message ({kind})", cpu,
                               f"{cpu:.1f} µs (before: {WEBHOOK_BEFORE['cpu_us_per_msg']:.0f} µs)" if cpu else "",
                               15.0, "<= 15 µs"))
        if batch == 1 and b.get("msgs per gw core-s"):
            gain = b["msgs per gw core-s"][0] / WEBHOOK_BEFORE["msgs_per_core_s"]
            rows.append(_goal_line("Webhook: forwarded messages per gateway core-second vs before (unbatched)", gain,
                                   f"{gain:.1f}x ({b['msgs per gw core-s'][0]:,.0f}/s)", 3.0, ">= 3x", higher=True))
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
    backend = backend_summary(runs)
    runs = [r for r in runs if r.get("kind") != "backend"]
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
    for row in gaps(summaries, backend):
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
    if backend:
        out.append(render_backend(backend))
    out.append(END)
    return "\n".join(out)


def render_backend(backend: dict) -> str:
    cols = ["msgs/s", "gw µs/msg", "msgs per gw core-s", "backend µs/msg", "rtt p50 ms", "sys:ping gw µs/msg",
            "floor µs/msg", "load"]
    out = ["### backend path: service webhook, 50 sessions x 8 in flight (`benches/backend_bench.py`)", "",
           "| POST carries | runs | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]

    def cell(v, spread):
        if v is None:
            return "-"
        med, lo, hi = v
        f = (lambda x: f"{x:,.0f}") if med >= 100 else (lambda x: f"{x:.1f}")
        return f(med) + (f" [{f(lo)}-{f(hi)}]" if spread and f(lo) != f(hi) else "")

    for batch, b in sorted(backend.items()):
        what = "1 message" if batch == 1 else f"up to {batch} messages"
        out.append(f"| {what} | {b['runs']} | " + " | ".join(cell(b.get(c), c != "load") for c in cols) + " |")
    out.append("")
    out.append(f"Before issue 14 (aiohttp's client, one message per POST): {WEBHOOK_BEFORE['cpu_us_per_msg']:.0f} µs "
               f"of gateway CPU per message, {WEBHOOK_BEFORE['msgs_per_core_s']:,.0f} messages per gateway core-second. "
               "`sys:ping gw µs/msg` is the same closed loop answered by the gateway itself; `floor µs/msg` the CPU per "
               "message of a bare picows forwarder in the same loop (`--phases floor`: no gateway logic, what any "
               "Python forwarder on picows + uvloop pays unbatched); `load` is the machine's "
               "1-minute load average at the end of each run.")
    out.append("")
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
