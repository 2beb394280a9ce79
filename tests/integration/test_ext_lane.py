"""SPEC section 3: the Ext Lane's order of checks and its error answers."""
import asyncio

import pytest

from tests.client import PING, PONG, connect_authed, error_of, expect_close, expect_silence, recv_json, request, run, send_json

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    limits: {max_frame_bytes: 512}
    policy:
      ext_allowlist: ["room:join", "chat:send", "match:*", "sys:*"]
      rate_limit_rps: 1000
      rate_limit_burst: 1000
  - id: slow
    policy:
      ext_allowlist: ["sys:*"]
      rate_limit_rps: 1
      rate_limit_burst: 3
  - id: shared
    policy:
      ext_allowlist: ["sys:*"]
      rate_limit_scope: tenant
      rate_limit_rps: 1
      rate_limit_burst: 4
  - id: both
    policy:
      ext_allowlist: ["sys:*"]
      rate_limit_scope: both
      rate_limit_rps: 1
      rate_limit_burst: 3
  - id: empty
    policy:
      ext_allowlist: []
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def policy_count(g, tenant, key):
    return g.call(lambda: g.tenant(tenant).stats.policy[key])


def test_not_allowed_keeps_session_and_echoes_seq(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        msg = await request(ws, {"v": 1, "svc": "room", "type": "leave", "seq": 77})
        assert error_of(msg) == "NOT_ALLOWED"
        assert msg["seq"] == 77
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())


def test_empty_allowlist_denies_all_but_protocol_control(g):
    async def main():
        ws, _ = await connect_authed(g.url("empty"))
        msg = await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "r"})
        assert error_of(msg) == "NOT_ALLOWED"
        assert await request(ws, PING) == PONG
        msg = await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": "dev"}})
        assert msg["type"] == "refreshed"
        await ws.close()
    run(main())


def test_allowed_but_unknown_service(g):
    before = policy_count(g, "acme", ("ext", "deny", "unknown_service"))

    async def main():
        ws, _ = await connect_authed(g.url())
        msg = await request(ws, {"v": 1, "svc": "match", "type": "find", "seq": 3})
        assert error_of(msg) == "NOT_ALLOWED"
        assert msg["data"]["msg"] == "unknown service"
        assert msg["seq"] == 3
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())
    assert policy_count(g, "acme", ("ext", "deny", "unknown_service")) == before + 1


