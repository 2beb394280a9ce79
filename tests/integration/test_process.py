"""The gateway as operators run it: `wsprism start/check/version`, SIGTERM drain, SIGHUP reload."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.client import UPGRADE_HEADERS, connect_authed, error_of, expect_close, http_get, request, run

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, cfg_path, port, args=()):
        self.port = port
        self.cfg_path = cfg_path
        self.log_path = str(cfg_path) + ".log"
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen([PY, "-m", "wsprism", "start", "--config", str(cfg_path), *args],
                                  stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 10
        while "Gateway active at" not in self.text():
            assert self.p.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.05)

    def text(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def url(self, tenant="acme", ticket="dev"):
        return f"ws://127.0.0.1:{self.port}/v1/ws?tenant={tenant}&ticket={ticket}"

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(5)
        self.log.close()


@pytest.fixture
def spawn(tmp_path):
    procs = []

    def start(yaml_body: str) -> Proc:
        port = free_port()
        cfg = tmp_path / "wsprism.yaml"
        cfg.write_text(yaml_body.replace("PORT", str(port)))
        proc = Proc(cfg, port)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def cli(*args, cwd=ROOT):
    return subprocess.run([PY, "-m", "wsprism", *args], capture_output=True, text=True, cwd=cwd, timeout=30)


def test_version_says_which_path():
    r = cli("version")
    assert r.returncode == 0
    assert "wsprism 0.1.0" in r.stdout and "compiled fast path: " in r.stdout


def test_check_ok_strict_and_bad(tmp_path):
    assert cli("check", "--config", "wsprism.yaml").returncode == 0
    r = cli("check", "--config", "tests/data/reference-wsprism.yaml")
    assert r.returncode == 0, r.stderr
    r = cli("check", "--config", "wsprism.yaml", "--strict")
    assert r.returncode == 2 and "dev" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntenants:\n  - id: a\n  - id: b\n    limitz: {}\n")
    r = cli("check", "--config", str(bad))
    assert r.returncode == 2
    assert "tenants[1].limitz" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_start_bad_config_and_usage_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\ntenants: [{id: a}]\n")
    r = cli("start", "--config", str(bad))
    assert r.returncode == 2 and "version" in r.stderr and "Traceback" not in r.stderr
    r = cli("start", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert cli("frobnicate").returncode == 2
    jwt_missing_env = tmp_path / "jwt.yaml"
    jwt_missing_env.write_text(
        "version: 1\ntenants:\n  - id: a\n    auth: {mode: jwt, secret_env: WSPRISM_TEST_UNSET_SECRET}\n")
    r = cli("start", "--config", str(jwt_missing_env))
    assert r.returncode == 2 and "WSPRISM_TEST_UNSET_SECRET" in r.stderr


def test_python_dash_m_and_startup_lines(spawn):
    p = spawn('version: 1\ngateway: {listen: "127.0.0.1:PORT"}\ntenants: [{id: acme}, {id: beta}]\n')
    text = p.text()
    assert "INFO" in text and f"wsPrism Gateway active at 127.0.0.1:{p.port}" in text
    assert 'Loaded configuration for tenant: "acme"' in text
    assert 'Loaded configuration for tenant: "beta"' in text
    assert "WARNING" in text and "dev" in text


DRAIN = """
version: 1
gateway: {listen: "127.0.0.1:PORT", drain_grace_ms: 2000}
tenants: [{id: acme}]
"""


def test_sigterm_drains_spread_then_exits_0(spawn):
    p = spawn(DRAIN)

    async def main():
        conns = [(await connect_authed(p.url(ticket=f"dev:u{i}")))[0] for i in range(12)]
        t0 = time.monotonic()
        p.p.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        status, _, body = http_get(p.port, "/readyz")
        assert (status, body) == (503, b"draining\n")
        assert http_get(p.port, "/v1/ws?tenant=acme&ticket=dev", UPGRADE_HEADERS)[0] == 503
        async def closed_at(ws):
            code = await expect_close(ws, timeout=5)
            return code, time.monotonic() - t0
        results = await asyncio.gather(*(closed_at(ws) for ws in conns))
        codes = {c for c, _ in results}
        times = sorted(t for _, t in results)
        assert codes == {1001}
        assert times[-1] - times[0] >= 0.3       # spread, not all in one instant
        assert times[-1] <= 1.6                  # within the first half of the grace (+ slack)
    run(main())
    assert p.p.wait(5) == 0


def test_sigint_with_no_sessions_exits_quickly(spawn):
    p = spawn(DRAIN)
    t0 = time.monotonic()
    p.p.send_signal(signal.SIGINT)
    assert p.p.wait(5) == 0
    assert time.monotonic() - t0 < 1.5


RELOAD_A = """
version: 1
gateway: {listen: "127.0.0.1:PORT"}
tenants:
  - id: acme
    policy: {ext_allowlist: ["sys:*"]}
  - id: old
"""

RELOAD_B = """
version: 1
gateway: {listen: "127.0.0.1:PORT"}
tenants:
  - id: acme
    policy: {ext_allowlist: ["sys:*", "room:join"]}
  - id: beta
"""


def test_sighup_reload_applies_rejects_and_warns(spawn):
    p = spawn(RELOAD_A)

    async def main():
        ws, _ = await connect_authed(p.url())
        old, _ = await connect_authed(p.url("old"))
        join = {"v": 1, "svc": "room", "type": "join", "room": "r"}
        assert error_of(await request(ws, join)) == "NOT_ALLOWED"

        # a broken file is rejected, naming the key; the running config stays
        p.cfg_path.write_text(RELOAD_B.replace("PORT", str(p.port)).replace("ext_allowlist", "ext_alowlist"))
        p.p.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert "reload rejected" in p.text() and "ext_alowlist" in p.text()
        assert error_of(await request(ws, join)) == "NOT_ALLOWED"

        # a valid one applies to existing sessions at their next message
        p.cfg_path.write_text(RELOAD_B.replace("PORT", str(p.port)))
        p.p.send_signal(signal.SIGHUP)
        assert await expect_close(old, timeout=3) == 1001     # tenant removed
        assert (await request(ws, join))["type"] == "joined"
        beta, _ = await connect_authed(p.url("beta"))
        await beta.close()

        # gateway.listen needs a restart: logged, the old port keeps serving
        p.cfg_path.write_text(RELOAD_B.replace("PORT", str(free_port())))
        p.p.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert "gateway.listen changed: needs a restart" in p.text()
        assert (await request(ws, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        await ws.close()
    run(main())
    assert p.p.poll() is None

