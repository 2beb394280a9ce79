"""`/metrics` for the whole host when `gateway.workers` > 1 (SPEC 11), whichever worker
the request lands on.

How the workers share it: each worker writes a snapshot of its own metric families to a
file in the supervisor's run directory (`w<i>.msgpack`, on tmpfs where there is one),
once a second and when it stops, by write-then-rename so a reader never sees half a file.
The worker that answers a scrape merges its own live families with the other workers'
files, the counters the supervisor kept from workers that died (`retired.msgpack`, so
host counters never go backwards when a worker is restarted) and the supervisor's own
(`supervisor.msgpack`: worker restarts).

Why files and not asking the other workers at scrape time: a scrape never waits on
another process (a worker that is stuck or being restarted cannot stall or fail it), the
supervisor stays a plain process manager with no protocol to speak, and the cost is one
small write per worker per second. The price is that other workers' figures are up to a
second old; `wsprism_worker_snapshot_age_seconds{worker}` says how old.

Merging: samples with the same name and labels are summed (counters, histogram buckets,
sums and counts, and gauges such as `wsprism_ws_sessions_active`), except the families in
PER_WORKER, where a sum means nothing: those keep one series per worker, labelled
`worker`.
"""
import logging
import os
import time

import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

log = logging.getLogger("wsprism.workers")

PER_WORKER = frozenset({"wsprism_broker_up", "wsprism_draining"})
RETIRED = "retired.msgpack"
SUPERVISOR = "supervisor.msgpack"
SNAPSHOT_INTERVAL = 1.0

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def worker_file(index: int) -> str:
    return f"w{index}.msgpack"


def families_to_data(families) -> list:
    return [[f.name, f.documentation, f.type, [[s.name, s.labels, s.value] for s in f.samples]]
            for f in families]


def write_atomic(path: str, data) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(_encode(data))
    os.replace(tmp, path)


def read(path: str):
    try:
        with open(path, "rb") as fh:
            return _decode(fh.read())
    except (OSError, msgspec.DecodeError):
        return None


def merge(parts) -> list[Metric]:
    """parts: [(worker label or None, family data)]; returns merged Metric families."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict] = {}
    for worker, data in parts:
        for name, doc, typ, samples in data:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = Metric(name, doc, typ)
                sums[name] = {}
            acc = sums[name]
            for sname, labels, value in samples:
                if name in PER_WORKER and worker is not None:
                    labels = {**labels, "worker": worker}
                key = (sname, tuple(sorted(labels.items())))
                acc[key] = acc.get(key, 0) + value
    for name, fam in families.items():
        for (sname, labels), value in sums[name].items():
            fam.add_sample(sname, dict(labels), value)
    return list(families.values())


def counters_only(data) -> list:
    """What survives a worker: counters and histograms (gauges die with it)."""
    return [f for f in data if f[2] in ("counter", "histogram") and f[0] not in PER_WORKER]


class HostCollector:
    """Whole-host metrics, as seen from one worker (registered instead of the gateway's own)."""

    def __init__(self, own_registry, run_dir: str, index: int) -> None:
        self.own = own_registry
        self.dir = run_dir
        self.index = index
        self.warned = False

    def describe(self):
        return []

    def own_data(self) -> list:
        return families_to_data(self.own.collect())

    def collect(self):
        parts = [(str(self.index), self.own_data())]
        ages = Metric("wsprism_worker_snapshot_age_seconds", "Age of each worker's metrics snapshot", "gauge")
        ages.add_sample("wsprism_worker_snapshot_age_seconds", {"worker": str(self.index)}, 0.0)
        now = time.time()
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            names = []
        for fname in names:
            path = os.path.join(self.dir, fname)
            if fname.startswith("w") and fname.endswith(".msgpack"):
                worker = fname[1:-len(".msgpack")]
                if worker == str(self.index) or not worker.isdigit():
                    continue
                data = read(path)
                if data is None:
                    continue
                try:
                    ages.add_sample("wsprism_worker_snapshot_age_seconds", {"worker": worker},
                                    max(0.0, now - os.path.getmtime(path)))
                except OSError:
                    pass
                parts.append((worker, data))
            elif fname in (RETIRED, SUPERVISOR):
                data = read(path)
                if data is not None:
                    parts.append((None, data))
        yield from merge(parts)
        yield ages


def host_registry(own_registry, run_dir: str, index: int) -> tuple[CollectorRegistry, HostCollector]:
    collector = HostCollector(own_registry, run_dir, index)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry, collector


async def publish_snapshots(collector: HostCollector) -> None:
    """The worker's side: its own families to its file, once a second."""
    import asyncio

    path = os.path.join(collector.dir, worker_file(collector.index))
    while True:
        write_snapshot(collector, path)
        await asyncio.sleep(SNAPSHOT_INTERVAL)


def write_snapshot(collector: HostCollector, path: str | None = None) -> None:
    path = path or os.path.join(collector.dir, worker_file(collector.index))
    try:
        write_atomic(path, collector.own_data())
    except OSError as exc:                   # the run directory went away: say it once
        if not collector.warned:
            collector.warned = True
            log.warning("cannot write the metrics snapshot %s: %s", path, exc)


def retire(run_dir: str, index: int) -> None:
    """The supervisor's side, when worker `index` died: keep its counters, drop its file."""
    path = os.path.join(run_dir, worker_file(index))
    data = read(path)
    if data is not None:
        old = read(os.path.join(run_dir, RETIRED)) or []
        merged = merge([(None, old), (None, counters_only(data))])
        write_atomic(os.path.join(run_dir, RETIRED), families_to_data(merged))
    try:
        os.unlink(path)
    except OSError:
        pass