def test_ack_requested_with_seq(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        assert await request(ws, {"v": 1, "svc": "sys", "type": "ping", "flags": 4, "seq": 9}) == PONG
        assert await recv_json(ws) == {"v": 1, "svc": "sys", "type": "ack", "seq": 9}
        # ACK_REQUESTED without seq: no ack; unknown flag bits ignored
        assert await request(ws, {"v": 1, "svc": "sys", "type": "ping", "flags": 4 | 0x100}) == PONG
        await expect_silence(ws)
        # a service error sends no ack
        msg = await request(ws, {"v": 1, "svc": "chat", "type": "send", "room": "nope", "flags": 4, "seq": 10,
                                 "data": {"msg": "x"}})
        assert error_of(msg) == "NOT_ALLOWED" and msg["seq"] == 10
        await expect_silence(ws)
        await ws.close()
    run(main())


def test_oversize_is_payload_too_large_then_1009_without_seq(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        big = '{"v":1,"svc":"sys","type":"ping","seq":1,"data":"' + "x" * 600 + '"}'
        await ws.send(big)
        msg = await recv_json(ws)
        assert error_of(msg) == "PAYLOAD_TOO_LARGE"
        assert "seq" not in msg
        assert await expect_close(ws) == 1009
    run(main())


def test_exactly_max_frame_bytes_is_accepted(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        head = '{"v":1,"svc":"sys","type":"ping","data":"'
        body = head + "x" * (512 - len(head) - 2) + '"}'
        assert len(body.encode()) == 512
        await ws.send(body)
        assert await recv_json(ws) == PONG
        await ws.close()
    run(main())


@pytest.mark.parametrize("frame", [
    "{bad json",
    "[]",
    '"just a string"',
    '{"svc":"sys","type":"ping"}',
    '{"v":1,"type":"ping"}',
    '{"v":1,"svc":"sys"}',
    '{"v":1,"svc":"","type":"ping"}',
    '{"v":"1","svc":"sys","type":"ping"}',
    '{"v":1.0,"svc":"sys","type":"ping"}',
    '{"v":true,"svc":"sys","type":"ping"}',
    '{"v":1,"svc":"sys","type":"ping","extra":1}',
    '{"v":1,"svc":"sys","type":"ping","seq":-1}',
    '{"v":1,"svc":"sys","type":"ping","seq":18446744073709551616}',
    '{"v":1,"svc":"sys","type":"ping","seq":"1"}',
    '{"v":1,"svc":"sys","type":"ping","flags":4294967296}',
    '{"v":1,"svc":"sys","type":"ping","room":5}',
    '{"v":1,"svc":"sys","type":"ping","data":NaN}',
])
def test_bad_envelope_is_bad_request_then_1008(g, frame):
    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.send(frame)
        msg = await recv_json(ws)
        assert error_of(msg) == "BAD_REQUEST"
        assert "seq" not in msg
        assert await expect_close(ws) == 1008
    run(main())


def test_decode_errors_are_counted(g):
    before = g.call(lambda: g.tenant().stats.decode_errors)

    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.send("nope")
        await expect_close(ws)
    run(main())
    assert g.call(lambda: g.tenant().stats.decode_errors) == before + 1


@pytest.mark.parametrize("v", [0, 2, -1, 99999999999999999999])
def test_other_version_is_unsupported_then_1008_with_seq(g, v):
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, {"v": v, "svc": "sys", "type": "ping", "seq": 5})
        msg = await recv_json(ws)
        assert error_of(msg) == "UNSUPPORTED_VERSION"
        assert msg["seq"] == 5
        assert await expect_close(ws) == 1008
    run(main())


def test_rate_limit_connection_scope_notice_once_per_second(g):
    before = policy_count(g, "slow", ("ext", "drop", "rate_limited"))

    async def main():
        ws, _ = await connect_authed(g.url("slow", "dev:r1"))
        for _ in range(8):
            await send_json(ws, PING)
        got = []
        try:
            while True:
                got.append(await recv_json(ws, timeout=0.4))
        except asyncio.TimeoutError:
            pass
        pongs = [m for m in got if m == PONG]
        errors = [m for m in got if m.get("type") == "error"]
        assert len(pongs) == 3                      # the burst
        assert len(errors) == 1                     # one notice, not five
        assert error_of(errors[0]) == "RATE_LIMITED" and "seq" not in errors[0]
        # another connection has its own bucket
        other, _ = await connect_authed(g.url("slow", "dev:r2"))
        assert await request(other, PING) == PONG
        await other.close()
        # after a second the bucket has a token again and the session is alive
        await asyncio.sleep(1.05)
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())
    assert policy_count(g, "slow", ("ext", "drop", "rate_limited")) == before + 5


def test_rate_limit_tenant_scope_is_shared(g):
    async def main():
        a, _ = await connect_authed(g.url("shared", "dev:a"))
        b, _ = await connect_authed(g.url("shared", "dev:b"))
        for _ in range(4):
            assert await request(a, PING) == PONG
        msg = await request(b, PING)
        assert error_of(msg) == "RATE_LIMITED"
        await a.close()
        await b.close()
    run(main())


def test_rate_limit_both_scopes(g):
    async def main():
        a, _ = await connect_authed(g.url("both", "dev:a"))
        b, _ = await connect_authed(g.url("both", "dev:b"))
        for _ in range(3):
            assert await request(a, PING) == PONG      # a's own burst (3)
        assert error_of(await request(a, PING)) == "RATE_LIMITED"
        # the tenant bucket (burst 3) is empty too: b is limited though its own bucket is full
        assert error_of(await request(b, PING)) == "RATE_LIMITED"
        await a.close()
        await b.close()
    run(main())


def test_one_clients_bad_input_does_not_touch_another(g):
    async def main():
        good, _ = await connect_authed(g.url(ticket="dev:good"))
        bad, _ = await connect_authed(g.url(ticket="dev:bad"))
        await bad.send("{{{{")
        assert await expect_close(bad) == 1008
        assert await request(good, PING) == PONG
        await good.close()
    run(main())


@pytest.mark.parametrize("frame,seq", [
    ('{"v":2,"svc":"sys","type":"ping","seq":8,"newfield":true}', 8),   # v2 fields v1 does not know
    ('{"v":2}', None),
    ('{"v":3,"svc":"","seq":"x"}', None),
])
def test_other_version_wins_over_v1_validation(g, frame, seq):
    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.send(frame)
        msg = await recv_json(ws)
        assert error_of(msg) == "UNSUPPORTED_VERSION"
        assert msg.get("seq") == seq
        assert await expect_close(ws) == 1008
    run(main())
