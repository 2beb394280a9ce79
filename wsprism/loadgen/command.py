"""`wsprism bench`: argument parsing and the run loop (targets x cases x repeats)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import targets as _targets
from .report import render_text, summarize
from .runner import Case, run_once
from .targets import (
    BASELINES, DEFAULT_BASELINES, ClusterTarget, ExternalTarget, SpawnedTarget, Target, TargetError, bench_identity,
)

SCENARIOS = ("connect", "ping", "chat", "hot", "idle")
DEFAULT_CONNS = {"connect": 50, "ping": 100, "chat": 100, "hot": 100, "idle": 1000}
DEFAULT_ROOM_RATE = 20.0
GATEWAY_NAME = "wsprism"

EPILOG = """\
scenarios:
  connect  new sessions per second (upgrade + `authed`, then close); --conns slots
  ping     sys:ping -> pong round trips; closed loop with --inflight per connection,
           or open loop with --rate pings/s per connection
  chat     every connection joins one room; --senders send chat:send at --rate each
           (open loop; sweep --rate to find saturation)
  hot      the same over the Hot Lane (binary relay, lossy)
  idle     server RSS per idle connection at --conns

--rate and --inflight take comma lists; each value is its own case.
Examples:
  wsprism bench ping --spawn benches/configs/bench.yaml --baseline --inflight 1,16
  wsprism bench hot --url ws://127.0.0.1:8080 --server-pid 4242 --conns 1000 --rate 50,200
