"""SPEC 8 logs as operators get them: `wsprism start` with JSON lines on stderr.

One gateway process uses every kind of secret the gateway handles (static tickets, JWTs
and their HS256 secret, auth-webhook tickets, server-API keys from env and file, a 4 KB
ticket); every line it writes is parsed and grepped.
"""
import asyncio
import json
import os
import re
import signal
import time
import urllib.parse

import aiohttp
import jwt
import pytest

from tests.client import connect, connect_authed, error_of, expect_close, http_get, request, run, send_json
from tests.integration.backend_app import BackendServer
from tests.integration.test_process import Proc, free_port

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = {"ts", "level", "logger", "msg", "tenant", "user", "sid", "trace_id", "room", "svc", "code", "exc"}

JWT_SECRET = "jwt-secret-for-the-log-test-5f0c9e2a7b"
ACME_KEY = "acme-api-key-7a1b2c3d4e5f60718293"
FILE_KEY = "jwtt-api-key-0f1e2d3c4b5a69788796"
WRONG_KEY = "wrong-api-key-aa11bb22cc33dd44ee55"
STATIC_GOOD = "tkA-static-ticket-9b8c7d6e5f"
STATIC_BAD = "tkX-static-ticket-unknown-1a2b3c"
HOOK_TICKETS = ["deny:hook-ticket-3c4d5e6f7a", "500:hook-ticket-8b9c0d1e2f", "nonjson:hook-ticket-4a5b6c7d8e"]
ENV = {"WSPRISM_LOGTEST_JWT": JWT_SECRET, "WSPRISM_LOGTEST_ACME_KEY": ACME_KEY}

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:PORT"
  log: {format: text, level: warning}
  api:
    listen: "127.0.0.1:APIPORT"
    keys:
      acme: {env: WSPRISM_LOGTEST_ACME_KEY}
      jwtt: {file: "KEYFILE"}
tenants:
  - id: acme
    auth: {mode: static, tickets: {STATIC_GOOD: alice}}
    policy: {ext_allowlist: ["room:*", "chat:send", "sys:*", "echo:*"]}
    services:
      echo: {webhook: "BACKEND/svc", timeout_ms: 300}
  - id: jwtt
    auth: {mode: jwt, secret_env: WSPRISM_LOGTEST_JWT}
    policy: {ext_allowlist: ["room:*", "sys:*"]}
  - id: hook
    auth: {mode: webhook, url: "BACKEND/auth", timeout_ms: 500}
  - id: devt
    policy: {ext_allowlist: ["room:*", "sys:*"]}
