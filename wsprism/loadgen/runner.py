"""One measured run: fork the client processes, synchronise them, sample the server.

Timeline of a run (all instants on the shared monotonic clock):

    setup (connect, join)  ->  t_start  ->  warm-up  ->  m0 ... window ... m1  ->  drain, close

The server's CPU time (user + system, children included) and every client process's
CPU time are read at m0 and m1; the server's RSS is sampled through the window.
Every wait is bounded, so a dead URL, a refused ticket or a server dying mid-run end
the run with an error instead of a hang.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from multiprocessing.connection import wait as wait_pipes

import psutil

from .client import WorkerSpec, worker_main
from .hist import LatencyHist
from .targets import PIN, Target

CLIENT_LIMIT_PCT = 90.0  # a client process above this share of one core is the bottleneck
HOST_FULL_PCT = 95.0  # all cores of the machine busy: someone besides the server is short of CPU
QUANTILES = (0.5, 0.99, 0.999, 1.0)


@dataclass
class Case:
    """What to measure; one row of the table (per target) and one JSON line per run."""

    scenario: str
    conns: int
    procs: int = 1
    rate: float = 0.0
    inflight: int = 1
    senders: int = 1
    size: int = 32
    duration: float = 5.0
    warmup: float = 1.0
    drain: float = 2.0
    room: str = "bench"
    opcode: int = 1
    connect_timeout: float = 5.0
    svc_id: int = 1
    rooms: int = 1
    spread: bool = False

    def key(self) -> str:
        s = self.scenario
        if s == "idle":
            return f"idle conns={self.conns}"
        if s == "connect":
            load = f"rate={self.rate:g}/s" if self.rate > 0 else "closed loop"
            return f"connect slots={self.conns} {load}"
        if s == "ping":
            load = f"rate={self.rate:g}/s per conn" if self.rate > 0 else f"inflight={self.inflight}"
            return f"ping conns={self.conns} {load}"
        svc = f" svc_id={self.svc_id}" if s == "hot" and self.svc_id != 1 else ""
        where = f"room={self.conns}" if self.rooms == 1 else f"rooms={self.rooms}x{self.conns // self.rooms}"
        if self.spread:
            where += " spread"
        return f"{s} {where} senders={self.senders} rate={self.rate:g}/s size={self.size}{svc}"

    def params(self) -> dict:
        return asdict(self)


def _procs(proc: psutil.Process | None) -> list[psutil.Process]:
    if proc is None:
        return []
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _ticks_seconds(procs: list[psutil.Process]) -> float | None:
    """User + system CPU time from the kernel's tick counters (10 ms resolution)."""
    total = None
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total = (total or 0.0) + t.user + t.system
    return total


