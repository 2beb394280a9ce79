"""Losing Redis, timed (docs/scaling.md, section 7; issue 11's "broker kill" figures).

    python benches/broker_faults.py [--sessions 10000] [--rooms 1000] [--repeat 3]

A real gateway (`python -m wsprism start`, compiled path, benches/configs/bench.yaml plus
a broker) on a real redis-server, with `--sessions` sessions held by this process (each
joined to one of `--rooms` rooms). Per repeat:

1. Redis is SIGKILLed; timed until the gateway's `/metrics` says `wsprism_broker_up 0`.
2. Redis is started again on the same port, empty; timed until `wsprism_broker_up 1`
   (the node is UP only once it has re-registered everything: links, scripts, lease,
   subscriptions, then every session and membership through the admission scripts),
   and until Redis holds every session and membership again.

Run once with `--sessions 0` for the bare reconnect ("resume"), once with 10k for the
reconciliation. The figures are wall-clock on a shared 2-core machine: the gateway,
Redis and this client compete for the cores. Every wait is bounded.
"""
import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from picows import WSListener, WSMsgType, ws_connect  # noqa: E402

from tests.redisproc import RedisProc, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "benches", "configs", "bench.yaml")
PREFIX = "faults"


class Member(WSListener):
    def __init__(self):
        self.got = asyncio.get_running_loop().create_future()
        self.want = b'"authed"'

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT and not self.got.done() and self.want in frame.get_payload_as_bytes():
            self.got.set_result(True)


async def open_sessions(port: int, n: int, rooms: int) -> list:
    out = []
    sem = asyncio.Semaphore(300)

    async def one(i):
        async with sem:
            transport, member = await ws_connect(
                Member, f"ws://127.0.0.1:{port}/v1/ws?tenant=bench&ticket=dev:u{i}", enable_auto_ping=False)
            await asyncio.wait_for(member.got, 10)
            member.got = asyncio.get_running_loop().create_future()
            member.want = b'"joined"'
            transport.send(WSMsgType.TEXT, b'{"v":1,"svc":"room","type":"join","room":"r%d"}' % (i % rooms))
            await asyncio.wait_for(member.got, 10)
            out.append(transport)

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


def broker_up(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("wsprism_broker_up "):
                    return float(line.split()[1]) == 1.0
    except OSError:
        return None
    return None


def poll(pred, timeout: float, step: float = 0.005) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"gave up after {timeout} s")
        time.sleep(step)
    return time.monotonic() - t0


async def main_async(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    redis = RedisProc()
    port = free_port()
    cfg = yaml.safe_load(open(CONFIG))
    cfg["gateway"]["listen"] = f"127.0.0.1:{port}"
    cfg["broker"] = {"url": redis.url, "prefix": PREFIX, "lease_ms": 5000}
    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f)
    log = tempfile.TemporaryFile()
    gw = subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", path], stdout=log,
                          stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        poll(lambda: broker_up(port), 30)
        t0 = time.monotonic()
        sessions = await open_sessions(port, args.sessions, args.rooms)
        print(f"{len(sessions)} sessions in {args.rooms} rooms opened in {time.monotonic() - t0:.1f} s", flush=True)
        key = f"{PREFIX}:{{bench}}:n"
        poll(lambda: int(redis.cmd("GET", key) or 0) == args.sessions, 30)
        rows = []
        for rep in range(args.repeat):
            redis.kill()
            down = await asyncio.to_thread(poll, lambda: broker_up(port) is False, 10)
            await asyncio.sleep(0.5)
            redis.start()
            t_start = time.monotonic()
            up = await asyncio.to_thread(poll, lambda: broker_up(port), 30)
            back = await asyncio.to_thread(
                poll, lambda: int(redis.cmd("GET", key) or 0) == args.sessions
                and (args.sessions == 0 or redis.cmd("SCARD", f"{PREFIX}:{{bench}}:rooms") == min(args.rooms, args.sessions)),
                30)
            back = max(back, up) if back else up
            rows.append((down, up, time.monotonic() - t_start))
            print(f"repeat {rep + 1}: broker_up 0 after {down:.3f} s; restarted: broker_up 1 after {up:.3f} s, "
                  f"Redis holds every session and room after {rows[-1][2]:.3f} s", flush=True)
            await asyncio.sleep(1.0)
        for tr in sessions:
            tr.disconnect()
        med = [sorted(col)[len(col) // 2] for col in zip(*rows)]
        print(f"median of {args.repeat}: down {med[0]:.3f} s, up (re-registered) {med[1]:.3f} s, "
              f"Redis complete {med[2]:.3f} s  [{args.sessions} sessions, {args.rooms} rooms]")
    finally:
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
        redis.stop()
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
