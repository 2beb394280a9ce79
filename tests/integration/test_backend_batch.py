"""Service webhooks in batches (`batch_max_messages` > 1, docs/backend.md "Batches"):
a session's queued messages go in one POST; order, deadlines, the in-flight cap and the
strict answer checks hold per message; a batch answer with the wrong number of entries
fails every message of it and publishes nothing."""
import asyncio
import json
import time

import pytest

from tests.client import (
    PING, PONG,
    connect_authed, error_of, expect_silence, recv_json, request, run, send_json,
)
from tests.integration.backend_app import BackendServer

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "sys:*", "bt:*", "bq:*"]
      rate_limit_rps: 10000
      rate_limit_burst: 10000
    services:
      bt: {{webhook: "{url}", timeout_ms: 400, max_inflight_per_session: 16, batch_max_messages: 4}}
      bq: {{webhook: "{url}", timeout_ms: 2000, max_inflight_per_session: 3, batch_max_messages: 8}}
"""


@pytest.fixture(scope="module")
def backend():
    server = BackendServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def g(gateway_factory, backend):
    return gateway_factory(YAML.format(url=backend.url("/batch")))


def bt(seq, do=None, svc="bt", **fields):
    m = {"v": 1, "svc": svc, "type": "t", "seq": seq}
    if do is not None:
        m["data"] = {"do": do}
    m.update(fields)
    return m


def outcomes(g, svc="bt") -> dict:
    return g.call(lambda: dict(g.tenant().forwarders[svc].outcomes))


def batches_since(backend, first: int) -> list[list[dict]]:
    return [json.loads(b)["batch"] for b in backend.bodies("/batch")[first:]]


def test_queued_messages_go_together_in_order_with_replies_and_acks(g, backend):
    first = len(backend.bodies("/batch"))

    async def main():
        ws, authed = await connect_authed(g.url("acme", "dev:batcher"))
        # the first is held at the backend, the next ones queue up behind it
        await send_json(ws, bt(1, {"sleep": 0.15, "answer": {"reply": 1}}, flags=4))
        await asyncio.sleep(0.05)
        for seq in range(2, 8):
            await send_json(ws, bt(seq, {"answer": {"reply": seq}}, flags=4))
        got = [await recv_json(ws) for _ in range(14)]
        assert [(m["type"], m.get("seq")) for m in got] == [
            t for seq in range(1, 8) for t in (("reply", seq), ("ack", seq))]
        assert [m["data"] for m in got if m["type"] == "reply"] == list(range(1, 8))
        await ws.close()
        return authed
    authed = run(main())
    sent = batches_since(backend, first)
    assert [len(b) for b in sent] == [1, 4, 2]             # at most batch_max_messages per POST
    assert [item["msg"]["seq"] for b in sent for item in b] == list(range(1, 8))
    body = json.loads(backend.bodies("/batch")[first + 1])
    assert set(body) == {"tenant", "user", "sid", "batch"}
    assert (body["tenant"], body["user"], body["sid"]) == ("acme", "batcher", authed["data"]["sid"])
    assert all(set(item) == {"trace_id", "msg"} for item in body["batch"])
    assert len({item["trace_id"] for b in sent for item in b}) == 7


def test_one_entry_error_stays_with_its_message(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, bt(1, {"sleep": 0.1, "answer": {"reply": "a"}}))
        await asyncio.sleep(0.03)
        await send_json(ws, bt(2, {"answer": {"error": {"code": "BAD_REQUEST", "msg": "no"}}}))
        await send_json(ws, bt(3, {"answer": {"reply": "c"}}))
        got = [await recv_json(ws) for _ in range(3)]
        assert got[0]["data"] == "a"
        assert error_of(got[1]) == "BAD_REQUEST" and got[1]["seq"] == 2
        assert got[2]["data"] == "c" and got[2]["seq"] == 3
        await ws.close()
    run(main())


@pytest.mark.parametrize("count", [1, 4], ids=["fewer", "more"])
def test_a_batch_answer_with_the_wrong_count_fails_each_message_and_publishes_nothing(g, count):
    before = outcomes(g)

    async def main():
        watcher, _ = await connect_authed(g.url("acme", "dev:watcher"))
        assert (await request(watcher, {"v": 1, "svc": "room", "type": "join", "room": "r1"}))["type"] == "joined"
        ws, _ = await connect_authed(g.url("acme", "dev:sender"))
        pub = {"answer": {"publish": [{"room": "r1", "svc": "x", "type": "y", "data": 1}], "reply": 0}}
        await send_json(ws, bt(1, {"sleep": 0.1, "answer": {"reply": "first"}}))
        await asyncio.sleep(0.03)
        await send_json(ws, bt(2, {**pub, "count": count}, flags=4))
        await send_json(ws, bt(3, pub, flags=4))
        assert (await recv_json(ws))["data"] == "first"
        two, three = await recv_json(ws), await recv_json(ws)
        assert (error_of(two), two["seq"], error_of(three), three["seq"]) == ("INTERNAL", 2, "INTERNAL", 3)
        assert await request(ws, PING) == PONG            # no acks came, and the session is open
        await expect_silence(watcher, 0.2)                # nothing was published
        for w in (ws, watcher):
            await w.close()
    run(main())
    after = outcomes(g)
    assert after["bad_answer"] == before["bad_answer"] + 2
    assert after["ok"] == before["ok"] + 1


def test_an_invalid_entry_invalidates_the_whole_batch(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, bt(1, {"sleep": 0.1}))
        await asyncio.sleep(0.03)
        await send_json(ws, bt(2, {"answer": {"reply": "fine"}}))
        await send_json(ws, bt(3, {"answer": {"replay": "typo"}}))
        await recv_json(ws)
        got = [await recv_json(ws) for _ in range(2)]
        assert [(error_of(m), m["seq"]) for m in got] == [("INTERNAL", 2), ("INTERNAL", 3)]
        await ws.close()
    run(main())


def test_each_message_keeps_its_own_deadline(g):
    """timeout_ms 400 from each message's arrival, also inside a batch at a hanging backend."""
    async def main():
        ws, _ = await connect_authed(g.url())
        t0 = time.monotonic()
        await send_json(ws, bt(1, {"sleep": 0.25}))
        await asyncio.sleep(0.01)
        await send_json(ws, bt(2, {"sleep": 5}))           # the second batch (2 and 3) hangs
        await asyncio.sleep(0.15)
        await send_json(ws, bt(3))                         # arrives 150 ms later: its own deadline
        first = await recv_json(ws)
        assert first["seq"] == 1 and first["type"] == "reply"
        two = await recv_json(ws)
        t_two = time.monotonic() - t0
        three = await recv_json(ws)
        t_three = time.monotonic() - t0
        assert (error_of(two), two["seq"], error_of(three), three["seq"]) == ("TIMEOUT", 2, "TIMEOUT", 3)
        assert 0.35 < t_two < 1.0 and 0.5 < t_three < 1.2 and t_three - t_two > 0.08, (t_two, t_three)
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())


def test_max_inflight_counts_batched_messages(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        for seq in range(1, 6):
            await send_json(ws, bt(seq, {"sleep": 0.1} if seq == 1 else None, svc="bq"))
        got = [await recv_json(ws) for _ in range(5)]
        refused = sorted(m["seq"] for m in got if m["type"] == "error" and error_of(m) == "RESOURCE_EXHAUSTED")
        assert refused == [4, 5]
        assert sorted(m["seq"] for m in got if m["type"] == "reply") == [1, 2, 3]
        await ws.close()
    run(main())


@pytest.mark.parametrize("status", [500, 404])
def test_a_bad_status_fails_the_whole_batch(g, status):
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, bt(1, {"sleep": 0.1}))
        await asyncio.sleep(0.03)
        await send_json(ws, bt(2, {"status": status}))
        await send_json(ws, bt(3))
        await recv_json(ws)
        got = [await recv_json(ws) for _ in range(2)]
        assert [(error_of(m), m["seq"]) for m in got] == [("INTERNAL", 2), ("INTERNAL", 3)]
        await ws.close()
    run(main())
