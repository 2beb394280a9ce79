"""SPEC 13, history and recovery, over real sockets: positions on room messages, `room:join`
with `since` (replay, then `joined` with `recovered`), every bad input of issue 12, the
replay paced by the socket (non-reading clients, live traffic during a replay), history
outliving members, ttl and size, restart and reload, metrics and the server API."""
import asyncio
import json
import os
import time

import aiohttp
import pytest

from tests.client import (
    PING, PONG, close_code_of, connect_authed, error_of, expect_close, expect_silence, mask_frame, raw_upgrade,
    read_frames, recv_json, request, run, send_json,
)
from tests.integration.backend_app import sample, scrape

KEY = "hist-0123456789abcdef0123456789"
ENV = "WSPRISM_TEST_HISTORY_API_KEY"
ALLOW = 'ext_allowlist: ["room:*", "chat:send", "sys:*"]'
FAST = "rate_limit_rps: 100000, rate_limit_burst: 100000"

YAML = f"""
version: 1
gateway:
  listen: "127.0.0.1:0"
  writer_send_timeout_ms: 300
  api:
    listen: "127.0.0.1:0"
    keys: {{acme: {{env: {ENV}}}, plain: {{env: {ENV}_PLAIN}}}}
tenants:
  - id: acme
    policy: {{{ALLOW}, {FAST}, history: {{size: 10, ttl_ms: 60000}}}}
  - id: pres
    policy: {{{ALLOW}, presence_events: true, history: {{size: 10, ttl_ms: 60000}}}}
  - id: plain
    policy: {{{ALLOW}}}
  - id: big
    limits: {{max_frame_bytes: 65536}}
    policy: {{{ALLOW}, {FAST}, history: {{size: 5000, ttl_ms: 60000}}}}
  - id: bigpres
    policy: {{{ALLOW}, presence_events: true, history: {{size: 5000, ttl_ms: 60000}}}}
  - id: short
    limits: {{max_rooms_total: 1}}
    policy: {{{ALLOW}, history: {{size: 10, ttl_ms: 1000}}}}
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    os.environ[ENV] = KEY
    os.environ[ENV + "_PLAIN"] = KEY + "-plain"
    try:
        return gateway_factory(YAML)
    finally:
        del os.environ[ENV], os.environ[ENV + "_PLAIN"]


def join_msg(room, since=None, seq=None, ack=False, data=None):
    env = {"v": 1, "svc": "room", "type": "join", "room": room}
    if since is not None:
        env["data"] = {"since": since}
    if data is not None:
        env["data"] = data
    if seq is not None:
        env["seq"] = seq
    if ack:
        env["flags"] = 4
    return env


def chat(room, msg, seq=None):
    env = {"v": 1, "svc": "chat", "type": "send", "room": room, "data": {"msg": msg}}
    if seq is not None:
        env.update(seq=seq, flags=4)
    return env


async def until_joined(ws, timeout=3.0):
    """(room messages before `joined`, `joined`)."""
    before = []
    while True:
        m = await recv_json(ws, timeout)
        if m["svc"] == "sys" and m["type"] == "joined":
            return before, m
        before.append(m)


async def joined_now(ws, room, since=None, **kw):
    await send_json(ws, join_msg(room, since, **kw))
    return await until_joined(ws)


def publish(g, tenant, room, n, size=0, start=0):
    """n chat messages straight into the tenant's publish point, in the gateway's loop."""
    blob = "x" * size

    def go():
        t = g.tenant(tenant)
        for i in range(start, start + n):
            t.publish(room, "chat", "msg", {"from": "seed", "msg": f"{i}:{blob}"})
    g.call(go)


def api(g, method, path, body=None, key=KEY):
    async def main():
        hdrs = {"Authorization": f"Bearer {key}"} if key else {}
        data = json.dumps(body).encode() if body is not None else None
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"http://127.0.0.1:{g.gw.api.port}{path}", data=data, headers=hdrs) as r:
                return r.status, await r.json()
    return asyncio.run(main())


# -- positions ----------------------------------------------------------------------------

def test_room_messages_carry_offset_and_epoch_and_joined_the_position(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ann"))
        await send_json(a, join_msg("pos"))
        raw = await a.recv()
        joined = json.loads(raw)
        epoch = joined["data"]["epoch"]
        assert joined == {"v": 1, "svc": "sys", "type": "joined", "room": "pos", "data": {"offset": 0, "epoch": epoch}}
        assert isinstance(epoch, str) and len(epoch) == 12
        for i in (1, 2):
            await send_json(a, chat("pos", f"m{i}"))
            raw = await a.recv()
            # the exact wire form: the position sits between room and data
            assert raw == ('{"v":1,"svc":"chat","type":"msg","room":"pos","offset":%d,"epoch":"%s",'
                           '"data":{"from":"ann","msg":"m%d"}}' % (i, epoch, i))
        # a second member joining now hears the room's newest offset
        b, _ = await connect_authed(g.url(ticket="dev:bob"))
        assert (await joined_now(b, "pos"))[1]["data"] == {"offset": 2, "epoch": epoch}
        await a.close()
        await b.close()
    run(main())


def test_presence_events_and_hot_frames_are_not_kept(g):
    async def main():
        a, _ = await connect_authed(g.url("pres", "dev:ann"))
        epoch = (await joined_now(a, "p"))[1]["data"]["epoch"]
        assert await recv_json(a) == {"v": 1, "svc": "room", "type": "user_joined", "room": "p", "data": {"user": "ann"}}
        b, _ = await connect_authed(g.url("pres", "dev:bob"))
        assert (await joined_now(b, "p"))[1]["data"] == {"offset": 0, "epoch": epoch}
        for ws in (a, b):        # joined first, then user_joined, unpositioned
            assert await recv_json(ws) == {"v": 1, "svc": "room", "type": "user_joined", "room": "p", "data": {"user": "bob"}}
        await b.close()
        assert await recv_json(a) == {"v": 1, "svc": "room", "type": "user_left", "room": "p", "data": {"user": "bob"}}
        c, _ = await connect_authed(g.url("pres", "dev:cid"))
        before, joined = await joined_now(c, "p", {"offset": 0, "epoch": epoch})
        assert before == [] and joined["data"] == {"offset": 0, "epoch": epoch, "recovered": True}
        assert g.call(lambda: g.tenant("pres").history.count) == 0
        await a.close()
        await c.close()
    run(main())


def test_without_history_no_position_and_since_is_accepted(g):
    async def main():
        a, _ = await connect_authed(g.url("plain", "dev:ann"))
        before, joined = await joined_now(a, "r", {"offset": 3, "epoch": "whatever"})
        assert before == [] and joined == {"v": 1, "svc": "sys", "type": "joined", "room": "r"}
        await send_json(a, chat("r", "hi"))
        assert await recv_json(a) == {"v": 1, "svc": "chat", "type": "msg", "room": "r", "data": {"from": "ann", "msg": "hi"}}
        # still checked: malformed is BAD_REQUEST on every tenant
        err = await request(a, join_msg("r", {"offset": "3", "epoch": "e"}, seq=9))
        assert error_of(err) == "BAD_REQUEST" and err["seq"] == 9
        await a.close()
    run(main())


# -- recovery -----------------------------------------------------------------------------

def test_reconnect_gets_what_it_missed_in_order_then_joined_recovered(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ann", sid="tab1"))
        b, _ = await connect_authed(g.url(ticket="dev:bob"))
        epoch = (await joined_now(a, "rec"))[1]["data"]["epoch"]
        await joined_now(b, "rec")
        for i in (1, 2):
            await send_json(b, chat("rec", f"m{i}"))
            assert (await recv_json(a))["offset"] == i
            await recv_json(b)
        await a.close()                                     # ann's link drops
        for i in (3, 4, 5):
            await send_json(b, chat("rec", f"m{i}"))
        a, _ = await connect_authed(g.url(ticket="dev:ann", sid="tab1"))
        before, joined = await joined_now(a, "rec", {"offset": 2, "epoch": epoch}, seq=7, ack=True)
        assert [(m["offset"], m["epoch"], m["data"]["msg"]) for m in before] == [
            (3, epoch, "m3"), (4, epoch, "m4"), (5, epoch, "m5")]
        assert joined["data"] == {"offset": 5, "epoch": epoch, "recovered": True}
        assert await recv_json(a) == {"v": 1, "svc": "sys", "type": "ack", "seq": 7}
        # then live, once
        await send_json(b, chat("rec", "m6"))
        assert (await recv_json(a))["offset"] == 6
        await expect_silence(a)
        await a.close()
        await b.close()
    run(main())


@pytest.mark.parametrize("since", [
    "17", 17, [17], {"offset": "1", "epoch": "E"}, {"offset": -1, "epoch": "E"}, {"offset": 1.5, "epoch": "E"},
    {"offset": 2**64, "epoch": "E"}, {"offset": 1, "epoch": 5}, {"offset": 1, "epoch": None}, {"offset": 1},
    {"epoch": "E"}, {"offset": 1, "epoch": "E", "extra": 1}, {"offset": True, "epoch": "E"},
], ids=["string", "int", "list", "offset-string", "negative", "float", "over-u64", "epoch-int", "epoch-null",
        "no-epoch", "no-offset", "unknown-key", "offset-bool"])
def test_malformed_since_is_bad_request_and_the_session_stays(g, since):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:bad"))
        err = await request(a, join_msg("bad", since, seq=3))
        assert error_of(err) == "BAD_REQUEST" and err["seq"] == 3
        assert "since" in err["data"]["msg"]
        assert await request(a, PING) == PONG                 # the session stays
        assert not g.call(lambda: g.tenant().is_member(g.tenant().sessions.sessions_of("bad")[0], "bad"))
        await a.close()
    run(main())


@pytest.mark.parametrize("data", ["str", 5, [1]], ids=["string", "number", "list"])
def test_join_data_that_is_not_an_object_is_bad_request(g, data):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:bad2"))
        assert error_of(await request(a, join_msg("bad", data=data))) == "BAD_REQUEST"
        assert await request(a, PING) == PONG
        # null data and null since are "no since"
        assert (await request(a, join_msg("bad", data={"since": None})))["data"]["offset"] == 0
        await a.close()
    run(main())


def test_since_ahead_or_of_another_epoch_is_not_recovered_and_gets_what_is_held(g):
    publish(g, "acme", "ahead", 4)
    epoch = g.call(lambda: g.tenant().history.position("ahead"))[1]

    async def main():
        for since in ({"offset": 9, "epoch": epoch}, {"offset": 2, "epoch": "another-epo"},
                      {"offset": 0, "epoch": "another-epo"}):
            a, _ = await connect_authed(g.url(ticket="dev:ahead"))
            before, joined = await joined_now(a, "ahead", since)
            assert [m["offset"] for m in before] == [1, 2, 3, 4]
            assert joined["data"] == {"offset": 4, "epoch": epoch, "recovered": False}
            await a.close()
    run(main())


def test_a_gap_larger_than_size_is_not_recovered_with_the_newest_size(g):
    publish(g, "acme", "gap", 25)
    epoch = g.call(lambda: g.tenant().history.position("gap"))[1]

    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:gap"))
        before, joined = await joined_now(a, "gap", {"offset": 2, "epoch": epoch})
        assert [m["offset"] for m in before] == list(range(16, 26))        # size 10: the newest 10
        assert joined["data"] == {"offset": 25, "epoch": epoch, "recovered": False}
        await a.close()
        # exactly at the edge: since 15 (16..25 all held) recovers
        a, _ = await connect_authed(g.url(ticket="dev:gap"))
        before, joined = await joined_now(a, "gap", {"offset": 15, "epoch": epoch})
        assert len(before) == 10 and joined["data"]["recovered"] is True
        # nothing missed
        before, joined = await joined_now(a, "gap", {"offset": 25, "epoch": epoch})
        assert before == [] and joined["data"] == {"offset": 25, "epoch": epoch, "recovered": True}
        await a.close()
    run(main())


def test_rejoin_while_live_replays_nothing(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:again"))
        epoch = (await joined_now(a, "again"))[1]["data"]["epoch"]
        await send_json(a, chat("again", "m1"))
        await recv_json(a)
        before, joined = await joined_now(a, "again", {"offset": 0, "epoch": epoch})
        assert before == [] and joined["data"] == {"offset": 1, "epoch": epoch, "recovered": True}
        before, joined = await joined_now(a, "again", {"offset": 0, "epoch": "someother12"})
        assert before == [] and joined["data"]["recovered"] is False
        before, joined = await joined_now(a, "again")
        assert joined["data"] == {"offset": 1, "epoch": epoch}
        await a.close()
    run(main())


def test_history_outlives_the_last_member_and_is_not_a_room(g):
    """The only member drops; the backend publishes meanwhile; it comes back and recovers.
    The record of a room without members does not count toward max_rooms_total."""
    async def main():
        a, _ = await connect_authed(g.url("short", "dev:solo"))
        epoch = (await joined_now(a, "one"))[1]["data"]["epoch"]
        await a.close()
        await asyncio.sleep(0.05)
        assert g.call(lambda: g.tenant("short").rooms.get("one")) is None
        # max_rooms_total 1: another room can be joined, the record is not a room
        b, _ = await connect_authed(g.url("short", "dev:other"))
        assert (await joined_now(b, "two"))[1]["type"] == "joined"
        await b.close()
        await asyncio.sleep(0.05)
        g.call(lambda: g.tenant("short").publish("one", "news", "flash", {"n": 1}))
        a, _ = await connect_authed(g.url("short", "dev:solo"))
        before, joined = await joined_now(a, "one", {"offset": 0, "epoch": epoch})
        assert before == [{"v": 1, "svc": "news", "type": "flash", "room": "one", "offset": 1, "epoch": epoch,
                           "data": {"n": 1}}]
        assert joined["data"] == {"offset": 1, "epoch": epoch, "recovered": True}
        await a.close()
    run(main())


def test_ttl_drops_old_messages_and_then_the_record(g):
    async def main():
        a, _ = await connect_authed(g.url("short", "dev:ttl"))
        epoch = (await joined_now(a, "ttl"))[1]["data"]["epoch"]
        await send_json(a, chat("ttl", "old"))
        await recv_json(a)
        await asyncio.sleep(1.1)                           # ttl_ms 1000: the message is too old now
        await send_json(a, chat("ttl", "new"))
        assert (await recv_json(a))["offset"] == 2
        b, _ = await connect_authed(g.url("short", "dev:ttl2"))
        before, joined = await joined_now(b, "ttl", {"offset": 0, "epoch": epoch})
        assert [m["data"]["msg"] for m in before] == ["new"] and joined["data"]["recovered"] is False
        await b.close()
        # members keep the epoch however long the room is quiet
        await asyncio.sleep(2.2)
        assert g.call(lambda: g.tenant("short").history.position("ttl")) == (2, epoch)
        await a.close()
        # without members the record goes ttl_ms after its last activity (sweep each second)
        await asyncio.sleep(2.3)
        assert "ttl" not in g.call(lambda: list(g.tenant("short").history.rooms))
        a, _ = await connect_authed(g.url("short", "dev:ttl"))
        before, joined = await joined_now(a, "ttl", {"offset": 2, "epoch": epoch})
        assert before == [] and joined["data"]["recovered"] is False and joined["data"]["epoch"] != epoch
        assert joined["data"]["offset"] == 0
        await a.close()
    run(main())


# -- replays bigger than one turn -----------------------------------------------------------

def test_a_client_that_stops_reading_during_a_replay_is_bounded_then_closed_4005(g):
    publish(g, "big", "huge", 5000, size=2000)            # ~10 MB of history, more than the kernel hides
    epoch = g.call(lambda: g.tenant("big").history.position("huge"))[1]
    metrics = scrape(g)
    timeouts = sample(metrics, "wsprism_writer_timeouts_total", tenant="big", reason="send_timeout")
    aborted = sample(metrics, "wsprism_history_replays_total", tenant="big", outcome="aborted")
    stuck = raw_upgrade(g.port, "tenant=big&ticket=dev:stuck", rcvbuf=4096)
    since = {"offset": 0, "epoch": epoch}
    stuck.sendall(mask_frame(1, json.dumps(join_msg("huge", since)).encode()))

    async def main():
        # others are not held up meanwhile
        other, _ = await connect_authed(g.url("big", "dev:other"))
        assert await request(other, PING) == PONG
        held = []
        for _ in range(12):                       # writer_send_timeout_ms is 300
            await asyncio.sleep(0.05)
            held.append(g.call(_held_by, g, "big", "stuck"))
        await other.close()
        return held
    held = run(main())
    assert held[0] is not None and held[-1] is None, held      # closed within the test's 0.6 s
    assert all(0 < h <= 2 * 64 * 1024 + 4096 for h in held if h is not None), held
    frames = read_frames(stuck, 1.0)            # it reads again: what was queued, then the close
    stuck.close()
    assert close_code_of(frames) in (4005, None)
    assert g.call(lambda: g.tenant("big").sessions.sessions_of("stuck")) == []
    assert g.call(lambda: g.tenant("big").rooms.get("huge")) is None
    metrics = scrape(g)
    assert sample(metrics, "wsprism_writer_timeouts_total", tenant="big", reason="send_timeout") == timeouts + 1
    assert sample(metrics, "wsprism_history_replays_total", tenant="big", outcome="aborted") == aborted + 1


def _held_by(g, tenant, user):
    """Bytes in the transport's write buffer of the user's session (None if gone)."""
    sessions = g.tenant(tenant).sessions.sessions_of(user)
    if not sessions:
        return None
    return sessions[0].transport.underlying_transport.get_write_buffer_size()


def test_live_traffic_during_a_long_replay_arrives_exactly_once_in_offset_order(g):
    """A slow reader replays ~6 MB while another member keeps talking: the replay and the
    live traffic meet without a gap or a duplicate, and `joined` sits at the seam."""
    publish(g, "big", "race", 3000, size=2000)
    top0, epoch = g.call(lambda: g.tenant("big").history.position("race"))

    async def main():
        talker, _ = await connect_authed(g.url("big", "dev:talker"), max_queue=None)
        await joined_now(talker, "race")
        reader, _ = await connect_authed(g.url("big", "dev:reader"), max_queue=4)
        await send_json(reader, join_msg("race", {"offset": 100, "epoch": epoch}, seq=1, ack=True))
        stop = asyncio.Event()

        async def talk():
            n = 0
            while not stop.is_set() and n < 2000:
                await send_json(talker, chat("race", f"live{n}"))
                n += 1
                await asyncio.sleep(0.0005)
            return n

        async def drain_talker():
            while True:
                await recv_json(talker, 10)

        talking = asyncio.create_task(talk())
        draining = asyncio.create_task(drain_talker())
        offsets, joined, after_joined = [], None, []
        t0 = time.monotonic()
        while True:
            m = await recv_json(reader, 10)
            if m["type"] == "joined":
                joined = m
                break
            offsets.append(m["offset"])
            if len(offsets) % 200 == 0:
                await asyncio.sleep(0.01)            # a slow reader: the replay goes chunk by chunk
        assert await recv_json(reader) == {"v": 1, "svc": "sys", "type": "ack", "seq": 1}
        replay_s = time.monotonic() - t0
        stop.set()
        sent = await talking
        while len(offsets) + len(after_joined) < top0 - 100 + sent:
            after_joined.append((await recv_json(reader, 10))["offset"])
        draining.cancel()
        await talker.close()
        await reader.close()
        return offsets, joined, after_joined, sent, replay_s
    offsets, joined, after, sent, replay_s = run(main())
    assert joined["data"]["recovered"] is True and joined["data"]["epoch"] == epoch
    assert joined["data"]["offset"] == offsets[-1]
    everything = offsets + after
    assert everything == list(range(101, top0 + sent + 1))          # no gap, no duplicate, in order
    # the race was real: messages published during the replay came through the replay
    assert offsets[-1] > top0, (offsets[-1], top0, replay_s)


def test_leave_or_rejoin_during_a_replay(g):
    publish(g, "big", "lr", 3000, size=200)        # ~800 KB: many chunks
    epoch = g.call(lambda: g.tenant("big").history.position("lr"))[1]
    since = {"offset": 0, "epoch": epoch}
    # a re-join while the replay runs gets its own joined (and ack) after the replay (both
    # frames in one segment: the second is handled in the turn of the replay's first chunk)
    s = raw_upgrade(g.port, "tenant=big&ticket=dev:rj")
    s.sendall(mask_frame(1, json.dumps(join_msg("lr", since, seq=1, ack=True)).encode())
              + mask_frame(1, json.dumps(join_msg("lr", seq=2, ack=True)).encode()))
    texts = [json.loads(p) for op, p in read_frames(s, 1.0) if op == 1]
    s.close()
    tail = [m for m in texts if m["svc"] == "sys"][1:]
    assert [m["offset"] for m in texts if m["svc"] == "chat"] == list(range(1, 3001))
    joined = {"v": 1, "svc": "sys", "type": "joined", "room": "lr", "data": {"offset": 3000, "epoch": epoch, "recovered": True}}
    ack = {"v": 1, "svc": "sys", "type": "ack"}
    assert tail == [joined, dict(ack, seq=1), joined, dict(ack, seq=2)]
    # a leave while the replay runs ends it: the join hears BAD_REQUEST, then `left`
    before = sample(scrape(g), "wsprism_history_replays_total", tenant="big", outcome="aborted")
    s = raw_upgrade(g.port, "tenant=big&ticket=dev:lv")
    s.sendall(mask_frame(1, json.dumps(join_msg("lr", since, seq=1)).encode())
              + mask_frame(1, b'{"v":1,"svc":"room","type":"leave","room":"lr","seq":2}'))
    texts = [json.loads(p) for op, p in read_frames(s, 1.0) if op == 1]
    s.close()
    chats = [m["offset"] for m in texts if m["svc"] == "chat"]
    assert chats == list(range(1, len(chats) + 1)) and len(chats) < 3000
    sys_msgs = [m for m in texts if m["svc"] == "sys"][1:]
    assert error_of(sys_msgs[0]) == "BAD_REQUEST" and sys_msgs[0]["seq"] == 1
    assert sys_msgs[1:] == [{"v": 1, "svc": "sys", "type": "left", "room": "lr"}]
    assert sample(scrape(g), "wsprism_history_replays_total", tenant="big", outcome="aborted") == before + 1


def test_chat_during_a_replay_arrives_in_offset_order(g):
    publish(g, "big", "own", 3000, size=200)
    epoch = g.call(lambda: g.tenant("big").history.position("own"))[1]
    s = raw_upgrade(g.port, "tenant=big&ticket=dev:own")
    s.sendall(mask_frame(1, json.dumps(join_msg("own", {"offset": 0, "epoch": epoch})).encode())
              + mask_frame(1, json.dumps(chat("own", "mine")).encode()))
    texts = [json.loads(p) for op, p in read_frames(s, 1.0) if op == 1]
    s.close()
    chats = [m for m in texts if m["svc"] == "chat"]
    assert [m["offset"] for m in chats] == list(range(1, 3002))
    assert chats[-1]["data"] == {"from": "own", "msg": "mine"}
    assert texts[-1]["type"] == "joined" and texts[-1]["data"]["offset"] == 3001


def test_presence_around_a_long_replay(g):
    """A joining session enters the room for presence when its replay is over: a leave
    during the replay tells nobody anything; a finished replay announces user_joined."""
    publish(g, "bigpres", "bp", 3000, size=200)
    epoch = g.call(lambda: g.tenant("bigpres").history.position("bp"))[1]
    since = {"offset": 0, "epoch": epoch}

    async def main():
        w, _ = await connect_authed(g.url("bigpres", "dev:watcher"))
        await joined_now(w, "bp")
        assert (await recv_json(w))["data"] == {"user": "watcher"}
        s = raw_upgrade(g.port, "tenant=bigpres&ticket=dev:gone")
        s.sendall(mask_frame(1, json.dumps(join_msg("bp", since)).encode())
                  + mask_frame(1, b'{"v":1,"svc":"room","type":"leave","room":"bp"}'))
        await expect_silence(w, 0.5)
        s.close()
        j, _ = await connect_authed(g.url("bigpres", "dev:late"), max_queue=None)
        before, joined = await joined_now(j, "bp", since)
        assert len(before) == 3000 and joined["data"]["recovered"] is True
        assert await recv_json(j) == {"v": 1, "svc": "room", "type": "user_joined", "room": "bp", "data": {"user": "late"}}
        assert await recv_json(w) == {"v": 1, "svc": "room", "type": "user_joined", "room": "bp", "data": {"user": "late"}}
        await j.close()
        assert (await recv_json(w))["type"] == "user_left"
        await w.close()
    run(main())


# -- restart and reload -----------------------------------------------------------------------

def test_a_restart_is_a_new_epoch(gateway_factory):
    yaml = "version: 1\ngateway: {listen: \"127.0.0.1:0\"}\ntenants:\n  - id: acme\n    policy: {" \
           + ALLOW + ", history: {size: 10, ttl_ms: 60000}}\n"
    first = gateway_factory(yaml)

    async def before():
        a, _ = await connect_authed(first.url(ticket="dev:x"))
        epoch = (await joined_now(a, "r"))[1]["data"]["epoch"]
        await send_json(a, chat("r", "m1"))
        await recv_json(a)
        await a.close()
        return epoch
    epoch = run(before())
    first.stop()
    second = gateway_factory(yaml)

    async def after():
        a, _ = await connect_authed(second.url(ticket="dev:x"))
        before_, joined = await joined_now(a, "r", {"offset": 1, "epoch": epoch})
        assert before_ == [] and joined["data"]["recovered"] is False
        assert joined["data"]["epoch"] != epoch and joined["data"]["offset"] == 0
        await a.close()
    run(after())


def test_reload_turns_history_off_and_on(gateway_factory):
    from wsprism.config import parse_config

    on = "version: 1\ngateway: {listen: \"127.0.0.1:0\"}\ntenants:\n  - id: acme\n    policy: {" \
         + ALLOW + ", history: {size: 10, ttl_ms: 60000}}\n"
    off = on.replace(", history: {size: 10, ttl_ms: 60000}", "")
    g2 = gateway_factory(on)

    async def main():
        a, _ = await connect_authed(g2.url(ticket="dev:x"))
        epoch = (await joined_now(a, "r"))[1]["data"]["epoch"]
        await send_json(a, chat("r", "m1"))
        assert (await recv_json(a))["offset"] == 1
        g2.call(g2.gw.reload, parse_config(off))
        await send_json(a, chat("r", "m2"))
        assert await recv_json(a) == {"v": 1, "svc": "chat", "type": "msg", "room": "r", "data": {"from": "x", "msg": "m2"}}
        assert (await joined_now(a, "r", {"offset": 1, "epoch": epoch}))[1] == {
            "v": 1, "svc": "sys", "type": "joined", "room": "r"}
        g2.call(g2.gw.reload, parse_config(on.replace("size: 10", "size: 20")))
        await send_json(a, chat("r", "m3"))
        m = await recv_json(a)
        assert m["offset"] == 1 and m["epoch"] != epoch          # a new store: a new epoch
        assert g2.call(lambda: g2.tenant().history.size) == 20
        b, _ = await connect_authed(g2.url(ticket="dev:y"))
        before, joined = await joined_now(b, "r", {"offset": 1, "epoch": epoch})
        assert [x["data"]["msg"] for x in before] == ["m3"] and joined["data"]["recovered"] is False
        await a.close()
        await b.close()
    run(main())


# -- metrics and the server API ------------------------------------------------------------

def test_metrics(g):
    publish(g, "acme", "met", 3)
    epoch = g.call(lambda: g.tenant().history.position("met"))[1]

    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:met"))
        await joined_now(a, "met", {"offset": 1, "epoch": epoch})
        await joined_now(a, "met2", {"offset": 1, "epoch": "other-epoch"})
        await a.close()
    before = scrape(g)
    run(main())
    m = scrape(g)
    t = g.call(lambda: g.tenant().history)
    assert sample(m, "wsprism_history_bytes", tenant="acme") == t.nbytes > 0
    assert sample(m, "wsprism_history_messages", tenant="acme") == t.count
    assert sample(m, "wsprism_history_rooms", tenant="acme") == len(t.rooms)
    for outcome, n in (("recovered", 1), ("other_epoch", 1), ("ahead", 0)):
        key = ("wsprism_history_replays_total", frozenset({"tenant": "acme", "outcome": outcome}.items()))
        assert m[key] - before[key] == n
    key = ("wsprism_history_replayed_messages_total", frozenset({"tenant": "acme"}.items()))
    assert m[key] - before[key] == 2
    assert not any(name.startswith("wsprism_history") and ("tenant", "plain") in labels for name, labels in m)


def test_api_history_and_publish_into_history(g):
    status, out = api(g, "POST", "/v1/publish", {"tenant": "acme", "room": "api", "svc": "news", "type": "t", "data": {"n": 0}})
    epoch = out["epoch"]
    assert (status, out) == (200, {"delivered": 0, "offset": 1, "epoch": epoch})
    for n in range(1, 12):
        api(g, "POST", "/v1/publish", {"tenant": "acme", "room": "api", "svc": "news", "type": "t", "data": {"n": n}})
    msg = lambda o: {"v": 1, "svc": "news", "type": "t", "room": "api", "offset": o, "epoch": epoch, "data": {"n": o - 1}}
    status, out = api(g, "GET", "/v1/history?tenant=acme&room=api&since=5&limit=3")
    assert (status, out) == (200, {"epoch": epoch, "offset": 12, "complete": True, "messages": [msg(6), msg(7), msg(8)]})
    status, out = api(g, "GET", f"/v1/history?tenant=acme&room=api&since=8&epoch={epoch}")
    assert out["messages"] == [msg(o) for o in range(9, 13)] and out["complete"] is True
    # size 10: 1 and 2 are gone; another epoch; ahead
    status, out = api(g, "GET", "/v1/history?tenant=acme&room=api")
    assert out["complete"] is False and [m["offset"] for m in out["messages"]] == list(range(3, 13))
    status, out = api(g, "GET", "/v1/history?tenant=acme&room=api&since=8&epoch=nope")
    assert out["complete"] is False and len(out["messages"]) == 10
    status, out = api(g, "GET", "/v1/history?tenant=acme&room=api&since=12")
    assert out == {"epoch": epoch, "offset": 12, "complete": True, "messages": []}
    # without history: 404; without publish position
    status, out = api(g, "GET", "/v1/history?tenant=plain&room=api", key=KEY + "-plain")
    assert status == 404 and "history" in out["error"]
    assert api(g, "POST", "/v1/publish", {"tenant": "plain", "room": "x", "svc": "a", "type": "b"}, key=KEY + "-plain") \
        == (200, {"delivered": 0})


@pytest.mark.parametrize("query, status, field", [
    ("tenant=acme", 400, "room"),
    ("tenant=acme&room=bad%20room", 400, "room"),
    ("tenant=acme&room=r&since=-1", 400, "since"),
    ("tenant=acme&room=r&since=x", 400, "since"),
    ("tenant=acme&room=r&since=18446744073709551616", 400, "since"),
    ("tenant=acme&room=r&limit=0", 400, "limit"),
    ("tenant=acme&room=r&limit=10001", 400, "limit"),
    ("tenant=acme&room=r&epoch=", 400, "epoch"),
    ("tenant=acme&room=r&since=1&since=2", 400, None),
    ("tenant=acme&room=r&what=1", 400, "what"),
    ("tenant=plain&room=r", 403, "tenant"),
])
def test_api_history_bad_input(g, query, status, field):
    got, out = api(g, "GET", f"/v1/history?{query}")
    assert got == status and isinstance(out["error"], str)
    assert out.get("field") == field


def test_api_history_needs_the_key(g):
    assert api(g, "GET", "/v1/history?tenant=acme&room=r", key=None)[0] == 401
    assert api(g, "GET", "/v1/history?tenant=acme&room=r", key="wrong")[0] == 401


def test_admin_counts_a_joining_member_in_its_room(g):
    """The admin page's biggest rooms count sessions as the broker does (Room.size): a
    member whose replay is still being sent is in the room (users and sessions alike)."""
    from wsprism.ops.admin import tenant_state

    publish(g, "big", "adm", 5000, size=2000)
    epoch = g.call(lambda: g.tenant("big").history.position("adm"))[1]

    async def main():
        w, _ = await connect_authed(g.url("big", "dev:live"))
        await joined_now(w, "adm")
        s = raw_upgrade(g.port, "tenant=big&ticket=dev:slow")       # never reads its replay
        s.sendall(mask_frame(1, json.dumps(join_msg("adm", {"offset": 0, "epoch": epoch})).encode()))
        room = g.tenant("big").rooms.rooms
        for _ in range(100):
            if g.call(lambda: len(room["adm"].joining)) == 1:
                break
            await asyncio.sleep(0.02)
        st = g.call(lambda: tenant_state(g.gw, g.tenant("big"), None))
        top = [r for r in st["top_rooms"] if r["room"] == "adm"]
        assert top == [{"room": "adm", "users": 2, "sessions": 2}]
        s.close()
        await w.close()
    run(main())
