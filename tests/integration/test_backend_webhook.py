"""SPEC section 10: Ext Lane services forwarded to a real HTTP backend (service webhooks)."""
import asyncio
import json
import re
import time

import pytest

from tests.client import (
    PING, PONG,
    connect_authed, error_of, expect_silence, recv_json, request, run, send_json,
)
from tests.integration.backend_app import BackendServer, free_port, sample, scrape


YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "sys:*", "bk:*", "tiny:*", "dead:*", "closer:*", "quiet:*"]
      rate_limit_rps: 10000
      rate_limit_burst: 10000
    services:
      bk: {{webhook: "{svc}", timeout_ms: 400}}
      tiny: {{webhook: "{svc}", max_inflight_per_session: 2}}
      dead: {{webhook: "http://127.0.0.1:{dead}/svc", timeout_ms: 1000}}
      closer: {{webhook: "http://127.0.0.1:{closer}/svc", timeout_ms: 1000}}
      quiet: {{webhook: "{svc}"}}              # default timeout (2 s) and max_inflight (16)
"""


@pytest.fixture(scope="module")
def backend():
    server = BackendServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def g(gateway_factory, backend):
    return gateway_factory(YAML.format(svc=backend.url("/svc"), dead=free_port(), closer=backend.closer_port))


def bk(do=None, **fields) -> dict:
    msg = {"v": 1, "svc": "bk", "type": "call"}
    if do is not None:
        msg["data"] = {"do": do}
    msg.update(fields)
    return msg


def outcomes(g, svc="bk") -> dict:
    return g.call(lambda: dict(g.tenant().forwarders[svc].outcomes))


def test_backend_gets_the_validated_envelope_with_data_verbatim(g, backend):
    original = '{"v":1,  "svc":"bk", "type":"hello","seq":5 ,"data":{"x":[1, 2.50, "\\u00e9"]}}'

    async def main():
        ws, authed = await connect_authed(g.url(sid="tab-1"))
        await ws.send(original)
        reply = await recv_json(ws)
        await ws.close()
        return authed, reply
    authed, reply = run(main())
    assert set(reply) == {"v", "svc", "type", "seq", "data"}
    assert (reply["v"], reply["svc"], reply["type"], reply["seq"]) == (1, "bk", "reply", 5)
    sent = reply["data"]
    assert sent["tenant"] == "acme" and sent["user"] == "dev" and sent["sid"] == "tab-1"
    assert sent["sid"] == authed["data"]["sid"]
    assert re.fullmatch(r"[0-9a-f]{16}-\d+", sent["trace_id"])
    assert sent["msg"] == json.loads(original)
    raw = [b for b in backend.bodies("/svc") if b'"type":"hello"' in b][-1]
    # the envelope is re-encoded from what was validated; `data` travels verbatim
    assert b'"msg":{"v":1,"svc":"bk","type":"hello","seq":5,"data":{"x":[1, 2.50, "\\u00e9"]}}' in raw


def test_duplicate_keys_cannot_smuggle_another_type_to_the_backend(g, backend):
    """With duplicate keys the last one wins for the allowlist, and the backend is told
    exactly that value, whatever its own JSON parser would have picked."""
    sneaky = '{"v":1,"svc":"bk","type":"admin_wipe","type":"hello","seq":6}'

    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.send(sneaky)
        reply = await recv_json(ws)
        await ws.close()
        return reply
    reply = run(main())
    assert reply["data"]["msg"]["type"] == "hello"
    raw = [b for b in backend.bodies("/svc") if b'"seq":6' in b][-1]
    assert b"admin_wipe" not in raw


def test_reply_without_seq_carries_none(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        reply = await request(ws, bk({"answer": {"reply": [1, "two", None]}}))
        assert reply == {"v": 1, "svc": "bk", "type": "reply", "data": [1, "two", None]}
        # an empty 2xx answer: nothing to say, no error
        await send_json(ws, bk({"answer": {}}, seq=3, flags=4))
        assert await recv_json(ws) == {"v": 1, "svc": "sys", "type": "ack", "seq": 3}
        await ws.close()
    run(main())


def test_publish_reaches_the_room_then_reply_then_ack(g):
    async def main():
        a, _ = await connect_authed(g.url("acme", "dev:ann"))
        b, _ = await connect_authed(g.url("acme", "dev:bob"))
        c, _ = await connect_authed(g.url("acme", "dev:cid"))
        for ws in (a, b):
            assert (await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "match:1"}))["type"] == "joined"
        answer = {
            "publish": [
                {"room": "match:1", "svc": "match", "type": "state", "data": {"turn": "bob"}},
                {"room": "empty-room", "svc": "match", "type": "state", "data": 1},
                {"room": "match:1", "svc": "match", "type": "tick"},
            ],
            "reply": {"ok": True},
        }
        await send_json(a, bk({"answer": answer}, seq=7, flags=4))
        state = {"v": 1, "svc": "match", "type": "state", "room": "match:1", "data": {"turn": "bob"}}
        tick = {"v": 1, "svc": "match", "type": "tick", "room": "match:1"}
        assert await recv_json(a) == state
        assert await recv_json(a) == tick
        assert await recv_json(a) == {"v": 1, "svc": "bk", "type": "reply", "seq": 7, "data": {"ok": True}}
        assert await recv_json(a) == {"v": 1, "svc": "sys", "type": "ack", "seq": 7}
        assert await recv_json(b) == state
        assert await recv_json(b) == tick
        await expect_silence(c, 0.2)
        for ws in (a, b, c):
            await ws.close()
    run(main())


def test_backend_error_becomes_sys_error_without_ack(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        msg = await request(ws, bk({"answer": {"error": {"code": "NOT_ALLOWED", "msg": "not your turn"}}},
                                   seq=11, flags=4))
        assert error_of(msg) == "NOT_ALLOWED"
        assert msg["data"]["msg"] == "not your turn" and msg["seq"] == 11
        # a code outside SPEC section 3 is INTERNAL; error wins over reply and publish
        msg = await request(ws, bk({"answer": {"error": {"code": "E_TURN", "msg": "x"}, "reply": 1}}, seq=12))
        assert error_of(msg) == "INTERNAL" and msg["seq"] == 12
        await expect_silence(ws, 0.2)
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())


BAD_ANSWERS = {
    "status_500": {"status": 500},
    "status_404": {"status": 404},
    "status_302": {"status": 302},
    "not_json": {"raw": "<html>oops</html>"},
    "ten_mb_with_length": {"huge": 10 * 1024 * 1024},
    "ten_mb_chunked": {"huge": 10 * 1024 * 1024, "chunked": True},
    "gzip_bomb": {"gzip": 1},
    "unknown_field": {"answer": {"replay": 1}},
    "publish_not_a_list": {"answer": {"publish": {"room": "r"}}},
    "publish_bad_room": {"answer": {"publish": [{"room": "bad room", "svc": "s", "type": "t"}]}},
    "error_without_code": {"answer": {"error": {"msg": "x"}}},
    "json_array": {"answer": [1, 2]},
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answer_is_internal_and_the_session_stays(g, case):
    before = g.call(lambda: g.tenant().stats.service_errors_ext)

    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.send(json.dumps({"v": 1, "svc": "sys", "type": "ping", "seq": 1}))
        assert await recv_json(ws) == PONG
        msg = await request(ws, bk(BAD_ANSWERS[case], seq=21, flags=4))
        assert error_of(msg) == "INTERNAL", msg
        assert msg["seq"] == 21
        assert await request(ws, PING) == PONG       # no ack came before this, and still open
        await ws.close()
    run(main())
    assert g.call(lambda: g.tenant().stats.service_errors_ext) == before + 1


def test_hanging_backend_times_out_and_the_loop_stays_free(g):
    before = outcomes(g)["timeout"]

    async def main():
        a, _ = await connect_authed(g.url("acme", "dev:slowpoke"))
        b, _ = await connect_authed(g.url("acme", "dev:other"))
        t0 = time.monotonic()
        await send_json(a, bk({"sleep": 5}, seq=31, flags=4))
        await asyncio.sleep(0.05)
        for _ in range(3):                             # others are served meanwhile
            t1 = time.monotonic()
            assert await request(b, PING) == PONG
            assert time.monotonic() - t1 < 0.25
        msg = await recv_json(a)
        elapsed = time.monotonic() - t0
        assert error_of(msg) == "TIMEOUT" and msg["seq"] == 31
        assert 0.35 < elapsed < 1.0, elapsed
        assert await request(a, PING) == PONG
        await expect_silence(a, 0.1)
        for ws in (a, b):
            await ws.close()
    run(main())
    assert outcomes(g)["timeout"] == before + 1


def test_queued_messages_share_the_timeout_from_their_arrival(g):
    """A hanging backend costs each message at most its timeout, queue time included."""
    async def main():
        ws, _ = await connect_authed(g.url())
        t0 = time.monotonic()
        for seq in range(1, 4):
            await send_json(ws, bk({"sleep": 5}, seq=seq))
        got = [await recv_json(ws) for _ in range(3)]
        assert [error_of(m) for m in got] == ["TIMEOUT"] * 3
        assert [m["seq"] for m in got] == [1, 2, 3]
        assert time.monotonic() - t0 < 1.0
        await ws.close()
    run(main())


def test_a_kept_alive_connections_timer_never_delays_a_shorter_deadline(g):
    """A connection keeps one deadline timer across requests (backend/http.py): after an
    answer to `quiet` (2 s) on a connection, a `bk` message (400 ms) to the same backend
    on that connection still times out at its own 400 ms."""
    async def main():
        ws, _ = await connect_authed(g.url())
        reply = await request(ws, {"v": 1, "svc": "quiet", "type": "x", "seq": 1, "data": {"do": {"answer": {"reply": 1}}}})
        assert reply["data"] == 1
        t0 = time.monotonic()
        msg = await request(ws, bk({"sleep": 5}, seq=2))
        elapsed = time.monotonic() - t0
        assert error_of(msg) == "TIMEOUT" and msg["seq"] == 2
        assert 0.35 < elapsed < 1.0, elapsed
        await ws.close()
    run(main())


def test_a_kept_alive_connections_timer_never_cuts_a_later_deadline_short(g):
    """The timer still armed for an answered request's deadline is moved on when it fires
    during a later request: that one gets its whole timeout."""
    async def main():
        ws, _ = await connect_authed(g.url())
        assert (await request(ws, bk({"answer": {"reply": 1}}, seq=1)))["data"] == 1
        await asyncio.sleep(0.25)                 # the first request's deadline is 150 ms ahead
        t0 = time.monotonic()
        msg = await request(ws, bk({"sleep": 5}, seq=2))
        elapsed = time.monotonic() - t0
        assert error_of(msg) == "TIMEOUT" and msg["seq"] == 2
        assert 0.35 < elapsed < 1.0, elapsed
        assert (await request(ws, bk({"answer": {"reply": 3}}, seq=3)))["data"] == 3
        await ws.close()
    run(main())


@pytest.mark.parametrize("svc", ["dead", "closer"])
def test_unreachable_or_closing_backend_is_internal(g, svc):
    async def main():
        ws, _ = await connect_authed(g.url())
        t0 = time.monotonic()
        msg = await request(ws, {"v": 1, "svc": svc, "type": "x", "seq": 41, "flags": 4})
        assert error_of(msg) == "INTERNAL" and msg["seq"] == 41
        assert time.monotonic() - t0 < 0.9
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())
    assert outcomes(g, svc)["unreachable"] >= 1


def test_messages_reach_the_backend_in_order(g, backend):
    n = 12

    async def main():
        ws, _ = await connect_authed(g.url("acme", "dev:orderly"))
        for seq in range(n):    # earlier messages take longer: concurrency would reorder them
            await send_json(ws, bk({"sleep": (n - seq) * 0.004, "answer": {"reply": seq}}, seq=seq, svc="quiet"))
        replies = [await recv_json(ws) for _ in range(n)]
        await ws.close()
        return replies
    replies = run(main())
    assert [r["data"] for r in replies] == list(range(n))
    assert [r["seq"] for r in replies] == list(range(n))
    seen = [json.loads(b)["msg"]["seq"] for b in backend.bodies("/svc")
            if json.loads(b)["user"] == "orderly"]
    assert seen == list(range(n))


def test_max_inflight_per_session_is_resource_exhausted(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        other, _ = await connect_authed(g.url("acme", "dev:another"))
        for seq in range(1, 5):
            await send_json(ws, {"v": 1, "svc": "tiny", "type": "t", "seq": seq,
                                 "data": {"do": {"sleep": 0.2, "answer": {"reply": seq}}}})
        first = [await recv_json(ws) for _ in range(2)]
        assert [error_of(m) for m in first] == ["RESOURCE_EXHAUSTED"] * 2
        assert [m["seq"] for m in first] == [3, 4]
        # the limit is per session: another session is not affected
        msg = await request(other, {"v": 1, "svc": "tiny", "type": "t", "seq": 9, "data": {"do": {"answer": {"reply": 9}}}})
        assert msg["data"] == 9
        replies = [await recv_json(ws) for _ in range(2)]
        assert [(m["type"], m["data"]) for m in replies] == [("reply", 1), ("reply", 2)]
        msg = await request(ws, {"v": 1, "svc": "tiny", "type": "t", "seq": 5, "data": {"do": {"answer": {"reply": 5}}}})
        assert msg["data"] == 5
        await ws.close()
        await other.close()
    run(main())
    assert outcomes(g, "tiny")["rejected"] == 2


def test_answer_for_a_gone_session_is_dropped(g):
    before = outcomes(g)["ok"]

    async def main():
        watcher, _ = await connect_authed(g.url("acme", "dev:watcher"))
        await request(watcher, {"v": 1, "svc": "room", "type": "join", "room": "gone"})
        ws, _ = await connect_authed(g.url("acme", "dev:leaver"))
        await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "gone"})
        answer = {"publish": [{"room": "gone", "svc": "x", "type": "late"}], "reply": 1}
        await send_json(ws, bk({"sleep": 0.15, "answer": answer}))
        await send_json(ws, bk({"answer": answer}))        # queued: dropped without a request
        await asyncio.sleep(0.03)
        await ws.close()
        await asyncio.sleep(0.3)
        await expect_silence(watcher, 0.1)                 # no publish on behalf of a gone session
        assert await request(watcher, PING) == PONG
        await watcher.close()
    run(main())
    assert outcomes(g)["ok"] == before + 1
    assert g.call(lambda: len(g.tenant().forwarders["bk"].queues)) == 0


def test_metrics_per_tenant_service_and_outcome(g):
    before = scrape(g)
    run(_one_call(g, bk({"status": 503}, seq=1)))
    after = scrape(g)
    req = "wsprism_webhook_requests_total"
    assert sample(after, req, tenant="acme", service="bk", outcome="bad_status") == \
        sample(before, req, tenant="acme", service="bk", outcome="bad_status") + 1
    assert sample(after, req, tenant="acme", service="quiet", outcome="too_large") == 0
    count = "wsprism_webhook_duration_seconds_count"
    assert sample(after, count, tenant="acme", service="bk") == sample(before, count, tenant="acme", service="bk") + 1
    err = "wsprism_service_errors_total"
    assert sample(after, err, tenant="acme", lane="ext") == sample(before, err, tenant="acme", lane="ext") + 1


async def _one_call(g, msg):
    ws, _ = await connect_authed(g.url())
    reply = await request(ws, msg)
    await ws.close()
    return reply


def test_reload_keeps_the_forwarder_and_applies_new_settings(g, backend):
    from wsprism.config import parse_config

    old = g.call(lambda: g.tenant().forwarders["bk"])
    new_yaml = YAML.format(svc=backend.url("/svc"), dead=free_port(), closer=backend.closer_port)
    new_yaml = new_yaml.replace("timeout_ms: 400", "timeout_ms: 300")
    g.call(lambda: g.gw.reload(parse_config(new_yaml)))
    fwd = g.call(lambda: g.tenant().forwarders["bk"])
    assert fwd is old and fwd.timeout == 0.3
    assert run(_one_call(g, bk({"answer": {"reply": "still here"}})))["data"] == "still here"
    g.call(lambda: g.gw.reload(parse_config(new_yaml.replace("timeout_ms: 300", "timeout_ms: 400"))))
