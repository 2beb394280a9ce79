"""The broker's own costs, against a real redis-server on 127.0.0.1 (docs/scaling.md).

    python benches/broker_bench.py [--procs 2] [--seconds 5] [--window 64] [--sessions 10000]

1. Admissions across processes: `--procs` broker nodes (one process each, like workers)
   keep `--window` room joins in flight (closed loop, distinct users over 1000 rooms, all
   three room caps set so the whole script runs) for `--seconds`; then the same with
   session admissions (per-user limit 4, deny). Reported: admissions/s over all
   processes, per-call round trip p50/p99, each process's CPU per admission, Redis' CPU
   per admission and `INFO commandstats` (usec per EVALSHA).
2. Re-registering `--sessions` sessions after Redis came back empty: the admissions the
   gateway's resync sends (batches of 500 in flight, cluster.py), timed end to end.
3. Reaping a node that held `--sessions` sessions and as many memberships: time from its
   lease running out to its last entry gone, in steps of 200 (the reaper's).

Every wait is bounded; the redis-server is started and stopped here.
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from tests.redisproc import RedisProc  # noqa: E402
from wsprism.broker import RedisBroker  # noqa: E402
from wsprism.config.schema import BrokerConfig  # noqa: E402


class Limits:
    max_users_per_room = 1_000_000
    max_rooms_total = 1_000_000
    max_rooms_per_user = 1_000_000


class Host:
    def broker_tenants(self):
        return ["acme"]

    def presence_events(self, tenant_id):
        return False

    def on_room_frames(self, *a):
        pass

    on_presence = on_kick = on_user_frame = on_disconnect_user = on_room_frames

    async def resync(self, broker, fresh):
        pass


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def up(url, prefix, lease_ms=5000):
    b = RedisBroker(BrokerConfig(url=url, prefix=prefix, lease_ms=lease_ms), Host(), command_timeout=5.0)
    b.start()
    for _ in range(500):
        if b.up:
            return b
        await asyncio.sleep(0.01)
    raise SystemExit("broker did not come up")


async def closed_loop(url, prefix, kind, seconds, window, start_at, tag):
    b = await up(url, prefix)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    lat = []
    done = 0
    deadline = time.monotonic() + seconds
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()

    async def lane(k):
        nonlocal done
        i = k
        while time.monotonic() < deadline:
            s = time.perf_counter()
            if kind == "join":
                await b.join("acme", f"{tag}-{i}", f"room{i % 1000}", Limits, False)
            else:
                await b.admit("acme", f"{tag}-{i % 50000}", f"s{i}", 4, False, 0)
            lat.append(time.perf_counter() - s)
            done += 1
            i += window

    await asyncio.gather(*(lane(k) for k in range(window)))
    elapsed = time.monotonic() - t0
    cpu1 = proc.cpu_times()
    await b.close()
    return {"done": done, "elapsed": elapsed, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
            "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}


def _proc_main(args, q):
    import uvloop

    q.put(uvloop.run(closed_loop(*args)))


def redis_cpu(r):
    info = r.cmd("INFO", "cpu")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def commandstats(r):
    out = {}
    for line in r.cmd("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            kv = dict(x.split("=") for x in rest.split(","))
            out[name[8:]] = {"calls": int(kv["calls"]), "usec_per_call": float(kv["usec_per_call"])}
    return out


def admissions(r, kind, procs, seconds, window):
    prefix = f"b{kind}"
    r.cmd("CONFIG", "RESETSTAT")
    cpu0 = redis_cpu(r)
    q = mp.Queue()
    start_at = time.time() + 2.0
    ps = [mp.Process(target=_proc_main, args=((r.url, prefix, kind, seconds, window, start_at, f"p{i}"), q))
          for i in range(procs)]
    for p in ps:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in ps]
    for p in ps:
        p.join(10)
    cpu1 = redis_cpu(r)
    total = sum(x["done"] for x in results)
    elapsed = max(x["elapsed"] for x in results)
    stats = commandstats(r)
    return {
        "kind": kind, "procs": procs, "window": window, "admissions": total,
        "per_s": round(total / elapsed), "p50_ms": round(1e3 * max(x["p50"] for x in results), 3),
        "p99_ms": round(1e3 * max(x["p99"] for x in results), 3),
        "client_cpu_us_per_admission": [round(1e6 * x["cpu"] / max(1, x["done"]), 1) for x in results],
        "redis_cpu_us_per_admission": round(1e6 * (cpu1 - cpu0) / max(1, total), 1),
        "evalsha_usec_per_call": stats.get("evalsha", {}).get("usec_per_call"),
    }


async def reregister(url, n):
    b = await up(url, "brr")
    t0 = time.monotonic()
    for k in range(0, n, 500):
        await asyncio.gather(*(b.admit("acme", f"u{i}", f"s{i}", 4, False, 0) for i in range(k, min(n, k + 500))))
    took = time.monotonic() - t0
    await b.close()
    return {"sessions": n, "seconds": round(took, 3)}


async def reap(url, n):
    dead = await up(url, "brp", lease_ms=1000)
    for k in range(0, n, 500):
        await asyncio.gather(*(dead.admit("acme", f"u{i}", f"s{i}", 4, False, 0) for i in range(k, min(n, k + 500))))
        await asyncio.gather(*(dead.join("acme", f"u{i}", f"r{i % 100}", Limits, True) for i in range(k, min(n, k + 500))))
    # the node stops renewing: a plain stop of its task, its lease runs out on Redis' clock
    dead._closing = True
    dead._task.cancel()
    dead.cmd.abort("bench")
    dead.sub.abort("bench")
    reaper = await up(url, "brp", lease_ms=1000)
    t_dead = time.monotonic() + 1.0
    while int(reaper.keys and (await reaper.tenant_stats("acme"))[0]) > 0:
        await asyncio.sleep(0.01)
    took = time.monotonic() - t_dead
    await reaper.close()
    return {"sessions": n, "memberships": n, "seconds_after_lease": round(took, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--sessions", type=int, default=10_000)
    args = ap.parse_args()
    import uvloop

    r = RedisProc()
    try:
        out = {"joins": admissions(r, "join", args.procs, args.seconds, args.window),
               "admits": admissions(r, "admit", args.procs, args.seconds, args.window),
               "reregister": uvloop.run(reregister(r.url, args.sessions)),
               "reap": uvloop.run(reap(r.url, args.sessions))}
    finally:
        r.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
