"""Fixes found by the soak and operations work: reload never half-applies, client
protocol errors never reach the ERROR log, reload moves live sessions' high-water mark."""
import logging
import time

import pytest

from tests.client import close_code_of, connect_authed, raw_upgrade, read_frames, request, run
from wsprism.auth import AuthSetupError
from wsprism.config import parse_config

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  outbound_high_water_bytes: 65536
tenants:
  - id: a
    policy: {ext_allowlist: ["room:join", "sys:*"]}
  - id: b
"""

BROKEN_RELOAD = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  outbound_high_water_bytes: 131072
tenants:
  - id: a
    policy: {ext_allowlist: ["room:join", "chat:send", "sys:*"]}
  - id: b
    auth: {mode: jwt, secret_env: WSPRISM_TEST_NEVER_SET}
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def test_reload_failing_on_a_later_tenant_changes_nothing(g):
    with pytest.raises(AuthSetupError):
        g.call(lambda: g.gw.reload(parse_config(BROKEN_RELOAD)))
    assert g.call(lambda: g.tenant("a").ext_allow.allows("chat", "send")) is False
    assert g.call(lambda: g.tenant("b").authenticator.mode) == "dev"
    assert g.call(lambda: g.gw.config.gateway.outbound_high_water_bytes) == 65536


def test_reload_moves_the_mark_of_live_sessions(g):
    async def main():
        ws, _ = await connect_authed(g.url("a", "dev:hw"))
        s = g.call(lambda: g.tenant("a").sessions.sessions_of("hw")[0])
        assert g.call(lambda: s.transport.underlying_transport.get_write_buffer_limits()[1]) == 65536
        g.call(lambda: g.gw.reload(parse_config(YAML.replace("65536", "262144"))))
        assert g.call(lambda: s.transport.underlying_transport.get_write_buffer_limits()[1]) == 262144
        await ws.close()
    run(main())


def test_client_protocol_errors_are_not_logged_as_errors(g, caplog):
    caplog.set_level(logging.DEBUG)
    s = raw_upgrade(g.port, "tenant=a&ticket=dev:rude")
    s.sendall(b"\x81\x05hello")                  # unmasked client frame: a protocol error
    frames = read_frames(s, 1.0)
    s.close()
    assert close_code_of(frames) == 1002
    time.sleep(0.1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("client protocol error" in r.getMessage() for r in caplog.records)

    async def still_fine():
        ws, _ = await connect_authed(g.url("a", "dev:polite"))
        assert (await request(ws, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        await ws.close()
    run(still_fine())
