"""Backend integration, measured on loopback (docs/backend.md, "Measured").

    python benches/backend_bench.py [--conns 50] [--window 8] [--seconds 5]
                                    [--room 1000] [--publishes 200] [--interval-ms 50]
                                    [--procs 2] [--batch N] [--phases ping,webhook,publish]
                                    [--profile FILE] [--pin SERVER:CLIENT] [--spy FILE]

Starts three kinds of processes on 127.0.0.1 and stops them all at the end:
- a trivial backend (aiohttp + uvloop; POST /svc answers `{"reply":1}` without
  parsing the request; POST /batch, used with `--batch N`, counts the entries and
  answers `{"batch":[{"reply":1}, ...]}`), from this file with `--serve-backend PORT`;
- the gateway (`python -m wsprism start`) with a webhook service `bk` and the API on;
- `--procs` client processes (picows + uvloop).

1. Webhook throughput (after the same loop with `sys:ping`, answered by the gateway
   itself, as a baseline): `--conns` sessions each keep `--window` `bk` messages in flight
   (closed loop) for `--seconds` after a 1 s warm-up. Reported: replies/s, client round
   trip p50/p99, the backend round trip the gateway itself measured
   (`wsprism_webhook_duration_seconds`), and CPU time per message of the gateway and of
   the backend (psutil, over the measured window).
2. API publish → delivery: `--room` sessions join one room; `--publishes` POSTs to
   /v1/publish, one every `--interval-ms`, each carrying its send time (`time.monotonic_ns()`, one
   clock for every process). Reported: delivery latency p50/p99 over every (publish,
   member) pair, time until the last member has it (p50/p99 over publishes), the POST
   round trip, and the gateway's CPU time per publish.

3. The floor (`--phases floor`): what any Python forwarder on picows + uvloop pays for the
   unbatched shape on this machine. A bare picows server (`--serve-floor`, from this file)
   whose `on_ws_frame` writes a pre-built HTTP POST (the size of the gateway's request)
   on a pooled keep-alive connection (a raw asyncio Protocol), parses the answer with
   httptools and sends a fixed reply frame; one message per session at the backend at a
   time, like the gateway. No envelope decoding, policy, timers, metrics or JSON. On
   uvloop's transport, as the gateway (`--floor-aiofastnet`: picows' own). Driven
   by the same clients and backend as phase 1, the same CPU accounting.

`--pin 0:1` puts the gateway (or the floor server) on CPU 0 and the clients and the
backend on CPU 1. `--spy FILE` records the gateway (or the floor) with py-spy
(`--native -r 1000`) over the measured window of the webhook (or floor) phase.
Every wait is bounded; a phase that does not finish in time fails the run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-api-key-0123456789abcdef"
FORWARDED = b'{"v":1,"svc":"bk","type":"x","seq":%d}'
PING = b'{"v":1,"svc":"sys","type":"ping","seq":%d}'        # the baseline: answered by the gateway
TIMEOUT = 30.0

GATEWAY_YAML = """
version: 1
gateway:
  listen: "127.0.0.1:{gw}"
  api: {{listen: "127.0.0.1:{api}", keys: {{bench: {{env: WSPRISM_BENCH_API_KEY}}}}}}