"""


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers: {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    vals = _floats(text)
    if any(v != int(v) or v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return [int(v) for v in vals]


def _scenarios(text: str) -> list[str]:
    names = list(SCENARIOS) if text == "all" else [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SCENARIOS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(bad) or text!r} (choose from {', '.join(SCENARIOS)} or all)")
    return names


def _baselines(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in BASELINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown baseline {', '.join(bad)} (choose from {', '.join(BASELINES)})")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="wsprism bench",
        description="Drive a WebSocket gateway over real sockets and measure it (picows client on uvloop).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("scenario", type=_scenarios, help="connect, ping, chat, hot, idle; a comma list, or all")
    where = ap.add_argument_group("target")
    where.add_argument("--url", help="gateway URL, e.g. ws://127.0.0.1:8080 (path /v1/ws and tenant added if missing)")
    where.add_argument("--server-pid", type=int, help="pid of the gateway at --url, for its CPU and RSS")
    where.add_argument("--spawn", metavar="CONFIG",
                       help="start the gateway (python -m wsprism start) with this config on a free port")
    where.add_argument("--baseline", action="store_true",
                       help="also run the bare baseline servers shipped with wsprism (picows and websockets)")
    where.add_argument("--baselines", type=_baselines, metavar="KINDS",
                       help="like --baseline, with a choice: picows, websockets, bun (comma list; bun is "
                            "installed from npm into a cache folder on first use)")
    where.add_argument("--nodes", type=_ints, default=[1], metavar="N",
                       help="with --spawn: gateway processes sharing a redis-server the bench starts (each "
                            "its own broker node and port; senders on node 0, the other members spread "
                            "by id); a comma list runs each as its own target, alternated, e.g. 1,2 for "
                            "one gateway without a broker against two nodes (default 1)")
    where.add_argument("--tenant", help="tenant query value (default: with --spawn, the config's first tenant "
                                        "with dev auth, else its first tenant; otherwise bench)")
    where.add_argument("--ticket", help="ticket per connection, {i} = connection number (default dev:u{i}, "
                                        "for a tenant with dev auth)")
    load = ap.add_argument_group("load")
    load.add_argument("--conns", type=int, help="connections in all (connect: concurrent slots); "
                      "default " + ", ".join(f"{k} {v}" for k, v in DEFAULT_CONNS.items()))
    load.add_argument("--procs", type=int, default=1, help="client processes (default 1)")
    load.add_argument("--rate", type=_floats,
                      help="offered load (open loop): chat/hot msgs/s per sender (default 20), ping pings/s "
                           "per connection, connect sessions/s in all; 0 = closed loop (ping, connect; "
                           "their default). Comma list")
    load.add_argument("--inflight", type=_ints, default=[1],
                      help="closed-loop ping: pings in flight per connection (comma list; default 1)")
    load.add_argument("--senders", type=int, default=1, help="chat/hot senders (default 1)")
    load.add_argument("--size", type=int, default=32, help="chat msg text / hot payload bytes (default 32)")
    load.add_argument("--opcode", type=int, default=1, help="hot: opcode byte after the svc_id (default 1)")
    load.add_argument("--svc-id", type=int, default=1,
                      help="hot: svc_id of the frames sent and counted back (default 1, the relay; "
                           "another for a Python service that publishes them back with publish_hot)")
    load.add_argument("--room", default="bench", help="chat/hot: room to join (default bench)")
    load.add_argument("--rooms", type=int, default=1,
                      help="chat/hot: spread the connections over this many rooms (<room><k>, k = "
                           "connection number modulo rooms; default 1)")
    load.add_argument("--spread", action="store_true",
                      help="with --nodes: senders spread over the nodes like the other members (default: "
                           "all on node 0, so a room of senders only is kept on one node: room affinity)")
    timing = ap.add_argument_group("timing")
    timing.add_argument("--duration", type=float, default=5.0, help="measured window, s (default 5)")
    timing.add_argument("--warmup", type=float, default=1.0, help="traffic before the window, s (default 1)")
    timing.add_argument("--drain", type=float, default=2.0, help="max wait for stragglers after it, s (default 2)")
    timing.add_argument("--repeat", type=int, default=3, help="runs per case and target, alternated (default 3)")
    timing.add_argument("--keep-server", action="store_true",
                        help="idle: measure on the running spawned server instead of a freshly started one")
    timing.add_argument("--pin", metavar="SERVER:CLIENT", type=_pin,
                        help="CPUs for spawned servers and for the client processes, e.g. 0:1 or 0:1-3 "
                             "(Linux; default: not pinned)")
    timing.add_argument("--connect-timeout", type=float, default=5.0, help="per connection attempt, s (default 5)")
    out = ap.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="append one JSON line per run to FILE")
    out.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    return ap


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _pin(text: str) -> tuple[set[int], set[int]]:
    server, sep, client = text.partition(":")
    try:
        if not sep:
            raise ValueError
        pin = _cpus(server), _cpus(client)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pin wants SERVER:CLIENT CPU lists, e.g. 0:1, not {text!r}") from None
    if not hasattr(os, "sched_setaffinity"):
        raise argparse.ArgumentTypeError("--pin needs Linux (os.sched_setaffinity)")
    return pin


def _check(ap: argparse.ArgumentParser, args) -> None:
    if args.baseline and not args.baselines:
        args.baselines = list(DEFAULT_BASELINES)
    if not (args.url or args.spawn or args.baselines):
        ap.error("nothing to drive: give --url, --spawn CONFIG or --baseline")
    if args.url and args.spawn:
        ap.error("--url and --spawn exclude each other")
    if args.server_pid and not args.url:
        ap.error("--server-pid goes with --url")
    if args.url and not args.url.startswith(("ws://", "wss://")):
        ap.error(f"--url must start with ws:// or wss://: {args.url}")
    if args.nodes != [1] and not args.spawn:
        ap.error("--nodes goes with --spawn")
    if args.rooms < 1:
        ap.error("--rooms must be at least 1")
    for name in ("procs", "senders", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.conns is not None and args.conns < 1:
        ap.error("--conns must be at least 1")
    if not 0 <= args.opcode <= 255:
        ap.error("--opcode must be 0..255")
    if not 1 <= args.svc_id <= 255:
        ap.error("--svc-id must be 1..255")
    if not args.room or '"' in args.room or "\\" in args.room:
        ap.error("--room must be a plain room name")
    if args.size < 12 or args.size > 60000:
        ap.error("--size must be 12..60000 bytes")
    if args.rate is not None and any(s in ("chat", "hot") for s in args.scenario) \
            and not any(r > 0 for r in args.rate):
        ap.error("chat and hot are open loop: give --rate > 0 (messages/s per sender)")
    if args.duration <= 0 or args.warmup < 0 or args.drain < 0 or args.connect_timeout <= 0:
        ap.error("--duration and --connect-timeout must be > 0, --warmup and --drain >= 0")


def build_cases(args) -> list[Case]:
    cases = []
    for scen in args.scenario:
        conns = args.conns or DEFAULT_CONNS[scen]
        if scen == "idle":
            rates = [0.0]
        elif args.rate is None:
            rates = [DEFAULT_ROOM_RATE] if scen in ("chat", "hot") else [0.0]
        else:
            rates = [r for r in args.rate if r > 0 or scen not in ("chat", "hot")]
        for rate in rates:
            inflights = args.inflight if rate <= 0 and scen == "ping" else [args.inflight[0]]
            for inflight in inflights:
                cases.append(Case(
                    scenario=scen, conns=conns, procs=args.procs, rate=rate, inflight=inflight,
                    senders=min(args.senders, conns), size=args.size, duration=args.duration,
                    warmup=args.warmup, drain=args.drain, connect_timeout=args.connect_timeout,
                    opcode=args.opcode, room=args.room, svc_id=args.svc_id, rooms=args.rooms, spread=args.spread,
                ))
    return cases


def build_targets(args) -> list[Target]:
    targets: list[Target] = []
    if args.url:
        targets.append(ExternalTarget(GATEWAY_NAME, args.url, args.server_pid))
    if args.spawn:
        for n in args.nodes:
            if n == 1:
                targets.append(SpawnedTarget(GATEWAY_NAME, "gateway", config=args.spawn))
            else:
                targets.append(ClusterTarget(f"{GATEWAY_NAME} x{n} nodes", args.spawn, n))
    for kind in args.baselines or []:
        targets.append(SpawnedTarget(kind, kind))
    return targets


def _progress(i: int, n: int, res: dict) -> str:
    head = f"[{i:>3}/{n}] {res['case']} | {res['target']} #{res['repeat'] + 1}: "
    if res.get("error"):
        return head + "error: " + res["error"]
    if res["scenario"] == "idle":
        srv = res.get("server", {})
        return head + f"{res.get('conns_ok')} conns, {srv.get('rss_per_conn_kb', '-')} KB/conn"
    lat = res.get("lat_us", {})
    srv = res.get("server", {})
    cli = res.get("client", {})
    parts = [f"{res.get('delivered_per_s') or 0:,.0f}/s"]
    if lat.get("p99") is not None:
        parts.append(f"p50 {lat['p50']:.0f}µs p99 {lat['p99']:.0f}µs")
    if srv.get("cpu_pct") is not None:
        parts.append(f"srv {srv['cpu_pct']:.0f}%")
    if srv.get("cpu_us_per_msg") is not None:
        parts.append(f"{srv['cpu_us_per_msg']:.2f}µs/msg")
    for node in srv.get("nodes", ()):
        per = f" {node['cpu_us_per_delivery']:.2f}µs/d" if node.get("cpu_us_per_delivery") else ""
        parts.append(f"{node['name']} {node['cpu_pct'] or 0:.0f}%{per}")
    for k, lanes in enumerate(srv.get("node_publishes", ())):
        fpp = [f"{lane} {v['frames_per_publish']}" for lane, v in lanes.items() if v["frames_per_publish"]]
        if fpp:
            parts.append(f"node{k} frames/publish " + " ".join(fpp))
    if cli.get("cpu_pct_max") is not None:
        parts.append(f"cli {cli['cpu_pct_max']:.0f}%")
    if res.get("skipped"):
        parts.append(f"{res['skipped']} attempts skipped (all slots busy)")
    if res.get("host_cpu_pct") is not None:
        parts.append(f"host {res['host_cpu_pct']:.0f}%")
    if res.get("drops"):
        parts.append(f"drops {res['drops']}")
    if res.get("errors"):
        parts.append("errors " + ", ".join(f"{k} x{v}" for k, v in res["errors"].items()))
    return head + ", ".join(parts)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
        _check(ap, args)
        if args.pin:
            _targets.PIN["server"], _targets.PIN["client"] = args.pin
    except SystemExit as exc:
        return int(exc.code or 0)

    if args.spawn:
        try:
            args.tenant, args.ticket = bench_identity(args.spawn, args.tenant, args.ticket)
        except TargetError as exc:
            print(f"wsprism bench: error: {exc}", file=sys.stderr)
            return 2
    args.tenant = args.tenant or "bench"
    args.ticket = args.ticket or "dev:u{i}"
    cases = build_cases(args)
    targets = build_targets(args)
    results: list[dict] = []
    failed_start: dict[str, str] = {}
    json_file = None
    old_term = None
    interrupted = False
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        if args.json:
            try:
                json_file = open(args.json, "a", encoding="utf-8")
            except OSError as exc:
                print(f"wsprism bench: error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
                return 2
        for t in targets:  # start side by side, then wait for each
            try:
                t.launch()
            except (TargetError, OSError) as exc:
                failed_start[t.name] = str(exc)
        for t in targets:
            if t.name in failed_start:
                continue
            try:
                t.wait_ready()
            except TargetError as exc:
                failed_start[t.name] = str(exc)
        for name, why in failed_start.items():
            print(f"wsprism bench: error: {why}", file=sys.stderr)
        total = len(cases) * args.repeat * len(targets)
        i = 0
        for case in cases:
            for rep in range(args.repeat):
                for t in targets:
                    i += 1
                    if t.name in failed_start:
                        res = {"schema": 1, "case": case.key(), "scenario": case.scenario, "target": t.name,
                               "repeat": rep, "params": case.params(), "error": failed_start[t.name]}
                    else:
                        if case.scenario == "idle" and t.spawned and not args.keep_server:
                            # RSS per connection is only meaningful from a fresh process.
                            try:
                                t.restart()
                            except TargetError as exc:
                                failed_start[t.name] = str(exc)
                        res = run_once(t, case, t.url(args.tenant, args.ticket), rep)
                    results.append(res)
                    if json_file:
                        json_file.write(json.dumps(res, ensure_ascii=False) + "\n")
                        json_file.flush()
                    if not args.quiet:
                        print(_progress(i, total, res), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("wsprism bench: interrupted", file=sys.stderr)
    finally:
        failed_targets = {r["target"] for r in results if r.get("error") or r.get("errors")}
        for t in targets:
            try:
                if isinstance(t, (SpawnedTarget, ClusterTarget)):
                    keep = t.name in failed_targets and t.log_path
                    t.cleanup(keep_log=bool(keep))
                    if keep:
                        print(f"wsprism bench: {t.name} server log kept in {t.log_path}", file=sys.stderr)
                else:
                    t.stop()
            except Exception:  # noqa: BLE001 - stopping must never mask the results
                pass
        if json_file:
            json_file.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)

    if results:
        print(render_text(summarize(results)))
    if interrupted:
        return 130
    bad = [r for r in results if r.get("error") or r.get("errors")]
    if bad:
        first = next((r for r in bad if r.get("error")), bad[0])
        why = first.get("error") or ", ".join(f"{k} x{v}" for k, v in first["errors"].items())
        print(f"wsprism bench: {len(bad)} of {len(results)} runs had errors; first: "
              f"{first['target']} {first['case']}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
