"""Scale-out with real processes: `gateway.workers` under its supervisor, several gateways
on one Redis, session limits exact across them, workers killed and restarted."""
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import websockets

from tests.client import connect, connect_authed, expect_close, http_get, recv_json
from tests.procs import spawner
from tests.redisproc import free_port

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
  workers: {workers}
  drain_grace_ms: 400
{extra}
broker:
  url: "{url}"
  lease_ms: 1000
  prefix: "{prefix}"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      sessions: {{max_sessions_per_user: {limit}, on_exceed: {on_exceed}}}
"""


class Host:
    """One `wsprism start` (a supervisor with workers, or a single gateway)."""

    def __init__(self, tmp_path, name, url, workers=2, limit=4, on_exceed="deny", prefix="wsp", extra="",
                 ready="workers active at", port=None):
        self.port = port or free_port()
        self.cfg = tmp_path / f"{name}.yaml"
        self.cfg.write_text(CONFIG.format(port=self.port, workers=workers, url=url, limit=limit,
                                          on_exceed=on_exceed, prefix=prefix, extra=extra))
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen([PY, "-m", "wsprism", "start", "--config", str(self.cfg)],
                                  stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        if ready:
            self.wait_log(ready, timeout=30)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, needle, count=1, timeout=15.0):
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            assert self.p.poll() is None or needle in self.text(), self.text()
            assert time.monotonic() < deadline, f"{needle!r} not seen:\n{self.text()}"
            time.sleep(0.05)

    def url(self, ticket="dev", sid=None):
        q = f"tenant=acme&ticket={ticket}" + (f"&sid={sid}" if sid else "")
        return f"ws://127.0.0.1:{self.port}/v1/ws?{q}"

    def metrics(self) -> str:
        status, _, body = http_get(self.port, "/metrics")
        assert status == 200
        return body.decode()

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            for pid in self.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.p.send_signal(sig)
        self.p.wait(10)
        self.log.close()


@pytest.fixture
def hosts(tmp_path):
    yield from spawner(Host, tmp_path, "h")


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def until(pred, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


def test_workers_without_broker_fail_in_one_line(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("version: 1\ngateway: {workers: 2}\ntenants: [{id: acme}]\n")
    r = subprocess.run([PY, "-m", "wsprism", "start", "--config", str(cfg)], capture_output=True, text=True,
                       cwd=ROOT, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway.workers: 2 workers need a shared broker" in lines[0]


def test_host_metrics_whichever_worker_answers(hosts, redis_server):
    h = hosts(redis_server.url, workers=2, prefix="m1")

    async def main():
        clients = [await connect_authed(h.url(ticket=f"dev:u{i}")) for i in range(12)]

        def sums_right():
            texts = [h.metrics() for _ in range(6)]     # new connections: the kernel picks a worker
            return all(metric(t, "wsprism_ws_sessions_active", tenant="acme") == 12 for t in texts) and texts

        texts = await asyncio.get_running_loop().run_in_executor(None, until, sums_right)
        for t in texts:
            assert metric(t, "wsprism_broker_up", worker="0") == 1 and metric(t, "wsprism_broker_up", worker="1") == 1
            assert metric(t, "wsprism_ws_upgrades_total", tenant="acme", status="101") == 12
            assert metric(t, "wsprism_workers") == 2
            assert 'wsprism_worker_snapshot_age_seconds{worker="0"}' in t
        # both workers took some of the sessions (SO_REUSEPORT spreads them)
        assert h.text().count("broker up at") == 2
        for ws, _ in clients:
            await ws.close()

    asyncio.run(main())
    status, _, body = http_get(h.port, "/readyz")
    assert (status, body.strip()) == (200, b"ready")


def test_two_gateways_200_connects_each_of_one_user_limit_3_kick_oldest(hosts, redis_server):
    """Two nodes on one Redis, 400 concurrent connects of alice: exactly 3 survive,
    and they are the 3 that Redis admitted last; every other one is kicked (4003)."""
    a = hosts(redis_server.url, workers=1, limit=3, on_exceed="kick_oldest", prefix="k1",
              ready="broker up at")
    b = hosts(redis_server.url, workers=1, limit=3, on_exceed="kick_oldest", prefix="k1",
              ready="broker up at")

    async def one(host, sid):
        try:
            ws = await websockets.connect(host.url(ticket="dev:alice", sid=sid), open_timeout=20,
                                          close_timeout=2, max_size=None)
        except (OSError, websockets.WebSocketException) as exc:
            return sid, "failed", repr(exc)
        try:
            first = await recv_json(ws, 20)
            if first["type"] != "authed":
                return sid, "refused", first
            while True:
                msg = await asyncio.wait_for(ws.recv(), 4)
                if '"kicked"' in msg:
                    code = await expect_close(ws, 5)
                    return sid, "kicked", code
        except asyncio.TimeoutError:
            return sid, "open", ws
        except websockets.ConnectionClosed as exc:
            return sid, "closed", exc.rcvd.code if exc.rcvd else None

    async def main():
        results = await asyncio.gather(*(one(a if i % 2 else b, f"c{i}") for i in range(400)))
        by = {}
        for sid, what, extra in results:
            by.setdefault(what, []).append((sid, extra))
        assert set(by) <= {"open", "kicked"}, {k: v[:3] for k, v in by.items()}
        survivors = {sid for sid, _ in by["open"]}
        assert len(survivors) == 3
        assert {code for _, code in by["kicked"]} == {4003} and len(by["kicked"]) == 397
        assert survivors == set(redis_server.cmd("ZRANGE", "k1:{acme}:u:alice", "0", "-1"))
        for _, ws in by["open"]:
            await ws.close()

    asyncio.run(main())


def test_worker_sigkilled_is_restarted_and_its_sessions_stop_counting(hosts, redis_server):
    h = hosts(redis_server.url, workers=2, limit=1, on_exceed="deny", prefix="d1")

    async def main():
        # sessions until both workers hold some
        clients = []
        for i in range(40):
            ws, authed = await connect_authed(h.url(ticket=f"dev:user{i}"))
            clients.append((ws, f"user{i}"))
        pids = h.worker_pids()
        assert len(pids) == 2
        await asyncio.sleep(1.2)           # a fresh metrics snapshot (lost with SIGKILL otherwise)
        os.kill(pids[0], signal.SIGKILL)

        async def fate(ws, user):
            try:
                await asyncio.wait_for(ws.recv(), 1.0)
            except asyncio.TimeoutError:
                return "kept"
            except websockets.ConnectionClosed:
                return "lost"
            return "other"

        fates = await asyncio.gather(*(fate(ws, user) for ws, user in clients))
        kept = [c for c, f in zip(clients, fates) if f == "kept"]
        lost = [c[1] for c, f in zip(clients, fates) if f == "lost"]
        assert len(kept) + len(lost) == 40
        assert lost and kept                       # both workers had sessions
        # a user whose only session died with the worker reconnects at once (limit 1, deny)
        for user in lost:
            ws, _ = await connect_authed(h.url(ticket=f"dev:{user}"))
            await ws.close()
        # the survivors' sessions still count: a second session of theirs is denied
        ws = await connect(h.url(ticket=f"dev:{kept[0][1]}"))
        err = await recv_json(ws)
        assert err["data"]["code"] == "TOO_MANY_SESSIONS"
        assert await expect_close(ws) == 4004
        for ws, _ in kept:
            await ws.close()

    asyncio.run(main())
    h.wait_log("exited with signal 9", timeout=5)
    assert re.search(r"worker \d \(pid \d+\) exited with signal 9 after [\d.]+s; restarting it", h.text())
    until(lambda: len(h.worker_pids()) == 2, timeout=15)
    h.wait_log("broker up at", count=3, timeout=15)
    text = until(lambda: (lambda t: metric(t, "wsprism_worker_restarts_total") == 1 and t)(h.metrics()))
    assert metric(text, "wsprism_ws_upgrades_total", tenant="acme", status="101") >= 40   # kept from the dead one


def test_sigterm_drains_every_worker_and_exits_0(hosts, redis_server):
    h = hosts(redis_server.url, workers=2, prefix="t1")

    async def main():
        clients = [(await connect_authed(h.url(ticket=f"dev:u{i}")))[0] for i in range(10)]
        h.p.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(expect_close(ws, 5) for ws in clients))
        assert set(codes) == {1001}

    asyncio.run(main())
    assert h.p.wait(15) == 0
    text = h.text()
    assert text.count("signal received: draining") == 3        # supervisor + both workers
    assert "stopped (2 workers, exit codes [0, 0])" in text


def test_sighup_reloads_every_worker_and_a_bad_file_none(hosts, redis_server):
    h = hosts(redis_server.url, workers=2, prefix="r1")
    h.p.send_signal(signal.SIGHUP)
    h.wait_log("configuration reloaded", count=2)
    good = h.cfg.read_text()
    h.cfg.write_text(good.replace("tenants:", "tenantz:"))
    h.p.send_signal(signal.SIGHUP)
    h.wait_log("reload rejected")
    time.sleep(0.5)
    text = h.text()
    assert text.count("reload rejected") == 1 and text.count("configuration reloaded") == 2
    h.cfg.write_text(good.replace("workers: 2", "workers: 3"))
    h.p.send_signal(signal.SIGHUP)
    h.wait_log("configuration reloaded", count=4)
    assert "gateway.workers changed: needs a restart" in h.text()


def test_a_crash_looping_worker_backs_off(hosts, redis_server):
    """Every worker fails at start (its API port is taken): restarts wait longer and
    longer instead of spinning; SIGTERM still ends it all."""
    api = socket.socket()
    api.bind(("127.0.0.1", 0))
    api.listen(1)
    port = api.getsockname()[1]
    try:
        h = hosts(redis_server.url, workers=2, prefix="c1", ready=None,
                  extra=f'  api: {{listen: "127.0.0.1:{port}", keys: {{}}}}')
        h.wait_log("restarting it in 2.0s", timeout=30)
        text = h.text()
        assert "restarting it in 0.5s" in text and "restarting it in 1.0s" in text
        starts = text.count("supervising") + text.count("compiled fast path")
        assert starts < 20                                 # no spin
        h.p.send_signal(signal.SIGTERM)
        assert h.p.wait(15) in (0, 1)
    finally:
        api.close()


def test_sigterm_while_a_worker_is_being_restarted_stops_the_new_one_too(hosts, redis_server):
    """SIGTERM lands while the supervisor is starting a dead worker's replacement: the
    replacement gets SIGTERM as soon as it exists and the supervisor waits for it; no
    worker outlives the supervisor."""
    h = hosts(redis_server.url, workers=2, prefix="t9")
    try:
        pid = h.worker_pids()[0]
        time.sleep(10.2)                    # past MIN_UPTIME: the restart comes at once
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "restarting it" not in h.text():
            assert time.monotonic() < deadline, h.text()
            time.sleep(0.002)
        h.p.send_signal(signal.SIGTERM)     # the replacement is being started
        h.p.wait(15)                        # 1 if the replacement died of the SIGTERM before it ran
        assert re.search(r"stopped \(2 workers, exit codes \[(0|-15), 0\]\)", h.text()), h.text()
        until(lambda: not subprocess.run(["pgrep", "-f", str(h.cfg)], capture_output=True).stdout, timeout=5)
    finally:
        leftover = subprocess.run(["pgrep", "-f", str(h.cfg)], capture_output=True, text=True).stdout.split()
        for p in leftover:
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
