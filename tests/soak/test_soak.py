"""Soak tests: a real gateway process under long churn and long mixed traffic.

Excluded from the default run (`-m 'not slow'` in pyproject). Run them with

    bash scripts/test.sh -m slow            # or: python -m pytest -m slow -s tests/soak

Sizes come from the environment (defaults are the issue's values):

    WSPRISM_SOAK_CYCLES     connect/disconnect cycles of the churn test (100000)
    WSPRISM_SOAK_WARMUP     cycles before the reference RSS is taken (5000)
    WSPRISM_SOAK_SECONDS    duration of the mixed-traffic test (300)
    WSPRISM_SOAK_SESSIONS   sessions of the mixed-traffic test (2000)
    WSPRISM_SOAK_PROCS      client processes (2)

Each test prints one `SOAK ...` line with its numbers (use -s to see it).
The gateway's state is read from the outside only: `/metrics` for the session count,
the server API's `GET /v1/stats` for the session, room and user tables, and a probe
client for what no counter shows (a probe joins every room the run used and must find
itself alone there; sampled users must still be able to open their full quota of
sessions and rooms, which a leaked registry or per-user room entry would prevent).
"""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.client import connect, http_get, recv_json, send_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
CLIENTS = os.path.join(ROOT, "tests", "soak", "clients.py")

CYCLES = int(os.environ.get("WSPRISM_SOAK_CYCLES", "100000"))
WARMUP = int(os.environ.get("WSPRISM_SOAK_WARMUP", "5000"))
SECONDS = float(os.environ.get("WSPRISM_SOAK_SECONDS", "300"))
SESSIONS = int(os.environ.get("WSPRISM_SOAK_SESSIONS", "2000"))
PROCS = int(os.environ.get("WSPRISM_SOAK_PROCS", "2"))

