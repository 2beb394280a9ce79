"""Where an idle connection's memory goes (docs/benchmarks.md, "Memory per idle connection").

    python benches/idle_memory.py [--conns 5000] [--rooms 0] [--config benches/configs/bench.yaml]

Starts the gateway (`python -m wsprism start`) with tracemalloc on (1 frame), opens
`--conns` idle connections from a client process (each joins `--rooms` rooms first),
and on SIGUSR2 has the gateway dump a tracemalloc snapshot and a count of its
GC-tracked objects by type, once before the connections and once with them open.
Prints, per connection: the RSS delta, what the Python allocators hold (by the source
line that allocated it, so picows' read buffer, uvloop's transport, our Session each
show up), and the objects by type. RSS minus the traced part is memory malloc'd by C
code outside Python's allocators (libuv handles, OpenSSL, malloc's own overhead).

tracemalloc makes every allocation slower and adds its own bookkeeping to the RSS, so
the RSS figure here is above `wsprism bench idle`'s; the traced bytes are exact.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the gateway process: a SIGUSR2 handler that dumps what we look at.
_HOOK = r"""
import gc, os, pickle, runpy, signal, sys, tracemalloc
from collections import Counter
tracemalloc.start(1)
def dump(signum, frame):
    gc.collect()
    path = os.environ["IDLE_MEMORY_DUMP"] + "." + str(len(os.listdir(os.path.dirname(os.environ["IDLE_MEMORY_DUMP"]))))
    types, sizes = Counter(), Counter()
    for o in gc.get_objects():
        name = str(getattr(type(o), "__module__", "?")) + "." + str(getattr(type(o), "__qualname__", "?"))
        types[name] += 1
        try:
            sizes[name] += sys.getsizeof(o)
        except Exception:
            pass
    types = (types, sizes)
    snap = tracemalloc.take_snapshot()
    with open(path + ".types", "wb") as f:
        pickle.dump(types, f)
    snap.dump(path + ".snap")
    with open(path + ".done", "w") as f:
        f.write("ok")
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["wsprism"] + sys.argv[1:]
runpy.run_module("wsprism", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_gateway(hook: str, cfg_path: Path, port: int, env: dict) -> subprocess.Popen:
    """`python -m wsprism start` run through `hook` (a script that ends by running the
    module), once its port accepts connections (at most 30 s)."""
    gw = subprocess.Popen([sys.executable, "-c", hook, "start", "--config", str(cfg_path),
                           "--log-level", "WARNING"], env=env, preexec_fn=raise_fd_limit)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    return gw


def stop(gw: subprocess.Popen, *clients) -> None:
    """Let the client processes close their connections (a line on stdin), then stop the
    gateway; kill what does not end in time."""
    for c in clients:
        if c is not None and c.poll() is None:
            try:
                c.stdin.write("\n")
                c.stdin.flush()
                c.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                c.kill()
    gw.send_signal(signal.SIGTERM)
    try:
        gw.wait(15)
    except subprocess.TimeoutExpired:
        gw.kill()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _clients(url: str, n: int, rooms: int) -> None:
    from picows import WSListener, WSMsgType, ws_connect

    class C(WSListener):
        def __init__(self):
            self.q = asyncio.Queue()

        def on_ws_frame(self, tr, frame):
            if frame.msg_type == WSMsgType.TEXT:
                self.q.put_nowait(frame.get_payload_as_bytes())

    sem = asyncio.Semaphore(200)
    conns = []

    async def one(i):
        async with sem:
            tr, c = await ws_connect(C, url.format(i=i))
            await asyncio.wait_for(c.q.get(), 30)              # authed
            for r in range(rooms):
                tr.send(WSMsgType.TEXT, b'{"v":1,"svc":"room","type":"join","room":"r%d"}' % ((i + r) % 1000))
                await asyncio.wait_for(c.q.get(), 30)          # joined
            conns.append(tr)

    await asyncio.gather(*(one(i) for i in range(n)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for tr in conns:
        tr.disconnect()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--rooms", type=int, default=0, help="rooms each connection joins (rooms r0..r999)")
    ap.add_argument("--config", default=str(ROOT / "benches" / "configs" / "bench.yaml"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        raise_fd_limit()
        import uvloop
        uvloop.run(_clients(args.client[0], int(args.client[1]), int(args.client[2])))
        return 0

    import yaml

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load(Path(args.config).read_text())
        cfg.setdefault("gateway", {})["listen"] = f"127.0.0.1:{port}"
        cfg_path = Path(tmp) / "gw.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        dumps = Path(tmp) / "dumps"
        dumps.mkdir()
        env = dict(os.environ, IDLE_MEMORY_DUMP=str(dumps / "d"), PYTHONPATH=str(ROOT))

        gw = start_gateway(_HOOK, cfg_path, port, env)
        client = None
        try:
            def snapshot(k: int):
                gw.send_signal(signal.SIGUSR2)
                done = dumps / f"d.{k * 3}.done"
                end = time.monotonic() + 120
                while not done.exists() and time.monotonic() < end:
                    time.sleep(0.1)
                with open(dumps / f"d.{k * 3}.types", "rb") as f:
                    types = pickle.load(f)
                return tracemalloc.Snapshot.load(str(dumps / f"d.{k * 3}.snap")), types

            time.sleep(0.5)
            r0 = rss(gw.pid)
            s0, t0 = snapshot(0)
            url = f"ws://127.0.0.1:{port}/v1/ws?tenant=bench&ticket=dev:u{{i}}"
            client = subprocess.Popen([sys.executable, __file__, "--client", url, str(args.conns), str(args.rooms)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            line = client.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError("client did not get its connections up")
            time.sleep(1.0)
            r1 = rss(gw.pid)
            s1, t1 = snapshot(1)
            r2 = rss(gw.pid)
        finally:
            stop(gw, client)

    n = args.conns
    stats = s1.compare_to(s0, "lineno")
    traced = sum(st.size_diff for st in stats)
    print(f"{n} idle connections, {args.rooms} rooms each (tracemalloc on)")
    print(f"  RSS delta per connection      {(r1 - r0) / n / 1024:8.2f} KB   (after the dump: {(r2 - r0) / n / 1024:.2f})")
    print(f"  Python allocators, traced     {traced / n / 1024:8.2f} KB")
    print(f"  not traced (C malloc, pages)  {((r1 - r0) - traced) / n / 1024:8.2f} KB")
    print(f"  by allocating line (bytes per connection, count per connection):")
    for st in stats[:args.top]:
        if st.size_diff <= 0:
            continue
        fr = st.traceback[0]
        where = fr.filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(f"    {st.size_diff / n:8.1f} B  {st.count_diff / n:6.2f}  {where}:{fr.lineno}")
    print("  GC-tracked objects by type (count and sys.getsizeof bytes per connection):")
    (c0, z0), (c1, z1) = t0, t1
    diff = Counter({k: c1[k] - c0.get(k, 0) for k in c1})
    for k, v in diff.most_common(18):
        if v > 0:
            print(f"    {v / n:6.2f}  {(z1[k] - z0.get(k, 0)) / n:7.1f} B  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
