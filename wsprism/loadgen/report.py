"""Tables from run results: medians over repeats, min-max spread, gateway/baseline ratios.

Works on the JSON-line dicts produced by :func:`wsprism.loadgen.runner.run_once`, so
the same code prints the table after a `wsprism bench` command and renders
docs/benchmarks.md from a results file (benches/run_all.py).
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Callable

BASELINE_NAMES = ("picows", "websockets", "bun")


def _get(path: str) -> Callable[[dict], float | None]:
    keys = path.split(".")

    def get(run: dict):
        v = run
        for k in keys:
            if not isinstance(v, dict):
                return None
            v = v.get(k)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return get


def _drop_pct(run: dict) -> float | None:
    exp = run.get("expected")
    if not exp:
        return None
    return 100.0 * run.get("drops", 0) / exp


@dataclass
class Metric:
    name: str  # column header
    get: Callable[[dict], float | None]
    fmt: str  # "rate", "us", "ms", "pct", "mb", "kb", "num"
    spread: bool = False
    lower_is_better: bool = True


def metrics_for(scenario: str) -> list[Metric]:
    srv_cpu = Metric("srv CPU %", _get("server.cpu_pct"), "pct")
    cli_cpu = Metric("client CPU % (max)", _get("client.cpu_pct_max"), "pct")
    per_msg = Metric("srv µs/msg", _get("server.cpu_us_per_msg"), "us", spread=True)
    if scenario == "idle":
        return [
            Metric("conns", _get("conns_ok"), "num"),
            Metric("RSS before MB", _get("server.rss_before_mb"), "mb"),
            Metric("RSS after MB", _get("server.rss_after_mb"), "mb"),
            Metric("KB/conn", _get("server.rss_per_conn_kb"), "kb", spread=True),
            srv_cpu,
        ]
    unit = "ms" if scenario == "connect" else "us"
    label = "ms" if scenario == "connect" else "µs"
    lat = [
        Metric(f"p50 {label}", _get("lat_us.p50"), unit),
        Metric(f"p99 {label}", _get("lat_us.p99"), unit, spread=True),
        Metric(f"p999 {label}", _get("lat_us.p999"), unit),
    ]
    if scenario == "connect":
        return [
            Metric("sessions/s", _get("delivered_per_s"), "rate", spread=True, lower_is_better=False),
            *lat,
            srv_cpu,
            Metric("srv µs/session", _get("server.cpu_us_per_msg"), "us", spread=True),
            cli_cpu,
        ]
    if scenario == "ping":
        return [
            Metric("msgs/s", _get("delivered_per_s"), "rate", spread=True, lower_is_better=False),
            *lat,
            srv_cpu,
            per_msg,
            cli_cpu,
        ]
    return [
        Metric("offered/s", _get("offered_per_s"), "rate"),
        Metric("delivered/s", _get("delivered_per_s"), "rate", spread=True, lower_is_better=False),
        Metric("drop %", _drop_pct, "pct"),
        *lat,
        srv_cpu,
        per_msg,
        cli_cpu,
    ]


@dataclass
class Cell:
    median: float | None
    lo: float | None
    hi: float | None


@dataclass
class TargetRow:
    target: str
    runs: int = 0
    failed: int = 0
    cells: dict = field(default_factory=dict)  # metric name -> Cell
    errors: list = field(default_factory=list)
    client_limited: int = 0
    host_full: int = 0


@dataclass
class CaseSummary:
    case: str
    scenario: str
    params: dict
    metrics: list
    rows: list  # TargetRow, in target order


def summarize(results: list[dict]) -> list[CaseSummary]:
    by_case: dict[str, dict[str, list[dict]]] = {}
    first: dict[str, dict] = {}
    for r in results:
        by_case.setdefault(r["case"], {}).setdefault(r["target"], []).append(r)
        first.setdefault(r["case"], r)
    out = []
    for case, targets in by_case.items():
        scen = first[case]["scenario"]
        metrics = metrics_for(scen)
        rows = []
        for name, runs in targets.items():
            row = TargetRow(target=name, runs=len(runs))
            good = [r for r in runs if not r.get("error")]
            row.failed = len(runs) - len(good)
            for r in runs:
                if r.get("error"):
                    row.errors.append(r["error"])
                elif r.get("errors"):
                    row.errors.append(", ".join(f"{k} x{v}" for k, v in sorted(r["errors"].items())))
                if (r.get("client") or {}).get("limited"):
                    row.client_limited += 1
                elif r.get("host_full"):
                    row.host_full += 1
            for m in metrics:
                vals = [v for v in (m.get(r) for r in good) if v is not None]
                row.cells[m.name] = Cell(statistics.median(vals), min(vals), max(vals)) if vals \
                    else Cell(None, None, None)
            rows.append(row)
        out.append(CaseSummary(case, scen, first[case].get("params", {}), metrics, rows))
    return out


def fmt_value(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "rate":
        if v >= 1e6:
            return f"{v / 1e6:.2f}M"
        if v >= 999.5:
            return f"{v / 1e3:.1f}k"
        return f"{v:.0f}"
    if kind == "us":
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    if kind == "ms":
        return f"{v / 1000:.2f}"
    if kind == "pct":
        return f"{v:.1f}" if v < 10 else f"{v:.0f}"
    if kind in ("mb", "kb"):
        return f"{v:.1f}"
    return f"{v:g}"


def fmt_cell(cell: Cell, m: Metric, spread: bool = True) -> str:
    text = fmt_value(cell.median, m.fmt)
    if spread and m.spread and cell.lo is not None:
        lo, hi = fmt_value(cell.lo, m.fmt), fmt_value(cell.hi, m.fmt)
        if lo != hi:
            text += f" [{lo}-{hi}]"
    return text


def _note(row: TargetRow) -> str:
    notes = []
    if row.client_limited:
        notes.append(f"client-limited ({row.client_limited}/{row.runs})")
    if row.host_full:
        notes.append(f"host CPU full ({row.host_full}/{row.runs})")
    if row.failed:
        notes.append(f"failed {row.failed}/{row.runs}: {row.errors[0]}")
    elif row.errors:
        notes.append(f"errors: {row.errors[0]}")
    return "; ".join(notes)


def _head_metric(summary: CaseSummary) -> tuple[Metric | None, Metric | None]:
    """(efficiency metric, throughput metric) used for ratios."""
    eff = thr = None
    for m in summary.metrics:
        if m.name in ("srv µs/msg", "srv µs/session", "KB/conn"):
            eff = m
        if m.name in ("msgs/s", "sessions/s", "delivered/s"):
            thr = m
    return eff, thr


def ratios(summary: CaseSummary) -> list[str]:
    """'wsprism/picows: srv µs/msg 1.31x, delivered/s 0.92x' for each baseline present."""
    rows = {r.target: r for r in summary.rows}
    gateways = [r for r in summary.rows if r.target not in BASELINE_NAMES]
    eff, thr = _head_metric(summary)
    lines = []
    for g in gateways:
        for b in BASELINE_NAMES:
            if b not in rows:
                continue
            parts = []
            for m in (eff, thr):
                if m is None:
                    continue
                gv, bv = g.cells[m.name].median, rows[b].cells[m.name].median
                if gv is not None and bv:
                    parts.append(f"{m.name} {gv / bv:.2f}x")
            if parts:
                lines.append(f"{g.target}/{b}: " + ", ".join(parts))
    return lines


def ratio_value(summary: CaseSummary, gateway: str, baseline: str, metric: str) -> float | None:
    rows = {r.target: r for r in summary.rows}
    if gateway not in rows or baseline not in rows:
        return None
    gv = rows[gateway].cells.get(metric)
    bv = rows[baseline].cells.get(metric)
    if not gv or not bv or gv.median is None or not bv.median:
        return None
    return gv.median / bv.median


def render_text(summaries: list[CaseSummary]) -> str:
    out = []
    for s in summaries:
        headers = ["target", "runs"] + [m.name for m in s.metrics] + ["note"]
        lines = []
        for row in s.rows:
            lines.append([row.target, str(row.runs)] + [fmt_cell(row.cells[m.name], m) for m in s.metrics]
                         + [_note(row)])
        widths = [max(len(h), *(len(ln[k]) for ln in lines)) for k, h in enumerate(headers)]
        out.append(f"== {s.case}")
        out.append("  ".join(h.ljust(widths[k]) for k, h in enumerate(headers)).rstrip())
        for ln in lines:
            out.append("  ".join(c.ljust(widths[k]) for k, c in enumerate(ln)).rstrip())
        for r in ratios(s):
            out.append("   " + r)
        out.append("")
    return "\n".join(out)


def render_markdown(summaries: list[CaseSummary], spread: bool = True) -> str:
    out = []
    for s in summaries:
        headers = ["target"] + [m.name for m in s.metrics] + ["note"]
        out.append(f"**{s.case}**")
        out.append("")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" for _ in headers) + "|")
        for row in s.rows:
            cells = [row.target] + [fmt_cell(row.cells[m.name], m, spread) for m in s.metrics] + [_note(row)]
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        rl = ratios(s)
        if rl:
            out.append("")
            out.append("Ratios of medians: " + "; ".join(rl) + ".")
        out.append("")
    return "\n".join(out)


def machine_info() -> dict:
    """What the numbers were measured on: cores, CPU, Python and the libraries in play."""
    import importlib.metadata as md
    import platform

    import psutil

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from wsprism import __version__ as wsprism_version
        from wsprism._fast import USING_EXTENSIONS as compiled
    except ImportError:
        wsprism_version, compiled = None, None
    return {
        "commit": _git_commit(),
        "cpu": cpu,
        "cores_logical": psutil.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "wsprism": wsprism_version,
        "wsprism_compiled": compiled,
        "picows": version("picows"),
        "uvloop": version("uvloop"),
        "aiofastnet": version("aiofastnet"),
        "websockets": version("websockets"),
        "psutil": version("psutil"),
        "bun": _bun_version(),
    }


def _bun_version() -> str | None:
    """The cached Bun's version (the `bun` baseline), if it is installed; never installs."""
    from . import bun

    try:
        exe = os.environ.get("WSPRISM_BUN") or bun.installed(bun.cache_dir() / "bun")
        return bun.version(str(exe)) if exe else None
    except OSError:
        return None


def _git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when wsprism/ has uncommitted changes."""
    import subprocess
    from pathlib import Path

    import wsprism

    root = Path(wsprism.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "wsprism"],
            capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) if head else None