API_KEY = "soak-api-key-0123456789"
CHURN_ROOMS = 20
MIX_ROOMS = 200
SESSIONS_PER_USER = 4
ROOMS_PER_USER = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """`python -m wsprism start` on a free loopback port, its log in a file."""

    def __init__(self, tmp_path, yaml_body: str) -> None:
        self.port = free_port()
        self.api_port = free_port()
        cfg = tmp_path / "wsprism.yaml"
        cfg.write_text(yaml_body.replace("APIPORT", str(self.api_port)).replace("PORT", str(self.port)))
        self.log_path = tmp_path / "gateway.log"
        self._log = open(self.log_path, "w")
        env = dict(os.environ, WSPRISM_SOAK_API_KEY=API_KEY)
        self.p = subprocess.Popen([PY, "-m", "wsprism", "start", "--config", str(cfg)],
                                  stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.ps = psutil.Process(self.p.pid)
        deadline = time.monotonic() + 15
        while "Gateway active at" not in self.log():
            assert self.p.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text()

    def url(self, tenant: str = "soak") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws?tenant={tenant}"

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def metrics(self) -> str:
        status, _, body = http_get(self.port, "/metrics", timeout=10)
        assert status == 200
        return body.decode()

    def metric(self, name: str, text: str | None = None, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        text = self.metrics() if text is None else text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
            if m is None or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def stats(self, tenant: str = "soak") -> dict:
        """The server API's table sizes: {"sessions", "rooms", "users"}."""
        status, _, body = http_get(self.api_port, f"/v1/stats?tenant={tenant}",
                                   {"Authorization": f"Bearer {API_KEY}", "Connection": "close"}, timeout=10)
        assert status == 200, body
        return json.loads(body)

    def wait_sessions(self, want: int, timeout: float) -> float:
        """Poll wsprism_ws_sessions_active until it is `want`; returns the last value."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.metric("wsprism_ws_sessions_active")
            if n == want or time.monotonic() > deadline:
                return n
            time.sleep(0.25)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._log.close()
        return self.p.returncode


@pytest.fixture
def spawn_gateway(tmp_path):
    started = []

    def start(yaml_body: str) -> GatewayProcess:
        g = GatewayProcess(tmp_path, yaml_body)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


def worker_cmd(mode: str, url: str, worker: int, **opts) -> list[str]:
    cmd = [PY, CLIENTS, mode, "--url", url, "--worker", str(worker)]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def run_churn(g: GatewayProcess, first: int, cycles: int, procs: int, timeout: float) -> dict:
    """`cycles` churn cycles split over `procs` client processes; merged results."""
    share = [cycles // procs + (1 if i < cycles % procs else 0) for i in range(procs)]
    starts = [first + sum(share[:i]) for i in range(procs)]
    t0 = time.monotonic()
    ps = [subprocess.Popen(worker_cmd("churn", g.url(), w, first=starts[w], cycles=share[w], concurrency=32,
                                      rooms=CHURN_ROOMS, timeout=timeout),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
          for w in range(procs)]
    merged = {"ok": 0, "errors": {}, "first_error": "", "close_codes": {}}
    for p in ps:
        out, err = p.communicate(timeout=timeout + 60)
        assert p.returncode == 0, err[-2000:]
        res = json.loads(out.strip().splitlines()[-1])
        merged["ok"] += res["ok"]
        for key in ("errors", "close_codes"):
            for k, v in res[key].items():
                merged[key][k] = merged[key].get(k, 0) + v
        merged["first_error"] = merged["first_error"] or res["first_error"]
    merged["seconds"] = time.monotonic() - t0
    return merged


# --- probing the tables from the outside ---------------------------------------------------

async def ask(ws, obj, want: str) -> dict:
    """Send and read until a message of type `want` (presence events may come first)."""
    await send_json(ws, obj)
    for _ in range(20):
        msg = await recv_json(ws, timeout=5)
        if msg["type"] == want:
            return msg
        assert msg["type"] in ("user_joined", "user_left"), (obj, msg)
    raise AssertionError(f"no {want} for {obj}")


async def probe_rooms(g: GatewayProcess, rooms: list[str]) -> list[str]:
    """Join each room alone: returns the rooms where someone else is still counted."""
    ws = await connect(g.url() + "&ticket=dev:probe")
    assert (await recv_json(ws))["type"] == "authed"
    dirty = []
    for room in rooms:
        await ask(ws, {"v": 1, "svc": "room", "type": "join", "room": room}, "joined")
        p = await ask(ws, {"v": 1, "svc": "room", "type": "presence", "room": room}, "presence")
        if p["data"] != {"count": 1, "users": ["probe"]}:
            dirty.append(f"{room}: {p['data']}")
        await ask(ws, {"v": 1, "svc": "room", "type": "leave", "room": room}, "left")
    await ws.close()
    return dirty


async def probe_user(g: GatewayProcess, user: str, rooms: list[str]) -> None:
    """The user opens its whole session quota and joins its whole room quota."""
    conns = []
    for i in range(SESSIONS_PER_USER):
        ws = await connect(g.url() + f"&ticket=dev:{user}")
        msg = await recv_json(ws)
        assert msg["type"] == "authed", (user, i, msg)
        conns.append(ws)
    for room in rooms[:ROOMS_PER_USER]:
        msg = await ask(conns[0], {"v": 1, "svc": "room", "type": "join", "room": room}, "joined")
        assert msg["room"] == room
    for ws in conns:
        await ws.close()


def check_log(g: GatewayProcess) -> list[str]:
    lines = g.log().splitlines()
    bad = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or "CRITICAL" in ln]
    assert not bad, "\n".join(bad[:20])
    return lines


# --- (a) connect/disconnect churn ------------------------------------------------------

CHURN_YAML = f"""
version: 1
gateway:
  listen: "127.0.0.1:PORT"
  drain_grace_ms: 1000
  handshake_limit: {{enabled: true, global_rps: 1000000, global_burst: 1000000,
                    per_ip_rps: 1000, per_ip_burst: 1000, max_ip_entries: 2000}}
  trusted_proxies: ["127.0.0.1/32"]
  api: {{listen: "127.0.0.1:APIPORT", keys: {{soak: {{env: WSPRISM_SOAK_API_KEY}}}}}}
tenants:
  - id: soak
    limits: {{max_rooms_total: {CHURN_ROOMS + ROOMS_PER_USER}, max_rooms_per_user: {ROOMS_PER_USER}}}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      presence_events: true
      sessions: {{mode: multi, max_sessions_per_user: {SESSIONS_PER_USER}, on_exceed: deny}}
"""


@pytest.mark.slow
@pytest.mark.timeout(300 + CYCLES // 50)
def test_churn_memory_flat_and_tables_empty(spawn_gateway):
    g = spawn_gateway(CHURN_YAML)
    rss_start = g.rss()
    budget = 60 + CYCLES / 100                    # seconds; a generous bound at 100 cycles/s

    warm = run_churn(g, 0, WARMUP, PROCS, budget)
    assert g.wait_sessions(0, 10) == 0
    time.sleep(1)
    rss_warm = g.rss()
    cpu0 = g.cpu()

    main = run_churn(g, WARMUP, CYCLES - WARMUP, PROCS, budget)
    assert g.wait_sessions(0, 10) == 0
    time.sleep(1)
    rss_after = g.rss()
    cpu = g.cpu() - cpu0

    done = warm["ok"] + main["ok"]
    errors = {k: warm["errors"].get(k, 0) + main["errors"].get(k, 0) for k in {**warm["errors"], **main["errors"]}}
    rate = main["ok"] / main["seconds"]
    print(f"\nSOAK churn: cycles={done}/{CYCLES} errors={errors} warm-up {warm['seconds']:.1f}s, "
          f"main {main['seconds']:.1f}s = {rate:.0f} cycles/s; gateway CPU {cpu * 1e6 / max(1, main['ok']):.0f} "
          f"µs/cycle; RSS start {rss_start / 2**20:.1f} MiB, after warm-up {rss_warm / 2**20:.1f} MiB, "
          f"after churn {rss_after / 2**20:.1f} MiB ({(rss_after / rss_warm - 1) * 100:+.1f}%); "
          f"close codes {main['close_codes']}", flush=True)

    # every cycle completed (a timeout on a loaded 2-core box is tolerated, 1 in 10^4)
    assert set(errors) <= {"timeout"}, (errors, warm["first_error"] or main["first_error"])
    assert sum(errors.values()) <= CYCLES // 10000, errors
    assert set(main["close_codes"]) == {"1000"}, main["close_codes"]
    # memory back where it was after the warm-up
    assert rss_after <= rss_warm * 1.10, (rss_warm, rss_after)

    # tables empty: the API's counts, every room the churn used, the churn users' quotas
    assert g.stats() == {"sessions": 0, "rooms": 0, "users": 0}
    rooms = [f"churn{i}" for i in range(CHURN_ROOMS)]

    async def probes():
        dirty = await probe_rooms(g, rooms)
        assert not dirty, dirty
        for user in ("c0x0", "c0x31", f"c{PROCS - 1}x7"):
            await probe_user(g, user, rooms)
    asyncio.run(probes())
    assert g.wait_sessions(0, 10) == 0
    assert g.stats() == {"sessions": 0, "rooms": 0, "users": 0}

    text = g.metrics()
    ok101 = g.metric("wsprism_ws_upgrades_total", text, tenant="soak", status="101")
    probes_n = 1 + 3 * SESSIONS_PER_USER
    if not errors:
        assert ok101 == done + probes_n, (ok101, done)
    assert g.metric("wsprism_handshake_rejections_total", text) == 0
    lines = check_log(g)
    assert len(lines) < 30, lines[-30:]           # nothing is logged per session
    assert g.stop() == 0


# --- (b) mixed traffic ----------------------------------------------------------------

MIX_YAML = f"""
version: 1
gateway:
  listen: "127.0.0.1:PORT"
  ping_interval_ms: 5000
  idle_timeout_ms: 10000
  writer_send_timeout_ms: 500
  outbound_high_water_bytes: 65536
  drain_grace_ms: 1000
  api: {{listen: "127.0.0.1:APIPORT", keys: {{soak: {{env: WSPRISM_SOAK_API_KEY}}}}}}
tenants:
  - id: soak
    limits: {{max_rooms_total: {MIX_ROOMS + PROCS}, max_rooms_per_user: {ROOMS_PER_USER}}}
    policy:
      rate_limit_rps: 1000
      rate_limit_burst: 2000
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*"]
      presence_events: true
      sessions: {{mode: multi, max_sessions_per_user: {SESSIONS_PER_USER}, on_exceed: deny}}
"""


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 600)
def test_mixed_traffic_no_growth_no_errors(spawn_gateway):
    g = spawn_gateway(MIX_YAML)
    per = [SESSIONS // PROCS + (1 if i < SESSIONS % PROCS else 0) for i in range(PROCS)]
    vanish = max(1, SESSIONS // 40)               # 2.5 % vanish (half abort, half go silent)
    stuck = max(1, SESSIONS // 400)               # 0.25 % stop reading in a flooded room
    stuck_w, vanish_w = max(1, stuck // PROCS), max(1, vanish // PROCS)     # per client process
    ps = [subprocess.Popen(worker_cmd("mixed", g.url(), w, sessions=per[w], duration=SECONDS,
                                      rooms=MIX_ROOMS, stuck=stuck_w, vanish=vanish_w, flood_rate=400,
                                      stuck_for=40),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
          for w in range(PROCS)]
    try:
        for p in ps:
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.poll())
        active_start = g.metric("wsprism_ws_sessions_active")
        stats_start = g.stats()
        rss_start, cpu0, t0 = g.rss(), g.cpu(), time.monotonic()
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        rss_samples = []
        results = []
        for p in ps:
            while True:
                line = p.stdout.readline()     # the worker prints only its result line now
                if line or p.poll() is not None:
                    break
            assert line, p.stderr.read()[-3000:]
            results.append(json.loads(line))
            rss_samples.append(g.rss())
        elapsed = time.monotonic() - t0
        cpu = g.cpu() - cpu0
        rss_end = g.rss()
        # The stuck and silent sockets are still open on the client side: the gateway must
        # reclaim them by itself (4005 or idle timeout 4002), within idle + one ping + 1 s.
        left = g.wait_sessions(0, 10 + 5 + 1 + 10)
        parked = sum(r["parked_open"] for r in results)
    finally:
        for p in ps:
            try:
                p.stdin.write("exit\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in ps:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def total(key):
        out = {}
        for r in results:
            for k, v in r[key].items():
                out[k] = out.get(k, 0) + v
        return out

    text = g.metrics()
    writer_timeouts = g.metric("wsprism_writer_timeouts_total", text)
    drops = g.metric("wsprism_egress_drop_total", text)
    sent, received = total("sent"), total("received")
    print(f"\nSOAK mixed: {SESSIONS} sessions, {elapsed:.0f}s; sent {sent}; received {received}; "
          f"sessions opened {sum(r['sessions_opened'] for r in results)}, clean closes "
          f"{sum(r['clean_closes'] for r in results)}, aborts {sum(r['aborts'] for r in results)}, silent "
          f"{sum(r['silent'] for r in results)}, stuck cycles {sum(r['stuck_cycles'] for r in results)} "
          f"closed with {total('stuck_close_codes')}; writer timeouts {writer_timeouts:.0f}, egress drops "
          f"{drops:.0f}; tables at start {stats_start}; active at start {active_start:.0f}, after {left:.0f} with {parked} sockets still open "
          f"client-side; gateway CPU {cpu / elapsed * 100:.0f}%; RSS start {rss_start / 2**20:.1f} MiB, "
          f"end {rss_end / 2**20:.1f} MiB", flush=True)

    problems = [r["first_problem"] for r in results if r["first_problem"]]
    assert total("mismatch") == {}, (total("mismatch"), problems)
    assert total("errors") == {}, (total("errors"), problems)
    assert total("connect_errors") == {}, (total("connect_errors"), problems)
    assert sum(r["stuck_survived"] for r in results) == 0, problems
    assert active_start == SESSIONS, active_start
    assert left == 0, f"{left} sessions still registered ({parked} parked sockets open)"
    if SECONDS >= 120:
        assert writer_timeouts >= 1          # the stuck readers met the slow-consumer rule
    assert g.metric("wsprism_decode_errors_total", text) == 0
    assert g.metric("wsprism_service_errors_total", text) == 0

    # no session, room or per-user entry left behind
    stats_end = g.stats()
    assert stats_end == {"sessions": 0, "rooms": 0, "users": 0}, stats_end
    rooms = [f"r{i}" for i in range(MIX_ROOMS)] + [f"flood{w}" for w in range(PROCS)]

    async def probes():
        dirty = await probe_rooms(g, rooms)
        assert not dirty, dirty[:10]
        # ordinary users (they reconnected under the same name), a vanished one, a stuck
        # one and a flooder
        for user in (f"m0x{per[0] - 1}", f"m{PROCS - 1}x{per[-1] - 1}", f"m0x{1 + stuck_w}g0", "s0x1", "f0"):
            await probe_user(g, user, rooms)
    asyncio.run(probes())
    assert g.wait_sessions(0, 10) == 0
    assert g.stats() == {"sessions": 0, "rooms": 0, "users": 0}

    lines = check_log(g)
    assert len(lines) < 30, lines[-30:]           # nothing is logged per message or per session
    assert g.stop() == 0
