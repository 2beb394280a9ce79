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


def test_accepted_sockets_get_picows_options_and_the_loop_transport(g, caplog):
    """picows' connection_made sets TCP_NODELAY and TCP_QUICKACK; the compiled reader
    hands it a shim for that while picows' INFO line is off (reader_py.Protocol
    .connection_made): the options are still set, the WSTransport holds the loop's own
    transport, and with INFO on picows' own path runs and logs its line."""
    import socket

    def options(user):
        s = g.call(lambda: g.tenant("a").sessions.sessions_of(user)[0])
        tr = s.transport.underlying_transport
        sock = g.call(lambda: tr.get_extra_info("socket"))
        return (type(tr).__name__, g.call(lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
                g.call(lambda: tr.get_extra_info("peername")) is not None)

    async def main(user):
        ws, _ = await connect_authed(g.url("a", f"dev:{user}"))
        got = options(user)
        assert (await request(ws, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        await ws.close()
        return got

    quiet = run(main("opts-quiet"))
    assert quiet[1:] == (1, True)
    assert quiet[0] != "_SockoptShim"
    caplog.set_level(logging.INFO, logger="wsprism.picows")
    assert run(main("opts-loud")) == quiet
    assert any(r.getMessage().startswith("New connection accepted") for r in caplog.records)


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


BULK = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  outbound_high_water_bytes: 65536
  outbound_max_bytes: 67108864      # let it hold megabytes: this test is about the close
  writer_send_timeout_ms: 60000
tenants:
  - id: bulk
    limits: {max_frame_bytes: 65536}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
"""


def test_peer_that_closes_then_stops_reading_is_reaped(gateway_factory):
    """A client sends CLOSE while the gateway holds megabytes for it and never reads
    again: the socket is aborted about 1 s later instead of waiting forever."""
    from tests.client import mask_frame

    g = gateway_factory(BULK)
    stuck = raw_upgrade(g.port, "tenant=bulk&ticket=dev:closer", rcvbuf=4096)
    stuck.sendall(mask_frame(1, b'{"v":1,"svc":"room","type":"join","room":"big"}'))
    time.sleep(0.2)

    async def flood():
        sender, _ = await connect_authed(g.url("bulk", "dev:flooder"), max_queue=None)
        assert (await request(sender, {"v": 1, "svc": "room", "type": "join", "room": "big"}))["type"] == "joined"
        blob = "x" * 60000
        for _ in range(150):                    # 9 MB for the stuck member
            await sender.send('{"v":1,"svc":"chat","type":"send","room":"big","data":{"msg":"%s"}}' % blob)
        await asyncio.sleep(0.5)
        return sender
    import asyncio
    loop = asyncio.new_event_loop()
    sender = loop.run_until_complete(flood())
    before = g.call(lambda: g.tenant("bulk").sessions.count)
    stuck.sendall(mask_frame(8, (1000).to_bytes(2, "big")))   # CLOSE, then never read again
    deadline = time.monotonic() + 4
    while g.call(lambda: g.tenant("bulk").sessions.count) >= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert g.call(lambda: g.tenant("bulk").sessions.count) == before - 1
    loop.run_until_complete(sender.close())
    loop.close()
    stuck.close()