tenants:
  - id: bench
    limits: {{max_frame_bytes: 65536}}
    policy:
      ext_allowlist: ["room:*", "sys:*", "bk:*"]
      rate_limit_rps: 1000000
      rate_limit_burst: 1000000
      sessions: {{max_sessions_per_user: 4}}
    services:
      bk: {{webhook: "http://127.0.0.1:{backend}/{path}", timeout_ms: 10000, max_inflight_per_session: 64,
            batch_max_messages: {batch}}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# --- the trivial backend ------------------------------------------------------------


def serve_backend(port: int) -> None:
    import uvloop
    from aiohttp import web

    answer = b'{"reply":1}'

    async def svc(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    async def batch(request: web.Request) -> web.Response:
        n = len(json.loads(await request.read())["batch"])
        return web.Response(body=b'{"batch":[%b]}' % b",".join([answer] * n), content_type="application/json")

    app = web.Application()
    app.router.add_post("/svc", svc)
    app.router.add_post("/batch", batch)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- the floor: a bare forwarder -------------------------------------------------------------

FLOOR_AUTHED = b'{"v":1,"svc":"sys","type":"authed","data":{"tenant":"bench","user":"u","sid":"s"}}'
FLOOR_REPLY = b'{"v":1,"svc":"bk","type":"reply","seq":1,"data":1}'
# the size of the gateway's request: tenant, user, sid, trace_id and the envelope
FLOOR_BODY = (b'{"tenant":"bench","user":"u17","sid":"0123456789abcdef","trace_id":"0123456789abcdef-123",'
              b'"msg":{"v":1,"svc":"bk","type":"x","seq":123}}')
FLOOR_POOL = 64


def serve_floor(port: int, backend_port: int, aiofastnet: bool) -> None:
    import uvloop

    uvloop.run(_floor(port, backend_port, aiofastnet))


async def _floor(port: int, backend_port: int, aiofastnet: bool) -> None:
    import httptools
    from picows import WSListener, WSMsgType, ws_create_server

    text, close = WSMsgType.TEXT, WSMsgType.CLOSE
    post = (b"POST /svc HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"User-Agent: wsprism/floor\r\nContent-Length: %d\r\n\r\n%b") % (backend_port, len(FLOOR_BODY), FLOOR_BODY)
    loop = asyncio.get_running_loop()
    pool: list = []
    waiting: deque = deque()

    class Http(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.tr = None
            self.session = None

        def connection_made(self, transport) -> None:
            self.tr = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            pass

        def on_message_complete(self) -> None:
            session, self.session = self.session, None
            if waiting:
                waiting.popleft().post(self)
            else:
                pool.append(self)
            session.answered()

    class Floor(WSListener):
        def __init__(self) -> None:
            self.tr = None
            self.pending = 0

        def on_ws_connected(self, transport) -> None:
            self.tr = transport
            transport.send(text, FLOOR_AUTHED)

        def on_ws_frame(self, transport, frame) -> None:
            mt = frame.msg_type
            if mt == text:
                frame.get_payload_as_bytes()          # what a forwarder must at least read
                self.pending += 1
                if self.pending == 1:
                    self.post(pool.pop() if pool else None)
            elif mt == close:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def post(self, conn) -> None:
            if conn is None:
                waiting.append(self)
                return
            conn.session = self
            conn.tr.write(post)

        def answered(self) -> None:
            self.tr.send(text, FLOOR_REPLY)
            self.pending -= 1
            if self.pending:
                self.post(pool.pop() if pool else None)

    for _ in range(FLOOR_POOL):
        _, conn = await loop.create_connection(Http, "127.0.0.1", backend_port)
        pool.append(conn)
    server = await ws_create_server(lambda request: Floor(), "127.0.0.1", port, use_aiofastnet=aiofastnet)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


# --- client processes -----------------------------------------------------------------


def client_main(role: str, url: str, first: int, count: int, window: int, pipe) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_client(role, url, first, count, window, pipe))


async def _client(role, url, first, count, window, pipe) -> None:
    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()
    text = WSMsgType.TEXT
    state = {"m0": 1 << 62, "m1": 0, "sending": False}
    lat: list[int] = []
    got: list[tuple[int, bytes]] = []
    errors = [0]
    msg = PING if role == "ping" else FORWARDED

    class Conn(WSListener):
        def __init__(self) -> None:
            self.tr = None
            self.ready = loop.create_future()
            self.sent: list[int] = []
            self.head = 0
            self.seq = 0

        def on_ws_connected(self, transport) -> None:
            self.tr = transport

        def send_one(self) -> None:
            self.seq += 1
            self.sent.append(time.monotonic_ns())
            self.tr.send(text, msg % self.seq)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type != text:
                return
            if role == "room" and state["sending"]:
                got.append((time.monotonic_ns(), frame.get_payload_as_bytes()))
                return
            data = frame.get_payload_as_bytes()
            if not self.ready.done():
                if (role == "room" and b'"joined"' in data) or (role != "room" and b'"authed"' in data):
                    self.ready.set_result(None)
                elif role == "room" and b'"authed"' in data:
                    transport.send(text, b'{"v":1,"svc":"room","type":"join","room":"big"}')
                return
            if b'"error"' in data:
                errors[0] += 1
            now = time.monotonic_ns()
            t0 = self.sent[self.head]
            self.head += 1
            if state["m0"] <= t0 < state["m1"]:
                lat.append(now - t0)
            if state["sending"]:
                self.send_one()

    conns = []
    for i in range(first, first + count):
        _, conn = await asyncio.wait_for(ws_connect(Conn, f"{url}&ticket=dev:u{i}"), TIMEOUT)
        conns.append(conn)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in conns)), TIMEOUT)
    pipe.send("ready")
    m0, m1 = await loop.run_in_executor(None, pipe.recv)
    state.update(m0=m0, m1=m1, sending=True)
    if role != "room":
        for c in conns:
            for _ in range(window):
                c.send_one()
        await asyncio.sleep(max(0.0, (m1 - time.monotonic_ns()) / 1e9))
        state["sending"] = False
        await asyncio.sleep(1.0)                  # stragglers
        sent = sum(c.seq for c in conns)
        answered = sum(c.head for c in conns)
        pipe.send({"lat": lat, "sent": sent, "answered": answered, "errors": errors[0]})
    else:
        await loop.run_in_executor(None, pipe.recv)    # "done"
        pipe.send({"got": got})
    for c in conns:
        c.tr.disconnect()


