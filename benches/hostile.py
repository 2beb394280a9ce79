"""Hostile-input scenarios of issue 16, measured on a gateway process of its own.

    python benches/hostile.py flood    [--flooders 30] [--readers 2] [--burst 400] [--size 3900]
    python benches/hostile.py announce [--sessions 200]
    python benches/hostile.py bigmsg   [--sessions 200]
    common: [--python PATH] [--repeat N] [--json FILE]

Each run starts `PATH -m wsprism start` (default: this interpreter) on a free port of
127.0.0.1 with a config of its own, samples the gateway's RSS every 10 ms (psutil) and
stops it afterwards. `--python` points at another checkout's virtualenv, so a build
before a change and one after can be run alternately on the same machine.

- flood: `--flooders` members of one room that never read (raw sockets, 4 KiB receive
  buffer) each send their whole rate-limit burst (`--burst` chat messages of `--size`
  bytes, the default policy: 200/s, burst 400) at once; `--readers` members read
  everything (one process each). Reported: RSS before and at its peak, `/healthz`
  latency polled every 10 ms throughout (p50, p99, max), how the flooders were closed
  (`wsprism_writer_timeouts_total`, by reason where the build has reasons), how many chat
  messages the gateway accepted and how many each reader received.
- announce: `--sessions` sessions of a tenant with `max_frame_bytes` 1024 each send a
  header announcing 1,000,000 bytes and 990,000 bytes of it, then wait. Reported: RSS
  growth 5 s later, how many were answered PAYLOAD_TOO_LARGE + 1009 and how fast.
- bigmsg: `--sessions` sessions each send one 1 MiB message (a chat message to a room of
  its own, ack requested, so the gateway writes the copy and the ack in one turn), then
  idle. Reported: RSS per session once idle, against the same sessions before the
  message (picows' read buffer and the fan-out scratch buffer either return to their
  idle size or keep their peak).

Every wait is bounded; all traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPGRADE = ("GET /v1/ws?tenant={tenant}&ticket=dev:{user} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")

FLOOD_CONFIG = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
tenants:
  - id: t
    policy:
      ext_allowlist: ["room:join", "chat:send"]
"""
ANNOUNCE_CONFIG = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
tenants:
  - id: t
    limits: {{max_frame_bytes: 1024}}
"""
BIGMSG_CONFIG = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
tenants:
  - id: t
    limits: {{max_frame_bytes: 1100000}}
    policy:
      ext_allowlist: ["room:join", "chat:send"]
"""


# -- plumbing ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mask_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key * (n // 4 + 1), "little")
            ).to_bytes(n + 4, "little")[:n] if n else b""
    return head + key + body


