"""Python services, measured on loopback (docs/benchmarks.md, "Python services").

    python benches/services_bench.py ext [--conns 50] [--window 8] [--seconds 4] [--repeat 3]
    python benches/services_bench.py hot [--conns 1000] [--rate 50] [--repeat 3]

ext: server CPU per Ext Lane message answered, closed loop (`--conns` sessions, each
     keeping `--window` messages in flight), for four services of one gateway
     (benches/configs/services.yaml), run after one another and alternated `--repeat`
     times in the same run: `sys:ping` (answered by the gateway itself), a Python
     service whose async `on_message` returns a reply, the same with a plain-def
     `on_message`, and a webhook service (a trivial aiohttp backend: its own CPU is not
     counted). Reported: median (min-max) CPU µs per message, and the difference to ping.
hot: CPU per delivery of `on_hot` + `gw.publish_hot` (a Python relay, svc_id 7) against the
     built-in relay (svc_id 1) on the same gateway, one sender at `--rate` msg/s into a room
     of `--conns`, through the load generator (`wsprism bench hot --spawn ... --svc-id`),
     alternated run by run.

Every process it starts (gateway, backend, clients) is stopped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from backend_bench import free_port, wait_tcp  # noqa: E402  (benches/, this script's folder)

CONFIG = ROOT / "benches" / "configs" / "services.yaml"
TIMEOUT = 30.0
MESSAGES = {
    "ping": b'{"v":1,"svc":"sys","type":"ping","seq":%d}',
    "python": b'{"v":1,"svc":"reply","type":"x","seq":%d}',
    "python-def": b'{"v":1,"svc":"replysync","type":"x","seq":%d}',
    "webhook": b'{"v":1,"svc":"bk","type":"x","seq":%d}',
}


def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


# --- ext: client processes ---------------------------------------------------------------


def client_main(url: str, first: int, count: int, window: int, pipe) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_client(url, first, count, window, pipe))


async def _client(url, first, count, window, pipe) -> None:
    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()
    text = WSMsgType.TEXT
    state = {"msg": b"", "m0": 1 << 62, "m1": 0, "sending": False, "in_window": 0, "errors": 0}

    class Conn(WSListener):
        def __init__(self) -> None:
            self.tr = None
            self.ready = loop.create_future()
            self.seq = 0
            self.outstanding = 0

        def on_ws_connected(self, transport) -> None:
            self.tr = transport

        def send_one(self) -> None:
            self.seq += 1
            self.outstanding += 1
            self.tr.send(text, state["msg"] % self.seq)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type != text:
                return
            data = frame.get_payload_as_bytes()
            if not self.ready.done():
                if b'"authed"' in data:
                    self.ready.set_result(None)
                return
            if b'"error"' in data:
                state["errors"] += 1
            self.outstanding -= 1
            now = time.monotonic_ns()
            if state["m0"] <= now < state["m1"]:
                state["in_window"] += 1
            if state["sending"]:
                self.send_one()

    conns = []
    for i in range(first, first + count):
        _, conn = await asyncio.wait_for(ws_connect(Conn, f"{url}&ticket=dev:u{i}"), TIMEOUT)
        conns.append(conn)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in conns)), TIMEOUT)
    pipe.send("ready")
    while True:
        order = await loop.run_in_executor(None, pipe.recv)
        if order == "stop":
            break
        role, m0, m1 = order
        state.update(msg=MESSAGES[role], m0=m0, m1=m1, sending=True, in_window=0, errors=0)
        for c in conns:
            for _ in range(window):
                c.send_one()
        await asyncio.sleep(max(0.0, (m1 - time.monotonic_ns()) / 1e9))
        state["sending"] = False
        deadline = time.monotonic() + 5
        while any(c.outstanding for c in conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        pipe.send({"answered": state["in_window"], "errors": state["errors"],
                   "unanswered": sum(c.outstanding for c in conns)})
    for c in conns:
        c.tr.disconnect()


def run_ext(args) -> int:
    import psutil


    gw_port, be_port = free_port(), free_port()
    procs = []
    results: dict[str, list[float]] = {role: [] for role in MESSAGES}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "services.yaml"
        cfg.write_text(CONFIG.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{gw_port}")
                       .replace("127.0.0.1:9000", f"127.0.0.1:{be_port}"))
        log = open(Path(tmp) / "gateway.log", "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        clients = []
        try:
            backend = subprocess.Popen([sys.executable, str(ROOT / "benches" / "backend_bench.py"),
                                        "--serve-backend", str(be_port)], env=env)
            procs.append(backend)
            gateway = subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", str(cfg),
                                        "--log-level", "WARNING"], env=env, cwd=ROOT, stdout=log, stderr=log)
            procs.append(gateway)
            wait_tcp(gw_port, time.monotonic() + TIMEOUT)
            wait_tcp(be_port, time.monotonic() + TIMEOUT)
            gw = psutil.Process(gateway.pid)
            ctx = mp.get_context("spawn")
            per = -(-args.conns // args.procs)
            for p in range(args.procs):
                first, count = p * per, min(per, args.conns - p * per)
                if count <= 0:
                    break
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=client_main, args=(f"ws://127.0.0.1:{gw_port}/v1/ws?tenant=bench",
                                                             first, count, args.window, child), daemon=True)
                proc.start()
                clients.append((proc, parent))
            for _, pipe in clients:
                if not pipe.poll(TIMEOUT) or pipe.recv() != "ready":
                    raise RuntimeError("client process did not get ready")
            for rep in range(args.repeat):
                for role in MESSAGES:
                    now = time.monotonic_ns()
                    m0 = now + int(args.warmup * 1e9)
                    m1 = m0 + int(args.seconds * 1e9)
                    for _, pipe in clients:
                        pipe.send((role, m0, m1))
                    time.sleep(max(0.0, (m0 - time.monotonic_ns()) / 1e9))
                    c0 = cpu_seconds(gw)
                    time.sleep(max(0.0, (m1 - time.monotonic_ns()) / 1e9))
                    c1 = cpu_seconds(gw)
                    out = [pipe.recv() for _, pipe in clients if pipe.poll(TIMEOUT)]
                    n = sum(o["answered"] for o in out)
                    bad = sum(o["errors"] + o["unanswered"] for o in out)
                    if bad or len(out) != len(clients):
                        problems.append(f"{role} #{rep + 1}: {bad} errors/unanswered")
                    us = (c1 - c0) / max(1, n) * 1e6
                    results[role].append(us)
                    print(f"  {role:11} #{rep + 1}: {n / args.seconds:>9,.0f} msg/s  {us:6.2f} µs/msg", flush=True)
            for _, pipe in clients:
                pipe.send("stop")
        finally:
            for proc, _ in clients:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    print(f"\nserver CPU per message, closed loop, conns={args.conns} window={args.window} "
          f"{args.seconds:g} s x {args.repeat} (median, min-max):")
    ping = statistics.median(results["ping"])
    for role, vals in results.items():
        med = statistics.median(vals)
        delta = "" if role == "ping" else f"   {med - ping:+.2f} µs vs ping"
        print(f"  {role:11} {med:6.2f} µs  ({min(vals):.2f}-{max(vals):.2f}){delta}")
    for p in problems:
        print("  problem:", p)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": "services_ext", "conns": args.conns, "window": args.window,
                                "seconds": args.seconds, "cpu_us_per_msg": results}) + "\n")
    return 1 if problems else 0


# --- hot: through the load generator ---------------------------------------------------------


def run_hot(args) -> int:
    from wsprism.loadgen import main as bench

    out = Path(args.json) if args.json else Path(tempfile.mkstemp(suffix=".jsonl")[1])
    rc = 0
    for rep in range(args.repeat):
        for svc_id in (1, 7):
            rc |= bench(["hot", "--spawn", str(CONFIG), "--conns", str(args.conns), "--rate", str(args.rate),
                         "--svc-id", str(svc_id), "--repeat", "1", "--duration", str(args.seconds),
                         "--warmup", str(args.warmup), "--json", str(out), "--quiet"])
    runs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    runs = [r for r in runs if r.get("scenario") == "hot" and r.get("params", {}).get("conns") == args.conns]
    by = {1: [], 7: []}
    for r in runs[-2 * args.repeat:]:
        cpu = (r.get("server") or {}).get("cpu_us_per_msg")
        if cpu is not None and not r.get("error"):
            by[r["params"].get("svc_id", 1)].append(cpu)
    print(f"\nserver CPU per delivery, 1 sender at {args.rate:g} msg/s into {args.conns} (median, min-max):")
    for svc_id, name in ((1, "built-in relay (svc 1)"), (7, "on_hot + publish_hot (svc 7)")):
        vals = by[svc_id]
        if vals:
            print(f"  {name:30} {statistics.median(vals):.3f} µs  ({min(vals):.3f}-{max(vals):.3f})")
    if by[1] and by[7]:
        print(f"  ratio {statistics.median(by[7]) / statistics.median(by[1]):.2f}x")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["ext", "hot"])
    p.add_argument("--conns", type=int, help="ext: sessions (default 50); hot: room size (default 1000)")
    p.add_argument("--window", type=int, default=8, help="ext: messages in flight per session (<= 64)")
    p.add_argument("--rate", type=float, default=50.0, help="hot: messages/s of the one sender")
    p.add_argument("--seconds", type=float, default=4.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--procs", type=int, default=1, help="ext: client processes")
    p.add_argument("--json", metavar="FILE", help="append the runs as JSON lines")
    args = p.parse_args(argv)
    if args.conns is None:
        args.conns = 50 if args.what == "ext" else 1000
    return run_ext(args) if args.what == "ext" else run_hot(args)


if __name__ == "__main__":
    sys.exit(main())