def start_clients(role, url, total, procs, window):
    ctx = mp.get_context("spawn")
    out = []
    per = -(-total // procs)
    for p in range(procs):
        first, count = p * per, min(per, total - p * per)
        if count <= 0:
            break
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_main, args=(role, url, first, count, window, child), daemon=True)
        proc.start()
        pin(proc.pid, "client")
        out.append((proc, parent))
    for _, pipe in out:
        if not pipe.poll(TIMEOUT) or pipe.recv() != "ready":
            raise RuntimeError("client process did not get ready")
    return out


def collect(clients, timeout=TIMEOUT):
    results = []
    for proc, pipe in clients:
        if not pipe.poll(timeout):
            raise RuntimeError("client process did not report")
        results.append(pipe.recv())
        proc.join(5)
    return results


# --- measurement ------------------------------------------------------------------------


def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def cpu_split(proc) -> tuple[float, float]:
    t = proc.cpu_times()
    return t.user, t.system


PIN: dict = {}          # --pin: "server" and "client" CPU sets


def pin(pid: int, role: str) -> None:
    if PIN:
        os.sched_setaffinity(pid, PIN[role])


def metric(port: int | None, name: str, labels: str) -> float:
    if port is None:            # the floor has no /metrics
        return float("nan")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def webhook_phase(args, gw_port, gw_proc, be_proc, role="webhook", metrics=True, spy=None) -> dict:
    url = f"ws://127.0.0.1:{gw_port}/v1/ws?tenant=bench"
    mport = gw_port if metrics else None
    clients = start_clients(role, url, args.conns, args.procs, args.window)
    now = time.monotonic_ns()
    m0 = now + 1_000_000_000
    m1 = m0 + int(args.seconds * 1e9)
    for _, pipe in clients:
        pipe.send((m0, m1))
    time.sleep(max(0.0, (m0 - time.monotonic_ns()) / 1e9))
    g0, b0, gs0 = cpu_seconds(gw_proc), cpu_seconds(be_proc), cpu_split(gw_proc)[1]
    d_sum0 = metric(mport, "wsprism_webhook_duration_seconds_sum", 'service="bk"')
    d_cnt0 = metric(mport, "wsprism_webhook_duration_seconds_count", 'service="bk"')
    spying = None
    if spy:
        spying = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--native", "-r", "1000",
                                   "-p", str(gw_proc.pid), "-d", str(max(1, int(args.seconds))), "-o", spy,
                                   "-f", "raw" if spy.endswith(".txt") else "flamegraph"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(max(0.0, (m1 - time.monotonic_ns()) / 1e9))
    g1, b1, gs1 = cpu_seconds(gw_proc), cpu_seconds(be_proc), cpu_split(gw_proc)[1]
    d_sum1 = metric(mport, "wsprism_webhook_duration_seconds_sum", 'service="bk"')
    d_cnt1 = metric(mport, "wsprism_webhook_duration_seconds_count", 'service="bk"')
    results = collect(clients)
    if spying is not None:
        spying.wait(60)
    lat = [x for r in results for x in r["lat"]]
    n = len(lat)
    secs = (m1 - m0) / 1e9
    return {
        "messages_per_s": n / secs,
        "rtt_p50_ms": pct(lat, 0.50) / 1e6,
        "rtt_p99_ms": pct(lat, 0.99) / 1e6,
        "backend_rtt_mean_ms": (d_sum1 - d_sum0) / max(1.0, d_cnt1 - d_cnt0) * 1e3,
        "gateway_cpu_us_per_msg": (g1 - g0) / max(1, n) * 1e6,
        "gateway_sys_us_per_msg": (gs1 - gs0) / max(1, n) * 1e6,
        "backend_cpu_us_per_msg": (b1 - b0) / max(1, n) * 1e6,
        "gateway_cpu_share": (g1 - g0) / secs,
        "errors": sum(r["errors"] for r in results),
        "unanswered": sum(r["sent"] - r["answered"] for r in results),
    }