def upgrade(port: int, user: str, tenant: str = "t", rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(UPGRADE.format(tenant=tenant, user=user, port=port).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode("latin-1").splitlines()[0])
    return s


def join(room: str) -> bytes:
    return mask_frame(1, json.dumps({"v": 1, "svc": "room", "type": "join", "room": room}).encode())


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


class Gateway:
    """One gateway process on a free port, with an RSS sampler."""

    def __init__(self, python: str, config: str) -> None:
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="wsprism-hostile-")
        cfg = os.path.join(self.tmp, "wsprism.yaml")
        with open(cfg, "w") as fh:
            fh.write(config.format(port=self.port))
        self.log = open(os.path.join(self.tmp, "gateway.log"), "w")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)              # the interpreter's own checkout, not this one
        self.proc = subprocess.Popen([python, "-m", "wsprism", "start", "--config", cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=self.tmp, env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("gateway did not start; see " + self.log.name) from None
                time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.ps.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(0.01)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def peak_since(self, t0: float) -> int:
        return max((r for t, r in self.samples if t >= t0), default=self.rss())

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class HealthPoller(threading.Thread):
    """GET /healthz every 10 ms (a new connection each time); latencies in ms."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.lat: list[float] = []
        self.failures = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        req = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        while not self.stopped.is_set():
            t0 = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(req)
                    data = b""
                    while b"ok\n" not in data:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                ok = data.startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            if ok:
                self.lat.append((time.perf_counter() - t0) * 1000)
            else:
                self.failures += 1
            self.stopped.wait(0.01)

    def summary(self) -> dict:
        lat = sorted(self.lat)
        if not lat:
            return {"n": 0, "failures": self.failures}
        return {"n": len(lat), "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2),
                "max_ms": round(lat[-1], 2), "failures": self.failures}


# -- flood -------------------------------------------------------------------------------------

READER = r'''
import json, socket, sys, time
sys.path.insert(0, sys.argv[3])
from hostile import upgrade, join
port, user, room = int(sys.argv[1]), sys.argv[2], sys.argv[4]
s = upgrade(port, user)
s.sendall(join(room))
s.settimeout(0.2)
MARK = b'"type":"msg"'
count, tail, last, started = 0, b"", time.monotonic(), False
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[5])
while time.monotonic() < deadline:          # count chat messages at C speed: one mark each
    try:
        chunk = s.recv(1 << 20)
    except socket.timeout:
        if started and time.monotonic() - last > 2.0:
            break
        continue
    if not chunk:
        break
    last = time.monotonic()
    data = tail + chunk
    n = data.count(MARK)
    if n:
        count += n
        started = True
    tail = data[-(len(MARK) - 1):]
print(json.dumps({"received": count}), flush=True)
'''


def flood(python: str, flooders: int = 30, readers: int = 2, burst: int = 400, size: int = 3900,
          limit_s: float = 60.0) -> dict:
    gw = Gateway(python, FLOOD_CONFIG)
    procs, socks = [], []
    try:
        for i in range(readers):
            p = subprocess.Popen([sys.executable, "-c", READER, str(gw.port), f"reader{i}", os.path.dirname(__file__),
                                  "flood", str(limit_s)], stdout=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for i in range(flooders):
            s = upgrade(gw.port, f"flooder{i}", rcvbuf=4096)
            s.sendall(join("flood"))
            socks.append(s)
        msg = json.dumps({"v": 1, "svc": "chat", "type": "send", "room": "flood", "data": {"msg": "x" * size}}).encode()
        bursts = [b"".join(mask_frame(1, msg) for _ in range(burst)) for _ in range(flooders)]
        deadline = time.monotonic() + 5
        while metric(metrics(gw.port), "wsprism_ws_sessions_active") < flooders + readers:
            if time.monotonic() > deadline:
                raise RuntimeError("sessions did not all open")
            time.sleep(0.05)
        time.sleep(0.5)
        base = gw.rss()
        health = HealthPoller(gw.port)
        health.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        senders = [threading.Thread(target=_send_all, args=(s, b), daemon=True) for s, b in zip(socks, bursts)]
        for t in senders:
            t.start()
        while time.monotonic() - t0 < limit_s:            # until every flooder is gone
            if metric(metrics(gw.port), "wsprism_ws_sessions_active") <= readers:
                break
            time.sleep(0.05)
        all_closed_s = time.monotonic() - t0
        time.sleep(1.0)
        health.stopped.set()
        health.join(10)
        text = metrics(gw.port)
        peak = gw.peak_since(t0)
        counts = []
        for p in procs:
            out, _ = p.communicate(timeout=limit_s + 10)
            counts.append(json.loads(out.strip().splitlines()[-1])["received"])
        allowed = metric(text, "wsprism_policy_decisions_total", lane="ext", decision="allow")
        return {
            "scenario": "flood", "flooders": flooders, "readers": readers, "burst": burst, "size": size,
            "rss_base_mb": round(base / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1),
            "rss_growth_mb": round((peak - base) / 2**20, 1), "all_flooders_closed_s": round(all_closed_s, 2),
            "healthz": health.summary(),
            "closed_4005": metric(text, "wsprism_writer_timeouts_total"),
            "closed_by_reason": {r: metric(text, "wsprism_writer_timeouts_total", reason=r)
                                 for r in ("send_timeout", "outbound_max", "outbound_total_max")},
            "chat_accepted": int(allowed - flooders - readers),   # minus the joins
            "received_by_readers": counts,
        }
    finally:
        for s in socks:
            s.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
        gw.stop()


def _send_all(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass


# -- announce ------------------------------------------------------------------------------------

def announce(python: str, sessions: int = 200, wait_s: float = 5.0) -> dict:
    gw = Gateway(python, ANNOUNCE_CONFIG)
    socks = []
    try:
        for i in range(sessions):
            socks.append(upgrade(gw.port, f"a{i}"))
        time.sleep(0.5)
        base = gw.rss()
        header = bytes.fromhex("82ff00000000000f4240") + b"\x01\x02\x03\x04"
        body = bytes(990_000)
        t0 = time.monotonic()
        sent_at = {}
        for s in socks:
            s.setblocking(False)
        pending = {s: header + body for s in socks}
        answered = {}
        bufs = {s: b"" for s in socks}
        while time.monotonic() - t0 < wait_s:
            writers = [s for s, d in pending.items() if d]
            readers = [s for s in socks if s not in answered]
            r, w, _ = select.select(readers, writers, [], 0.05)
            for s in w:
                try:
                    n = s.send(pending[s][:262144])
                except OSError:
                    pending[s] = b""
                    continue
                sent_at.setdefault(s, time.monotonic())
                pending[s] = pending[s][n:]
            for s in r:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                bufs[s] += chunk
                if b"\x88\x11\x03\xf1" in bufs[s] or b"\x88\x02\x03\xf1" in bufs[s] or not chunk:
                    answered[s] = (time.monotonic() - sent_at.get(s, t0),
                                   b"PAYLOAD_TOO_LARGE" in bufs[s], b"\x03\xf1" in bufs[s])
        held = gw.rss()
        times = sorted(t for t, _, _ in answered.values())
        return {
            "scenario": "announce", "sessions": sessions, "rss_base_mb": round(base / 2**20, 1),
            "rss_growth_after_s": wait_s, "rss_growth_mb": round((held - base) / 2**20, 1),
            "answered": len(answered), "payload_too_large": sum(1 for _, e, _ in answered.values() if e),
            "closed_1009": sum(1 for _, _, c in answered.values() if c),
            "answer_ms_p50": round(times[len(times) // 2] * 1000, 1) if times else None,
            "answer_ms_max": round(times[-1] * 1000, 1) if times else None,
            "body_bytes_not_sent": sum(len(d) for d in pending.values()),
        }
    finally:
        for s in socks:
            s.close()
        gw.stop()


# -- bigmsg -------------------------------------------------------------------------------------

def bigmsg(python: str, sessions: int = 200) -> dict:
    gw = Gateway(python, BIGMSG_CONFIG)
    socks = []
    try:
        for i in range(sessions):
            s = upgrade(gw.port, f"b{i}")
            s.sendall(join(f"room{i}"))
            socks.append(s)
        for s in socks:
            _read_until(s, b'"joined"')
        time.sleep(0.5)
        before = gw.rss()
        msg = json.dumps({"v": 1, "svc": "chat", "type": "send", "room": "", "flags": 4, "seq": 1,
                          "data": {"msg": "m" * (1 << 20)}}).encode()
        for i, s in enumerate(socks):
            s.sendall(mask_frame(1, msg.replace(b'"room": ""', f'"room": "room{i}"'.encode())))
            _read_until(s, b'"ack"')           # its copy and the ack, read (the client is not slow)
        time.sleep(1.0)                        # quiet: the gateway may shrink what it grew
        after = gw.rss()
        return {"scenario": "bigmsg", "sessions": sessions, "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
                "kb_per_session_kept": round((after - before) / sessions / 1024, 1)}
    finally:
        for s in socks:
            s.close()
        gw.stop()


def _read_until(s: socket.socket, mark: bytes, timeout: float = 10.0) -> None:
    s.settimeout(timeout)
    tail = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed while waiting for " + mark.decode())
        data = tail + chunk
        if mark in data:
            return
        tail = data[-len(mark):]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=["flood", "announce", "bigmsg"])
    ap.add_argument("--python", default=sys.executable, help="interpreter whose wsprism to run")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--flooders", type=int, default=30)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--burst", type=int, default=400)
    ap.add_argument("--size", type=int, default=3900)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--json", help="append one JSON line per run")
    args = ap.parse_args(argv)
    for _ in range(args.repeat):
        if args.scenario == "flood":
            res = flood(args.python, args.flooders, args.readers, args.burst, args.size)
        elif args.scenario == "announce":
            res = announce(args.python, args.sessions)
        else:
            res = bigmsg(args.python, args.sessions)
        res["python"] = args.python
        line = json.dumps(res)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
