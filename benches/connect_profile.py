"""User-space instructions per connect, gateway against bare picows (callgrind).

    python benches/connect_profile.py [--targets gateway,picows] [--cycles 300] [--warmup 100]

Starts each server under `valgrind --tool=callgrind --instr-atstart=no` on a free port,
runs `--warmup` connect -> first text frame (`authed`) -> close (1000) cycles, 4 at a time,
switches instrumentation on (`callgrind_control -i on`), runs `--cycles` more, switches
it off and stops the server. Prints the instructions counted per session. Instruction
counts do not depend on what else runs on the machine, so this decides handshake costs
that CPU time on a shared machine cannot (docs/benchmarks.md, "Handshakes").
`--keep DIR` keeps the callgrind.out files for `callgrind_annotate`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsprism.loadgen.targets import SpawnedTarget, free_port  # noqa: E402


async def _cycles(url: str, n: int, parallel: int = 4) -> None:
    from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

    class C(WSListener):
        def __init__(self):
            self.got = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, tr, frame):
            if frame.msg_type == WSMsgType.TEXT and not self.got.done():
                self.got.set_result(None)

    async def one(i):
        tr, c = await ws_connect(C, url.format(i=i))
        await asyncio.wait_for(c.got, 60)
        tr.send_close(WSCloseCode.OK)     # as `wsprism bench connect` closes (picows' default, 1005, is a protocol error on the wire)
        await asyncio.wait_for(tr.wait_disconnected(), 60)

    todo = iter(range(n))

    async def lane():
        for i in todo:
            await one(i)

    await asyncio.gather(*(lane() for _ in range(parallel)))


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def measure(kind: str, config: str, cycles: int, warmup: int, keep: str | None) -> float:
    import uvloop

    target = SpawnedTarget(kind, kind, config=config if kind == "gateway" else None)
    target.port = free_port()
    out_dir = tempfile.mkdtemp(prefix="wsprism-callgrind-")
    out = os.path.join(out_dir, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           *target._command()]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_port(target.port, proc)
        url = target.url(_tenant(config) if kind == "gateway" else "bench", "dev:u{i}")
        uvloop.run(_cycles(url, warmup))
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        uvloop.run(_cycles(url, cycles))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    total = 0
    for name in os.listdir(out_dir):
        with open(os.path.join(out_dir, name), errors="replace") as f:
            for line in f:
                m = re.match(r"(?:summary|totals): (\d+)", line)
                if m:
                    total = max(total, int(m.group(1))) if name == "callgrind.out" else total
    if keep:
        os.makedirs(keep, exist_ok=True)
        for name in os.listdir(out_dir):
            shutil.copy(os.path.join(out_dir, name), os.path.join(keep, f"{kind}.{name}"))
    shutil.rmtree(out_dir, ignore_errors=True)
    return total / cycles


def _tenant(config: str) -> str:
    from wsprism.loadgen.targets import read_config
    return read_config(config)["tenants"][0]["id"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="gateway,picows")
    ap.add_argument("--config", default=str(ROOT / "benches/configs/bench.yaml"))
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--keep", metavar="DIR")
    args = ap.parse_args()
    for kind in args.targets.split(","):
        per = measure(kind, args.config, args.cycles, args.warmup, args.keep)
        print(f"{kind:10s} {per / 1000:8.1f} k instructions per session ({args.cycles} sessions)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