def publish_phase(args, gw_port, api_port, gw_proc) -> dict:
    url = f"ws://127.0.0.1:{gw_port}/v1/ws?tenant=bench"
    clients = start_clients("room", url, args.room, args.procs, 0)
    for _, pipe in clients:
        pipe.send((0, 0))
    time.sleep(0.2)
    post = asyncio.run(_publish(api_port, args.publishes, args.interval_ms / 1000, gw_proc))
    time.sleep(1.0)
    for _, pipe in clients:
        pipe.send("done")
    results = collect(clients)
    lat, last = [], {}
    for r in results:
        for t_recv, payload in r["got"]:
            data = json.loads(payload)["data"]
            d = t_recv - data["t"]
            lat.append(d)
            last[data["i"]] = max(last.get(data["i"], 0), d)
    expected = args.room * args.publishes
    return {
        "deliveries": len(lat),
        "expected": expected,
        "delivery_p50_ms": pct(lat, 0.50) / 1e6,
        "delivery_p99_ms": pct(lat, 0.99) / 1e6,
        "last_member_p50_ms": pct(list(last.values()), 0.50) / 1e6,
        "last_member_p99_ms": pct(list(last.values()), 0.99) / 1e6,
        "post_rtt_p50_ms": pct(post["rtt"], 0.50) / 1e6,
        "gateway_cpu_us_per_publish": post["cpu"] / args.publishes * 1e6,
        "delivered_answers_ok": post["delivered_ok"],
    }


