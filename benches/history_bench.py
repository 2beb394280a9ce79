"""History (SPEC 13, issue 12) measured on a spawned gateway, over real sockets.

    python benches/history_bench.py chat   [--repeat 5] [--redis] [-- <wsprism bench chat arguments>]
    python benches/history_bench.py join   [--joins 2000] [--behind 100] [--size 200] [--redis]
    python benches/history_bench.py memory [--rooms 1000] [--per-room 100] [--size 200]

- chat: `wsprism bench chat` (default: a room of 1000, 1 sender at 20 msg/s, 5 s) on
  benches/configs/bench.yaml (history off) and benches/configs/bench-history.yaml (on),
  alternated run by run, so a drift of the machine hits both alike. Prints each run,
  then per config the median and min-max of server CPU per delivery and of p99, and
  the on/off ratio of the medians (goal: CPU ≤ 1.1×). `--redis`: both with a broker (a
  redis-server started here), one node: history off, the room is on this node only and
  costs Redis nothing; on, every message goes through the room's history step in Redis
  and comes back on the feed before it is delivered.
- join: a room holding more than `--behind` messages of about `--size` bytes (as
  delivered); one client joins with `since` = newest − behind, reads the replay up to
  `joined`, leaves, and again (`--joins` times), alternating with joins without
  `since` (the same room, same run, in alternating blocks of 100) as the baseline.
  Latency: from the join written to `joined` read, on a raw socket (no client library
  in the way; reading the 100 messages in Python is part of it). Also server CPU per
  join and leave. Goal: p99 ≤ 5 ms. `--redis`: the same against a gateway with a
  broker (a redis-server started here on a free port): history in Redis streams, so
  each join runs the join script and, with `since`, the history read (the seeder
  stays in the room, so a plain join needs no read). Goal: p99 ≤ 15 ms.
- memory: `--rooms` rooms, each sent `--per-room` chat messages of about `--size` bytes
  (one member per room, history size = per-room); gateway RSS growth from the messages
  (after joining, before sending; to after), and `wsprism_history_bytes`. Goal: ≤ 30 MiB
  for 1000 × 100 × 200 B.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsprism.loadgen.targets import SpawnedTarget  # noqa: E402

OFF = ROOT / "benches" / "configs" / "bench.yaml"
ON = ROOT / "benches" / "configs" / "bench-history.yaml"


# -- a raw WebSocket client over asyncio streams ---------------------------------------------

class Raw:
    def __init__(self, reader, writer) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int, ticket: str) -> "Raw":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /v1/ws?tenant=bench&ticket={ticket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        c = cls(reader, writer)
        assert b'"authed"' in await c.recv()
        return c

    def send(self, obj) -> None:
        payload = json.dumps(obj, separators=(",", ":")).encode()
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        self.w.write(head + b"\0\0\0\0" + payload)       # a zero mask: the payload as is

    async def recv(self) -> bytes:
        """The next data frame's payload; the gateway's pings are answered (a client that
        never answers is closed at the idle timeout, which a long run reaches)."""
        while True:
            b0, b1 = await self.r.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.r.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.r.readexactly(8))[0]
            payload = await self.r.readexactly(n)
            if b0 & 0x0F != 0x9:
                return payload
            self.w.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)     # pong

    async def until(self, marker: bytes) -> tuple[int, bytes]:
        """Messages read until one containing `marker`: (how many before it, it)."""
        n = 0
        while True:
            m = await self.recv()
            if marker in m:
                return n, m
            n += 1

    def close(self) -> None:
        self.w.close()


def spawn(config: Path) -> SpawnedTarget:
    t = SpawnedTarget("gateway", "gateway", str(config))
    t.start()
    return t


def cpu(proc: psutil.Process) -> float:
    c = proc.cpu_times()
    return c.user + c.system


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- chat: history off vs on, alternated -------------------------------------------------------

def with_broker(config: Path, url: str, tmp: str) -> Path:
    """A copy of `config` with `broker: {url}` (history, if on, then lives in Redis)."""
    import yaml

    data = yaml.safe_load(config.read_text())
    data["broker"] = {"url": url, "prefix": "hb"}
    out = Path(tmp) / f"broker-{config.name}"
    out.write_text(yaml.safe_dump(data))
    return out


def chat(args) -> int:
    if not args.redis:
        return _chat(args, OFF, ON)
    from tests.redisproc import RedisProc

    redis = RedisProc()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _chat(args, with_broker(OFF, redis.url, tmp), with_broker(ON, redis.url, tmp))
    finally:
        redis.stop()


def _chat(args, off: Path, on: Path) -> int:
    bench = args.bench or ["--conns", "1000", "--rate", "20", "--duration", "5"]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for name, cfg in (("off", off), ("on", on)) if rep % 2 == 0 else (("on", on), ("off", off)):
                out = Path(tmp) / f"{name}-{rep}.jsonl"
                cmd = [sys.executable, "-m", "wsprism", "bench", "chat", *bench, "--spawn", str(cfg),
                       "--repeat", "1", "--json", str(out), "--quiet"]
                subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=600, check=False)
                for line in out.read_text().splitlines() if out.exists() else []:
                    r = json.loads(line)
                    if r.get("target") == "wsprism" and not r.get("error"):
                        runs[name].append(r)
                        srv, lat = r["server"], r["lat_us"]
                        print(f"{name:3} #{rep + 1}: {r['delivered_per_s']:,.0f}/s  {srv['cpu_us_per_msg']} µs/delivery"
                              f"  p99 {lat['p99'] / 1000:.1f} ms  client {r['client']['cpu_pct_max']}%", flush=True)
    med = {}
    print()
    for name, rs in runs.items():
        us = [r["server"]["cpu_us_per_msg"] for r in rs]
        p99 = [r["lat_us"]["p99"] / 1000 for r in rs]
        if not us:
            print(f"{name}: no result")
            return 1
        med[name] = statistics.median(us), statistics.median(p99)
        print(f"history {name:3}: srv {med[name][0]:.3f} µs/delivery ({min(us):.3f}-{max(us):.3f}),"
              f" p99 {med[name][1]:.1f} ms ({min(p99):.1f}-{max(p99):.1f}), {len(rs)} runs")
    print(f"on/off: CPU per delivery x{med['on'][0] / med['off'][0]:.3f}, p99 x{med['on'][1] / med['off'][1]:.3f}")
    return 0


# -- join with since ---------------------------------------------------------------------------

def join(args) -> int:
    if not args.redis:
        target = spawn(ON)
        try:
            return asyncio.run(_join(target, args))
        finally:
            target.stop()
    import yaml

    from tests.redisproc import RedisProc

    redis = RedisProc()
    data = yaml.safe_load(ON.read_text())
    data["broker"] = {"url": redis.url, "prefix": "hb"}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(data, f)
    try:
        target = spawn(Path(f.name))
        try:
            return asyncio.run(_join(target, args))
        finally:
            target.stop()
    finally:
        redis.stop()
        os.unlink(f.name)


async def _join(target, args) -> int:
    proc = psutil.Process(target.pid)
    text = "x" * max(1, args.size - 116)      # ~size bytes once framed and positioned
    seeder = await Raw.open(target.port, "dev:seeder")
    seeder.send({"v": 1, "svc": "room", "type": "join", "room": "j"})
    _, joined = await seeder.until(b'"joined"')
    epoch = json.loads(joined)["data"]["epoch"]
    for _ in range(args.behind + 50):
        seeder.send({"v": 1, "svc": "chat", "type": "send", "room": "j", "data": {"msg": text}})
    _, last = await seeder.until(b'"offset":%d,' % (args.behind + 50))
    top = args.behind + 50
    print(f"room j: {top} messages of {len(last) + 2} bytes as delivered")
    c = await Raw.open(target.port, "dev:joiner")
    since = {"since": {"offset": top - args.behind, "epoch": epoch}}
    lat = {"since": [], "plain": []}
    cpu_s = {"since": 0.0, "plain": 0.0}
    block = 100                        # joins per block: CPU is read per block (its clock ticks 10 ms)
    for b in range(2 * -(-args.joins // block)):
        kind = "since" if b % 2 == 0 else "plain"
        msg = {"v": 1, "svc": "room", "type": "join", "room": "j"}
        if kind == "since":
            msg["data"] = since
        c0 = cpu(proc)
        for _ in range(block):
            t0 = time.perf_counter()
            c.send(msg)
            await c.w.drain()
            n, _ = await c.until(b'"joined"')
            lat[kind].append((time.perf_counter() - t0) * 1000)
            c.send({"v": 1, "svc": "room", "type": "leave", "room": "j"})
            await c.until(b'"left"')
            assert n == (args.behind if kind == "since" else 0), n
        cpu_s[kind] += cpu(proc) - c0
    c.close()
    seeder.close()
    for kind, xs in lat.items():
        what = f"since {args.behind} behind" if kind == "since" else "no since (baseline)"
        print(f"join, {what:22}: p50 {pct(xs, .5):.3f} ms  p99 {pct(xs, .99):.3f} ms  max {max(xs):.3f} ms"
              f"  server CPU {cpu_s[kind] / len(xs) * 1e6:.0f} µs per join+leave  ({len(xs)} joins)")
    return 0


# -- memory --------------------------------------------------------------------------------------

def memory(args) -> int:
    import yaml

    data = yaml.safe_load(ON.read_text())
    data["tenants"][0]["policy"]["history"]["size"] = args.per_room
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(data, f)
    target = spawn(Path(f.name))
    try:
        return asyncio.run(_memory(target, args))
    finally:
        target.stop()
        os.unlink(f.name)


async def _memory(target, args) -> int:
    from tests.client import http_get

    proc = psutil.Process(target.pid)
    c = await Raw.open(target.port, "dev:mem")
    for r in range(args.rooms):
        c.send({"v": 1, "svc": "room", "type": "join", "room": f"room:{r:04d}"})
    for _ in range(args.rooms):
        await c.until(b'"joined"')
    await asyncio.sleep(0.5)
    before = proc.memory_info().rss
    text = "x" * max(1, args.size - 121)
    for i in range(args.per_room):
        for r in range(args.rooms):
            c.send({"v": 1, "svc": "chat", "type": "send", "room": f"room:{r:04d}", "data": {"msg": text}})
        for _ in range(args.rooms):
            last = await c.recv()
    await asyncio.sleep(0.5)
    after = proc.memory_info().rss
    body = http_get(target.port, "/metrics")[2].decode()
    held = next(float(line.split()[-1]) for line in body.splitlines() if line.startswith("wsprism_history_bytes{"))
    c.close()
    print(f"{args.rooms} rooms x {args.per_room} messages of {len(last) + 2} bytes as delivered")
    print(f"gateway RSS growth from the messages: {(after - before) / 2**20:.1f} MiB"
          f" ({before / 2**20:.1f} -> {after / 2**20:.1f} MiB); wsprism_history_bytes {held / 2**20:.1f} MiB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("chat")
    a.add_argument("--repeat", type=int, default=5)
    a.add_argument("--redis", action="store_true", help="both configs with a broker (history in Redis when on)")
    a.add_argument("bench", nargs=argparse.REMAINDER)
    b = sub.add_parser("join")
    b.add_argument("--joins", type=int, default=2000)
    b.add_argument("--behind", type=int, default=100)
    b.add_argument("--size", type=int, default=200)
    b.add_argument("--redis", action="store_true", help="with a broker: history in Redis")
    m = sub.add_parser("memory")
    m.add_argument("--rooms", type=int, default=1000)
    m.add_argument("--per-room", type=int, default=100)
    m.add_argument("--size", type=int, default=200)
    args = ap.parse_args(argv)
    if args.what == "chat":
        args.bench = [x for x in args.bench if x != "--"]
    return {"chat": chat, "join": join, "memory": memory}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
