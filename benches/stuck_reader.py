"""Chat fan-out in one room with and without one member that stopped reading.

    python benches/stuck_reader.py [--conns 20] [--rate 1000] [--size 1024] [--duration 10] [--repeat 3]

Starts one gateway (`python -m wsprism start`, benches/configs/bench.yaml on a free
loopback port), then alternates two cases, `--repeat` times each, every run in a room of
its own:

- none:  `wsprism bench chat` alone (`--conns` members, one sender at `--rate` msg/s);
- stuck: the same, plus one extra member that joined the room over a bare socket with a
         4 KiB receive buffer and never reads a byte.

For each run it prints the bench's numbers for the reading members (deliveries/s,
latency, gateway CPU per delivered message, gateway RSS) and, for the stuck case, when
the gateway closed the stuck member as a slow consumer (`wsprism_writer_timeouts_total`
+1, polled every 100 ms from the start of the bench run; the bench spends about a second
connecting before its 1 s warm-up). `wsprism bench` lacks a stuck-reader option, hence
this wrapper; all traffic stays on 127.0.0.1 and every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "benches", "configs", "bench.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def masked(payload: bytes, opcode: int = 1) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def stuck_member(port: int, room: str, user: str) -> socket.socket:
    """Upgrade, join `room`, and never read again (4 KiB receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall((f"GET /v1/ws?tenant=bench&ticket=dev:{user} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode("latin-1").splitlines()[0])
    s.sendall(masked(json.dumps({"v": 1, "svc": "room", "type": "join", "room": room}).encode()))
    return s


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


class Poller(threading.Thread):
    """Notes when wsprism_writer_timeouts_total first rises above its starting value."""

    def __init__(self, port: int, limit_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.limit = port, limit_s
        self.base = metric(port, "wsprism_writer_timeouts_total")
        self.t0 = time.monotonic()
        self.fired_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() - self.t0 < self.limit:
            if metric(self.port, "wsprism_writer_timeouts_total") > self.base:
                self.fired_at = time.monotonic() - self.t0
                return
            self.stop.wait(0.1)


def start_gateway(tmp: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with open(CONFIG) as fh:
        text = fh.read().replace('listen: "127.0.0.1:8080"', f'listen: "127.0.0.1:{port}"')
    cfg = os.path.join(tmp, "bench.yaml")
    with open(cfg, "w") as fh:
        fh.write(text)
    log = open(os.path.join(tmp, "gateway.log"), "w")
    p = subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", cfg],
                         stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return p, port
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start; see " + log.name) from None
            time.sleep(0.1)


def run_case(args, port: int, pid: int, case: str, rep: int, tmp: str) -> dict:
    room = f"sr{rep}{case}"
    out = os.path.join(tmp, f"{room}.jsonl")
    sock = stuck_member(port, room, f"stuck{rep}") if case == "stuck" else None
    poller = Poller(port, args.duration + 30)
    poller.start()
    cmd = [sys.executable, "-m", "wsprism", "bench", "chat", "--url", f"ws://127.0.0.1:{port}",
           "--server-pid", str(pid), "--room", room, "--conns", str(args.conns), "--senders", "1",
           "--rate", str(args.rate), "--size", str(args.size), "--duration", str(args.duration),
           "--warmup", "1", "--repeat", "1", "--json", out, "--quiet", "--ticket", f"dev:r{rep}{case}{{i}}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + 120)
    poller.stop.set()
    poller.join(5)
    if sock is not None:
        sock.close()
    try:
        with open(out) as fh:
            res = json.loads(fh.readline())
    except (OSError, ValueError):
        raise RuntimeError(f"bench failed ({r.returncode}): {r.stderr[-1500:]}") from None
    res["stuck_closed_after_s"] = poller.fired_at
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=20, help="reading members (default 20)")
    ap.add_argument("--rate", type=float, default=1000, help="chat messages/s of the one sender (default 1000)")
    ap.add_argument("--size", type=int, default=1024, help="chat text bytes (default 1024)")
    ap.add_argument("--duration", type=float, default=10, help="measured window, s (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case, alternated (default 3)")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {"none": [], "stuck": []}
    with tempfile.TemporaryDirectory(prefix="wsprism-stuck-") as tmp:
        p, port = start_gateway(tmp)
        try:
            for rep in range(args.repeat):
                for case in ("none", "stuck"):
                    res = run_case(args, port, p.pid, case, rep, tmp)
                    rows[case].append(res)
                    lat, srv, cli = res.get("lat_us") or {}, res.get("server") or {}, res.get("client") or {}
                    closed = res["stuck_closed_after_s"]
                    print(f"{case:5s} #{rep + 1}: {res.get('delivered_per_s') or 0:,.0f} deliveries/s, "
                          f"p50 {lat.get('p50', 0) / 1000:.2f} ms, p99 {lat.get('p99', 0) / 1000:.2f} ms, "
                          f"gateway {srv.get('cpu_us_per_msg') or 0:.2f} µs/delivery ({srv.get('cpu_pct') or 0:.0f}% CPU), "
                          f"client {cli.get('cpu_pct_max') or 0:.0f}% CPU, RSS {srv.get('rss_mb')} MB, "
                          f"drops {res.get('drops')}, errors {res.get('errors') or res.get('error') or '-'}"
                          + (f", stuck member closed 4005 at {closed:.1f} s" if closed is not None else
                             (", stuck member NOT closed" if case == "stuck" else "")),
                          flush=True)
        finally:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    print()
    for case, rs in rows.items():
        def med(f):
            vals = [f(r) for r in rs if f(r) is not None]
            return statistics.median(vals) if vals else float("nan")
        print(f"{case:5s} median of {len(rs)}: {med(lambda r: r.get('delivered_per_s')):,.0f} deliveries/s, "
              f"p50 {med(lambda r: (r.get('lat_us') or {}).get('p50')) / 1000:.2f} ms, "
              f"p99 {med(lambda r: (r.get('lat_us') or {}).get('p99')) / 1000:.2f} ms, "
              f"{med(lambda r: (r.get('server') or {}).get('cpu_us_per_msg')):.2f} µs/delivery")
    return 0


if __name__ == "__main__":
    sys.exit(main())