def _sched_seconds(procs: list[psutil.Process]) -> float | None:
    """On-CPU time in nanoseconds from /proc/<pid>/task/*/schedstat (Linux), else None."""
    total = 0
    for p in procs:
        try:
            tasks = os.listdir(f"/proc/{p.pid}/task")
        except OSError:
            return None
        for tid in tasks:
            try:
                with open(f"/proc/{p.pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # thread gone meanwhile
    return total / 1e9


def _cpu_sample(proc: psutil.Process | None) -> tuple[float | None, float | None]:
    procs = _procs(proc)
    if not procs:
        return None, None
    return _ticks_seconds(procs), _sched_seconds(procs)


def _cpu_delta(a: tuple, b: tuple) -> float | None:
    """CPU seconds between two samples: the precise scheduler clock, unless the tick
    counters saw clearly more (threads that ended inside the window drop out of the
    per-thread scheduler figures, but not out of the process's tick counters)."""
    ticks = b[0] - a[0] if a[0] is not None and b[0] is not None else None
    sched = b[1] - a[1] if a[1] is not None and b[1] is not None else None
    if sched is None or sched < 0:
        return ticks
    if ticks is not None and ticks > sched + 0.02:
        return ticks
    return sched


def _rss(proc: psutil.Process | None) -> int | None:
    if proc is None:
        return None
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return None


def _sleep_until(t_ns: int) -> None:
    left = (t_ns - time.monotonic_ns()) / 1e9
    if left > 0:
        time.sleep(left)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first id, count) for each of `parts` workers."""
    out = []
    first = 0
    for k in range(parts):
        n = total // parts + (1 if k < total % parts else 0)
        out.append((first, n))
        first += n
    return out


class _Run:
    def __init__(self, target: Target, case: Case, urls: str, repeat: int) -> None:
        self.target = target
        self.case = case
        self.urls = urls
        self.repeat = repeat
        self.errors: dict[str, int] = {}
        self.first_error = ""

    def error(self, what: str, n: int = 1) -> None:
        self.errors[what] = self.errors.get(what, 0) + n
        if not self.first_error:
            self.first_error = what

    def execute(self) -> dict:
        case = self.case
        target = self.target
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out: dict = {
            "schema": 1,
            "time": started,
            "case": case.key(),
            "scenario": case.scenario,
            "target": target.name,
            "repeat": self.repeat,
            "params": case.params(),
        }
        if not target.alive():
            out["error"] = target.death_note()
            return out

        server = target.process()
        rss_before = _rss(server)
        procs = max(1, min(case.procs, case.conns))
        parts = _split(case.conns, procs)
        if case.rooms > 1:      # the first ids: every room (id % rooms) gets its share of senders
            senders = list(range(min(case.senders, case.conns)))
        else:
            senders = sorted({k * case.conns // max(1, case.senders) for k in range(max(0, case.senders))})
        setup_timeout = 10.0 + case.conns / 200.0
        ctx = mp.get_context("fork")
        workers = []
        for idx, (first, count) in enumerate(parts):
            if count == 0:
                continue
            spec = WorkerSpec(
                scenario=case.scenario, urls=self.urls, first_id=first, count=count, total=case.conns,
                senders=[g for g in senders if first <= g < first + count] if case.scenario in ("chat", "hot") else [],
                rate=case.rate, inflight=case.inflight, size=case.size, room=case.room, opcode=case.opcode,
                svc_id=case.svc_id, connect_timeout=case.connect_timeout, drain=case.drain, index=idx,
                rooms=case.rooms, nodes=getattr(target, "count", 1), all_senders=frozenset(senders),
                spread=case.spread,
            )
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(spec, child, setup_timeout), daemon=True)
            p.start()
            if PIN["client"]:
                os.sched_setaffinity(p.pid, PIN["client"])
            child.close()
            workers.append((p, parent))

        try:
            return self._drive(out, workers, server, rss_before, setup_timeout)
        finally:
            for p, pipe in workers:
                p.join(timeout=2.0)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=2.0)
                pipe.close()

    def _collect(self, workers, kind: str, timeout: float) -> list[dict | None]:
        """One `kind` message from every worker; None for a worker that failed."""
        pending = {pipe: k for k, (_, pipe) in enumerate(workers)}
        got: list[dict | None] = [None] * len(workers)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.error(f"client process did not report '{kind}' in time", len(pending))
                break
            for pipe in wait_pipes(list(pending), timeout=left):
                k = pending.pop(pipe)
                try:
                    msg_kind, data = pipe.recv()
                except (EOFError, OSError):
                    self.error("client process died")
                    continue
                if msg_kind == kind:
                    got[k] = data
                else:
                    self.error(f"client process failed: {data}")
        return got

    def _drive(self, out: dict, workers, server, rss_before, setup_timeout: float) -> dict:
        case = self.case
        target = self.target
        readies = self._collect(workers, "ready", setup_timeout + 5.0)
        ok = sum(r["ok"] for r in readies if r)
        members = sum(r["members"] for r in readies if r)
        out["conns_ok"] = ok
        out["members"] = members

        if ok == 0:
            for r in readies:
                for what, n in (r or {}).get("errors", {}).items():
                    self.error(what, n)
            for _, pipe in workers:
                _send(pipe, ("stop", None))
            self._collect(workers, "result", 10.0)
            out["error"] = f"no connection to {_shown(self.urls)}: {self.first_error or 'unknown failure'}"
            if not target.alive():
                out["error"] += f"; {target.death_note()}"
            out["errors"] = self.errors
            return out

        if case.scenario == "idle":
            # let the server finish the last handshakes' allocations
            time.sleep(min(1.0, 0.05 + case.conns / 10000))
        now = time.monotonic_ns()
        t_start = now + 50_000_000
        m0 = t_start + int(case.warmup * 1e9)
        m1 = m0 + int(case.duration * 1e9)
        for _, pipe in workers:
            _send(pipe, ("go", {"t_start": t_start, "m0": m0, "m1": m1}))

        client_procs = []
        for p, _ in workers:
            try:
                client_procs.append(psutil.Process(p.pid))
            except psutil.Error:
                client_procs.append(None)

        _sleep_until(m0)
        nodes = target.processes() if hasattr(target, "processes") else []
        n_cpu0 = [_cpu_sample(p) for _, p in nodes]
        sample0 = target.sample() if hasattr(target, "sample") else None
        s_cpu0 = _cpu_sample(server)
        c_cpu0 = [_cpu_sample(cp) for cp in client_procs]
        psutil.cpu_percent(None)
        rss_max = _rss(server)
        died = False
        while time.monotonic_ns() < m1:
            time.sleep(min(0.2, max(0.0, (m1 - time.monotonic_ns()) / 1e9)))
            r = _rss(server)
            if r is not None and (rss_max is None or r > rss_max):
                rss_max = r
            if not target.alive():
                died = True
                break
        t1 = time.monotonic_ns()
        n_cpu1 = [_cpu_sample(p) for _, p in nodes]
        sample1 = target.sample() if sample0 is not None else None
        s_cpu1 = _cpu_sample(server)
        c_cpu1 = [_cpu_sample(cp) for cp in client_procs]
        host_pct = psutil.cpu_percent(None)
        rss_end = _rss(server)
        window = (t1 - m0) / 1e9

        results = self._collect(workers, "result", (m1 - time.monotonic_ns()) / 1e9 + case.drain
                                + case.connect_timeout + 10.0)
        if died or not target.alive():
            out["error"] = target.death_note() + " during the run"

        hist = LatencyHist()
        sent = delivered = arrived = lost = skipped = 0
        by_node = [0] * max(1, len(nodes) - 1)
        for r, ready in zip(results, readies):
            if not r:
                # setup errors of a process that never reported its result
                for what, n in (ready or {}).get("errors", {}).items():
                    self.error(what, n)
                continue
            sent += r["sent_win"]
            for k, n in enumerate(r.get("recv_arr_nodes", ())):
                if k < len(by_node):
                    by_node[k] += n
            delivered += r["recv_win"]
            arrived += r["recv_arr"]
            lost += r["lost"]
            skipped += r["skipped"]
            hist.merge_wire(r["hist"])
            for what, n in r["errors"].items():  # includes its setup errors
                self.error(what, n)
        if any(r is None for r in results) and "error" not in out:
            out["error"] = self.first_error or "a client process failed"

        p50, p99, p999, pmax = hist.quantiles(QUANTILES)
        out["window_s"] = round(window, 3)
        scen = case.scenario
        if scen in ("chat", "hot"):
            expected = sent * members // max(1, case.rooms)
        else:
            expected = sent
        # Throughput counts arrivals inside the window (at overload that is the capacity);
        # latency and drops follow the messages sent inside it, wherever they arrive.
        out["sent"] = sent
        out["delivered"] = delivered
        out["arrived"] = arrived
        out["expected"] = expected
        out["drops"] = max(0, expected - delivered) if scen != "idle" else 0
        out["offered_per_s"] = round(expected / window, 1) if window > 0 else None
        out["delivered_per_s"] = round(arrived / window, 1) if window > 0 and scen != "idle" else None
        out["skipped"] = skipped
        out["lost"] = lost
        out["lat_us"] = {"p50": p50, "p99": p99, "p999": p999, "max": pmax}

        srv: dict = {"pid": target.pid}
        busy = _cpu_delta(s_cpu0, s_cpu1)
        if busy is not None and window > 0:
            srv["cpu_pct"] = round(100.0 * busy / window, 1)
            srv["cpu_us_per_msg"] = round(busy * 1e6 / arrived, 3) if arrived and scen != "idle" else None
        srv["rss_mb"] = round(rss_max / 2**20, 1) if rss_max else None
        if scen == "idle" and rss_before and rss_end and ok:
            srv["rss_before_mb"] = round(rss_before / 2**20, 1)
            srv["rss_after_mb"] = round(rss_end / 2**20, 1)
            srv["rss_per_conn_kb"] = round((rss_end - rss_before) / ok / 1024, 2)
        if nodes:
            # a cluster: each node's CPU against the deliveries to its own members
            per, busy_all = [], 0.0
            for k, ((name, _), a, b) in enumerate(zip(nodes, n_cpu0, n_cpu1)):
                used = _cpu_delta(a, b)
                row = {"name": name, "cpu_pct": round(100.0 * used / window, 1) if used is not None and window > 0 else None}
                if name != "redis" and k < len(by_node):
                    row["arrived_per_s"] = round(by_node[k] / window, 1) if window > 0 else None
                    row["cpu_us_per_delivery"] = round(used * 1e6 / by_node[k], 3) if used and by_node[k] else None
                    busy_all += used or 0.0
                per.append(row)
            srv["nodes"] = per
            srv["cpu_pct"] = round(100.0 * busy_all / window, 1) if window > 0 else None
            srv["cpu_us_per_msg"] = round(busy_all * 1e6 / arrived, 3) if arrived else None
            if sample1 is not None:
                srv.update(target.compare(sample0, sample1, window, arrived))
        out["server"] = srv

        pcts = []
        for a, b in zip(c_cpu0, c_cpu1):
            used = _cpu_delta(a, b)
            if used is not None and window > 0:
                pcts.append(round(100.0 * used / window, 1))
        out["client"] = {
            "procs": len(workers),
            "cpu_pct": pcts,
            "cpu_pct_max": max(pcts) if pcts else None,
            "limited": bool(pcts) and max(pcts) > CLIENT_LIMIT_PCT,
        }
        out["host_cpu_pct"] = host_pct
        out["host_full"] = host_pct >= HOST_FULL_PCT
        out["cores"] = psutil.cpu_count()
        out["errors"] = self.errors
        if "error" not in out and scen != "idle" and delivered + arrived == 0:
            out["error"] = f"nothing delivered: {self.first_error or 'no reply from the server'}"
        return out


def _shown(urls: str) -> str:
    """The target URL for a message: without the ticket (it may be a credential)."""
    base, _, query = urls.partition("?")
    kept = [p for p in query.split("&") if p and not p.startswith("ticket=")]
    return base + ("?" + "&".join(kept) if kept else "")


def _send(pipe, msg) -> None:
    try:
        pipe.send(msg)
    except (OSError, ValueError):
        pass


def run_once(target: Target, case: Case, urls: str, repeat: int) -> dict:
    return _Run(target, case, urls, repeat).execute()