"""


def token(sub: str, ttl: float = 600, secret: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl)}, secret, algorithm="HS256")


@pytest.fixture
def backend():
    b = BackendServer()
    yield b
    b.stop()


@pytest.fixture
def spawn(tmp_path, backend):
    """Starts gateway processes (see `start`); all are killed at the end of the test."""
    procs = []

    def spawn_one(*args, yaml=YAML) -> Proc:
        proc = start(tmp_path, backend, *args, yaml=yaml)
        procs.append(proc)
        return proc
    yield spawn_one
    for proc in procs:
        proc.stop()


def start(tmp_path, backend, *args, yaml=YAML) -> Proc:
    port, api_port = free_port(), free_port()
    keyfile = tmp_path / "jwtt.key"
    keyfile.write_text(FILE_KEY + "\n")
    cfg = tmp_path / "wsprism.yaml"
    cfg.write_text(yaml.replace("APIPORT", str(api_port)).replace("PORT", str(port))
                   .replace("KEYFILE", str(keyfile)).replace("BACKEND", f"http://127.0.0.1:{backend.port}")
                   .replace("STATIC_GOOD", STATIC_GOOD))
    os.environ.update(ENV)
    try:
        proc = Proc(cfg, port, args)
    finally:
        for k in ENV:
            del os.environ[k]
    proc.api_port = api_port
    return proc


def lines_of(p: Proc) -> list[dict]:
    out = []
    for line in p.text().splitlines():
        obj = json.loads(line)                    # every line is one JSON object
        assert set(obj) <= FIELDS, obj
        assert {"ts", "level", "logger", "msg"} <= set(obj), obj
        assert RFC3339_UTC.match(obj["ts"]), obj
        assert obj["level"] in ("debug", "info", "warning", "error"), obj
        assert all(isinstance(v, str) for v in obj.values()), obj
        out.append(obj)
    return out


async def api(p: Proc, method: str, path: str, key: str | None, body=None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{p.api_port}{path}", json=body, headers=headers) as r:
            await r.read()
            return r.status


def status_of(p: Proc, tenant: str, ticket: str) -> int:
    from tests.client import UPGRADE_HEADERS
    q = urllib.parse.urlencode({"tenant": tenant, "ticket": ticket})
    return http_get(p.port, f"/v1/ws?{q}", UPGRADE_HEADERS)[0]


def test_json_lines_never_hold_a_secret(spawn):
    # the command line wins over gateway.log (text/warning in the file)
    p = spawn("--log-format", "json", "--log-level", "debug")
    long_user = 'a"\\\n' * 400                   # a JWT `sub` with quotes, backslashes, newlines
    jwt_long = token(long_user)                # and a ticket of about 4 KB
    assert 3500 < len(jwt_long) <= 4096
    jwt_good, jwt_refresh, jwt_expired = token("jay"), token("jay", 900), token("jay", -60)
    jwt_forged = token("jay", secret="not-the-secret-0123456789abcdef01")
    assert status_of(p, "acme", STATIC_BAD) == 401
    assert status_of(p, "jwtt", jwt_expired) == 401
    assert status_of(p, "jwtt", jwt_forged) == 401
    assert status_of(p, "acme", "x" * 4096) == 401      # a 4 KB ticket
    assert http_get(p.port, f"/nowhere?ticket={STATIC_GOOD}")[0] == 404

    async def main():
        a, _ = await connect_authed(p.url("acme", STATIC_GOOD))
        j, _ = await connect_authed(p.url("jwtt", jwt_good))
        assert (await request(j, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": jwt_refresh}}))[
            "type"] == "refreshed"
        assert error_of(await request(j, {"v": 1, "svc": "sys", "type": "refresh",
                                          "data": {"ticket": jwt_forged}})) == "AUTH_FAILED"
        for t in HOOK_TICKETS:
            ws = await connect(p.url("hook", urllib.parse.quote(t)))
            assert error_of(json.loads(await ws.recv())) == "AUTH_FAILED"
            assert await expect_close(ws) == 4007
        d, authed = await connect_authed(p.url("jwtt", jwt_long))
        assert authed["data"]["user"] == long_user
        # a service webhook that times out: one WARNING line, rate-limited
        for _ in range(3):
            msg = await request(a, {"v": 1, "svc": "echo", "type": "x", "data": {"do": {"sleep": 1}}})
            assert error_of(msg) == "TIMEOUT"
        # traffic: no line per message
        for i in range(50):
            await send_json(a, {"v": 1, "svc": "sys", "type": "ping"})
        assert await api(p, "GET", "/v1/stats?tenant=acme", ACME_KEY) == 200
        assert await api(p, "GET", "/v1/stats?tenant=jwtt", FILE_KEY) == 200
        assert await api(p, "GET", "/v1/stats?tenant=acme", WRONG_KEY) == 401
        assert await api(p, "GET", "/v1/stats?tenant=acme", FILE_KEY) == 403
        assert await api(p, "POST", "/v1/disconnect", ACME_KEY, {"tenant": "acme", "user": "alice"}) == 200
        assert await expect_close(a) == 4006
        for ws in (j, d):
            await ws.close()
        await asyncio.sleep(0.3)
    run(main())
    # a reload rejected on a bad value next to a secret
    good = p.cfg_path.read_text()
    p.cfg_path.write_text(good.replace("secret_env: WSPRISM_LOGTEST_JWT", f"secret: {JWT_SECRET}, secrett: 1"))
    p.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reload rejected" not in p.text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.stop()

    text = p.text()
    for secret in [JWT_SECRET, ACME_KEY, FILE_KEY, WRONG_KEY, STATIC_GOOD, STATIC_BAD, jwt_good, jwt_refresh,
                   jwt_expired, jwt_forged, jwt_long, "x" * 64, *HOOK_TICKETS]:
        assert secret not in text, secret
        assert secret.rsplit(".", 1)[-1][-20:] not in text      # not even a JWT's signature
    lines = lines_of(p)
    msgs = [ln["msg"] for ln in lines]
    # SPEC 8's startup lines keep their text
    assert f"wsPrism Gateway active at 127.0.0.1:{p.port}" in msgs
    for tid in ("acme", "jwtt", "hook", "devt"):
        (line,) = [ln for ln in lines if ln["msg"] == f'Loaded configuration for tenant: "{tid}"']
        assert line["level"] == "info" and line["tenant"] == tid and line["logger"] == "wsprism"
    # lines about one session say which
    opened = [ln for ln in lines if ln["msg"] == "session opened"]
    assert {ln["tenant"] for ln in opened} == {"acme", "jwtt"}
    assert all(ln["level"] == "debug" and ln["sid"] and ln["trace_id"] and ln["user"] for ln in opened)
    assert long_user in [ln["user"] for ln in opened]
    refused = [ln for ln in lines if "auth webhook refused" in ln["msg"]]
    assert len(refused) == 3 and all(ln["code"] == "AUTH_FAILED" and ln["tenant"] == "hook" for ln in refused)
    (timeout,) = [ln for ln in lines if ln["level"] == "warning" and ln.get("svc") == "echo"]
    assert timeout["tenant"] == "acme" and timeout["code"] == "TIMEOUT"
    (rejected,) = [ln for ln in lines if ln["msg"].startswith("reload rejected")]
    assert rejected["level"] == "error"
    # nothing at INFO beyond start-up: no line per session or message
    info = [ln["msg"] for ln in lines if ln["level"] == "info"]
    assert len(info) == 7, info                 # version, API, gateway, 4 tenants
    assert not [ln for ln in lines if ln["level"] == "debug" and "ping" in ln["msg"]]


def test_gateway_log_from_the_file_and_sighup(spawn):
    p = spawn(yaml=YAML.replace("{format: text, level: warning}", "{format: json, level: info}"))
    first = lines_of(p)
    assert [ln["msg"] for ln in first if ln["msg"].startswith("wsPrism Gateway active")]
    p.cfg_path.write_text(p.cfg_path.read_text().replace("{format: json, level: info}",
                                                         "{format: text, level: debug}"))
    p.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in p.text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # "configuration reloaded" is the last JSON line; what follows is text, DEBUG included

    async def main():
        ws, _ = await connect_authed(p.url("devt", "dev:tess"))
        await ws.close()
        await asyncio.sleep(0.2)
    run(main())
    lines = p.text().splitlines()
    at = next(i for i, ln in enumerate(lines) if "configuration reloaded" in ln)
    assert json.loads(lines[at])["level"] == "info"
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG wsprism\.gateway > session opened$",
                    lines[at + 1]), lines[at + 1:]
    p.stop()