async def _publish(api_port: int, count: int, interval: float, gw_proc) -> dict:
    import aiohttp

    rtt, ok = [], 0
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        c0 = cpu_seconds(gw_proc)
        for i in range(count):
            t = time.monotonic_ns()
            body = {"tenant": "bench", "room": "big", "svc": "b", "type": "t", "data": {"i": i, "t": t}}
            async with s.post(f"http://127.0.0.1:{api_port}/v1/publish", json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                answer = await resp.json()
            rtt.append(time.monotonic_ns() - t)
            ok += answer.get("delivered", 0)
            await asyncio.sleep(interval)
        cpu = cpu_seconds(gw_proc) - c0
    return {"rtt": rtt, "cpu": cpu, "delivered_ok": ok}


# --- orchestration ------------------------------------------------------------------------


def wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def wait_tcp(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--window", type=int, default=8, help="messages in flight per session (≤ 64)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--room", type=int, default=1000)
    p.add_argument("--publishes", type=int, default=200)
    p.add_argument("--interval-ms", type=float, default=50.0, help="between publishes")
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    p.add_argument("--batch", type=int, default=1,
                   help="batch_max_messages of the service (1 = one message per POST, the default)")
    p.add_argument("--phases", default="ping,webhook,publish",
                   help="which measurements to run (comma list of ping, webhook, publish, floor)")
    p.add_argument("--pin", metavar="SERVER:CLIENT",
                   help="CPU lists: the gateway/floor server on SERVER, clients and backend on CLIENT (e.g. 0:1)")
    p.add_argument("--spy", metavar="FILE", help="py-spy record the gateway (or floor) over the measured window "
                   "of the webhook (or floor) phase; FILE.txt gives raw collapsed stacks, else an SVG")
    p.add_argument("--json", metavar="FILE", help="append the results as one JSON line to FILE")
    p.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--floor-aiofastnet", action="store_true",
                   help="the floor on picows' aiofastnet transport (default: uvloop's, as the gateway)")
    p.add_argument("--serve-floor", type=int, nargs=2, metavar=("PORT", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    if args.serve_floor:
        serve_floor(*args.serve_floor, args.floor_aiofastnet)
        return 0
    if args.pin:
        server, client = args.pin.split(":")
        PIN.update(server={int(c) for c in server.split(",")}, client={int(c) for c in client.split(",")})
    import psutil

    gw_port, api_port, be_port = free_port(), free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(GATEWAY_YAML.format(gw=gw_port, api=api_port, backend=be_port,
                                           path="batch" if args.batch > 1 else "svc", batch=args.batch))
        log = open(Path(tmp) / "gateway.log", "w")
        env = dict(os.environ, WSPRISM_BENCH_API_KEY=API_KEY, PYTHONPATH=str(ROOT))
        try:
            phases = set(args.phases.split(","))
            backend = subprocess.Popen([sys.executable, __file__, "--serve-backend", str(be_port)], env=env)
            procs.append(backend)
            pin(backend.pid, "client")
            deadline = time.monotonic() + TIMEOUT
            wait_tcp(be_port, deadline)
            be = psutil.Process(backend.pid)
            base = a = b = floor = None
            if phases & {"ping", "webhook", "publish"}:
                prof = ["-m", "cProfile", "-o", args.profile] if args.profile else []
                gateway = subprocess.Popen([sys.executable, *prof, "-m", "wsprism", "start", "--config", str(cfg),
                                            "--log-level", "WARNING"], env=env, cwd=ROOT, stdout=log, stderr=log)
                procs.append(gateway)
                pin(gateway.pid, "server")
                print(f"gateway pid {gateway.pid}", file=sys.stderr, flush=True)
                wait_http(f"http://127.0.0.1:{gw_port}/healthz", deadline)
                wait_tcp(api_port, deadline)
                gw = psutil.Process(gateway.pid)
                base = webhook_phase(args, gw_port, gw, be, "ping") if "ping" in phases else None
                a = webhook_phase(args, gw_port, gw, be, spy=args.spy) if "webhook" in phases else None
                b = publish_phase(args, gw_port, api_port, gw) if "publish" in phases else None
            if "floor" in phases:
                fl_port = free_port()
                server = subprocess.Popen([sys.executable, __file__, "--serve-floor", str(fl_port), str(be_port),
                                           *(["--floor-aiofastnet"] if args.floor_aiofastnet else [])], env=env)
                procs.append(server)
                pin(server.pid, "server")
                print(f"floor pid {server.pid}", file=sys.stderr, flush=True)
                wait_tcp(fl_port, time.monotonic() + TIMEOUT)
                floor = webhook_phase(args, fl_port, psutil.Process(server.pid), be, metrics=False,
                                      spy=args.spy if "webhook" not in phases else None)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": "backend", "batch": args.batch, "conns": args.conns, "window": args.window,
                                "seconds": args.seconds, "load": os.getloadavg()[0], "pin": args.pin,
                                "ping": base, "webhook": a, "publish": b, "floor": floor,
                                "floor_transport": "aiofastnet" if args.floor_aiofastnet else "uvloop"}) + "\n")
    print(f"cores: {os.cpu_count()}  python: {sys.version.split()[0]}  load: {os.getloadavg()[0]:.2f}"
          f"  pin: {args.pin or 'no'}")
    if base:
        print(f"baseline sys:ping (no backend)  conns={args.conns} window={args.window} seconds={args.seconds}")
        for k in ("messages_per_s", "rtt_p50_ms", "rtt_p99_ms", "gateway_cpu_us_per_msg", "gateway_cpu_share"):
            print(f"  {k:28} {base[k]:,.3f}")
    if a:
        print(f"webhook  conns={args.conns} window={args.window} seconds={args.seconds} batch={args.batch}")
        for k, v in a.items():
            print(f"  {k:28} {v:,.3f}" if isinstance(v, float) else f"  {k:28} {v}")
    if floor:
        print(f"floor (bare picows forwarder)  conns={args.conns} window={args.window} seconds={args.seconds}")
        for k, v in floor.items():
            if k != "backend_rtt_mean_ms":
                print(f"  {k:28} {v:,.3f}" if isinstance(v, float) else f"  {k:28} {v}")
    if b:
        print(f"publish  room={args.room} publishes={args.publishes} (one every {args.interval_ms:g} ms)")
        for k, v in b.items():
            print(f"  {k:28} {v:,.3f}" if isinstance(v, float) else f"  {k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
