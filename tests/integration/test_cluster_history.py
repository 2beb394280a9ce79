"""History with a broker (SPEC 11 + 13, issue 12): the offsets come from one atomic step in
Redis, so every node delivers a room's messages in offset order; a client that drops
from one node recovers on another; the server API reads the shared stream; a node that
missed broker messages during an outage repairs the gap for its members. Two gateways
(each its own loop thread and broker node, real sockets) on a real redis-server."""
import asyncio
import json
import os

import aiohttp

from tests.client import connect_authed, expect_silence, recv_json, send_json
from tests.integration.backend_app import sample, scrape
from tests.integration.test_cluster_rooms import wait
from tests.integration.test_history import chat, join_msg, until_joined

KEY = "cluster-history-api-key-0123456789ab"
ENV = "WSPRISM_CLUSTER_HISTORY_KEY"

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  api: {{listen: "127.0.0.1:0", keys: {{acme: {{env: %s}}}}}}
broker: {{url: "{url}", prefix: "{prefix}", lease_ms: 2000}}
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
      history: {{size: {size}, ttl_ms: {ttl}}}
""" % ENV


def pair(gateway_factory, url, prefix, size=100, ttl=60000):
    os.environ[ENV] = KEY
    try:
        out = [gateway_factory(YAML.format(url=url, prefix=prefix, size=size, ttl=ttl)) for _ in range(2)]
    finally:
        del os.environ[ENV]
    wait(lambda: all(g.gw.cluster.up for g in out))
    return out


async def joined_now(ws, room, since=None):
    await send_json(ws, join_msg(room, since))
    return await until_joined(ws)


async def chats(ws, n, timeout=3.0):
    out = []
    while len(out) < n:
        m = await recv_json(ws, timeout)
        if m["svc"] == "chat":
            out.append(m)
    return out


def api(g, method, path, body=None):
    async def main():
        data = json.dumps(body).encode() if body is not None else None
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"http://127.0.0.1:{g.gw.api.port}{path}", data=data,
                                 headers={"Authorization": f"Bearer {KEY}"}) as r:
                return r.status, await r.json()
    return asyncio.run(main())


def test_offsets_from_redis_same_order_on_every_node(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "ch1")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, ja = await joined_now(alice, "lobby")
        _, jb = await joined_now(bob, "lobby")
        epoch = ja["data"]["epoch"]
        assert ja["data"] == {"offset": 0, "epoch": epoch} and len(epoch) == 12
        assert jb["data"] == {"offset": 0, "epoch": epoch}            # one room, one epoch, every node
        for i in range(30):                                           # both nodes publish, interleaved
            await send_json(alice, chat("lobby", f"a{i}"))
            await send_json(bob, chat("lobby", f"b{i}"))
        got = [await chats(ws, 60) for ws in (alice, bob)]
        for msgs in got:
            assert [m["offset"] for m in msgs] == list(range(1, 61))   # offset order, no gap, no duplicate
            assert {m["epoch"] for m in msgs} == {epoch}
            mine = [m["data"]["msg"] for m in msgs]
            assert [x for x in mine if x[0] == "a"] == [f"a{i}" for i in range(30)]   # per-sender order
            assert [x for x in mine if x[0] == "b"] == [f"b{i}" for i in range(30)]
        assert [m["data"]["msg"] for m in got[0]] == [m["data"]["msg"] for m in got[1]]   # the same order
        for ws in (alice, bob):
            await expect_silence(ws, 0.3)
        # a re-join of a live member: the position this node delivered, no replay
        _, again = await joined_now(bob, "lobby", {"offset": 60, "epoch": epoch})
        assert again["data"] == {"offset": 60, "epoch": epoch, "recovered": True}
        await alice.close()
        await bob.close()
    asyncio.run(main())


def test_reconnect_to_the_other_node_recovers_there(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "ch2")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(a.url(ticket="dev:bob", sid="s-bob"))
        await joined_now(alice, "r")
        _, j = await joined_now(bob, "r")
        epoch = j["data"]["epoch"]
        for i in range(5):
            await send_json(alice, chat("r", f"m{i}"))
        seen = await chats(bob, 5)
        assert seen[-1]["offset"] == 5
        await bob.close()                                   # bob's phone drops...
        for i in range(5, 12):
            await send_json(alice, chat("r", f"m{i}"))
        await chats(alice, 12)
        # ... and comes back on the other node
        bob2, _ = await connect_authed(b.url(ticket="dev:bob", sid="s-bob"))
        before, joined = await joined_now(bob2, "r", {"offset": 5, "epoch": epoch})
        assert [m["offset"] for m in before] == list(range(6, 13))
        assert [m["data"]["msg"] for m in before] == [f"m{i}" for i in range(5, 12)]
        assert joined["data"] == {"offset": 12, "epoch": epoch, "recovered": True}
        # live from there, once each
        await send_json(alice, chat("r", "live"))
        live = await chats(bob2, 1)
        assert live[0]["offset"] == 13
        await expect_silence(bob2, 0.3)
        # another epoch, or ahead: not recovered, the newest it can
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        before, joined = await joined_now(carol, "r", {"offset": 3, "epoch": "another-one1"})
        assert joined["data"] == {"offset": 13, "epoch": epoch, "recovered": False}
        assert [m["offset"] for m in before] == list(range(1, 14))
        dave, _ = await connect_authed(b.url(ticket="dev:dave"))
        before, joined = await joined_now(dave, "r", {"offset": 99, "epoch": epoch})
        assert joined["data"] == {"offset": 13, "epoch": epoch, "recovered": False}
        for ws in (alice, bob2, carol, dave):
            await ws.close()
    asyncio.run(main())


def test_history_outlives_members_and_is_trimmed_by_size(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "ch3", size=10)

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        _, j = await joined_now(alice, "t")
        epoch = j["data"]["epoch"]
        for i in range(25):
            await send_json(alice, chat("t", f"m{i}"))
        await chats(alice, 25)
        await alice.close()                                   # the room is empty everywhere
        await asyncio.sleep(0.1)
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        before, joined = await joined_now(bob, "t", {"offset": 20, "epoch": epoch})
        assert joined["data"] == {"offset": 25, "epoch": epoch, "recovered": True}
        assert [m["offset"] for m in before] == [21, 22, 23, 24, 25]
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        before, joined = await joined_now(carol, "t", {"offset": 2, "epoch": epoch})
        assert joined["data"] == {"offset": 25, "epoch": epoch, "recovered": False}   # trimmed by size
        assert [m["offset"] for m in before] == list(range(16, 26))                  # the newest `size`
        await bob.close()
        await carol.close()
    asyncio.run(main())
    # in Redis: a stream bounded by size, expiring ttl_ms after its newest message; the
    # record of epoch and top kept longer (max(ttl_ms, 24 h))
    assert redis_server.cmd("XLEN", "ch3:{acme}:hs:t") == 10
    assert 50_000 < redis_server.cmd("PTTL", "ch3:{acme}:hs:t") <= 60_000
    assert redis_server.cmd("HGET", "ch3:{acme}:hm:t", "s") == "25"
    assert redis_server.cmd("PTTL", "ch3:{acme}:hm:t") > 23 * 3600 * 1000


def test_ttl_applies_to_each_message_and_the_epoch_outlives_them(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "ch10", ttl=1000)

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        _, j = await joined_now(alice, "old")
        epoch = j["data"]["epoch"]
        for i in range(3):
            await send_json(alice, chat("old", f"m{i}"))
        await chats(alice, 3)
        await asyncio.sleep(0.6)
        await send_json(alice, chat("old", "m3"))
        await chats(alice, 1)
        await asyncio.sleep(0.6)                             # m0..m2 are older than ttl_ms, m3 is not
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        before, joined = await joined_now(bob, "old", {"offset": 1, "epoch": epoch})
        assert joined["data"] == {"offset": 4, "epoch": epoch, "recovered": False}
        assert [m["offset"] for m in before] == [4]
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        before, joined = await joined_now(carol, "old", {"offset": 3, "epoch": epoch})
        assert joined["data"] == {"offset": 4, "epoch": epoch, "recovered": True}
        assert [m["offset"] for m in before] == [4]
        await asyncio.sleep(1.1)                             # all expired: the epoch stays
        dave, _ = await connect_authed(b.url(ticket="dev:dave"))
        before, joined = await joined_now(dave, "old", {"offset": 4, "epoch": epoch})
        assert before == [] and joined["data"] == {"offset": 4, "epoch": epoch, "recovered": True}
        for ws in (alice, bob, carol, dave):
            await ws.close()
    asyncio.run(main())


def test_server_api_publish_and_history_read_the_stream(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "ch4")

    async def main():
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, j = await joined_now(bob, "news")
        epoch = j["data"]["epoch"]
        return bob, epoch

    async def rest(bob, epoch):
        got = await chats_any(bob, 3)
        assert [m["offset"] for m in got] == [1, 2, 3]
        await bob.close()

    async def chats_any(ws, n):
        out = []
        while len(out) < n:
            m = await recv_json(ws, 3.0)
            if m["svc"] == "svc":
                out.append(m)
        return out

    loop = asyncio.new_event_loop()
    bob, epoch = loop.run_until_complete(main())
    for i in range(3):                                     # through node A, which has no member in it
        status, out = api(a, "POST", "/v1/publish",
                          {"tenant": "acme", "room": "news", "svc": "svc", "type": "t", "data": {"i": i}})
        assert status == 200 and out["offset"] == i + 1 and out["epoch"] == epoch, out
    loop.run_until_complete(rest(bob, epoch))
    loop.close()
    status, out = api(b, "GET", "/v1/history?tenant=acme&room=news&since=1")
    assert status == 200
    assert out["epoch"] == epoch and out["offset"] == 3 and out["complete"] is True
    assert [m["data"]["i"] for m in out["messages"]] == [1, 2]
    assert [m["offset"] for m in out["messages"]] == [2, 3]
    status, out = api(a, "GET", f"/v1/history?tenant=acme&room=news&since=0&epoch=nope&limit=1")
    assert status == 200 and out["complete"] is False and len(out["messages"]) == 1


def test_a_node_that_missed_broker_messages_repairs_the_gap(gateway_factory, redis_server):
    """Node B's subscriber link is cut (CLIENT KILL): the messages A publishes meanwhile
    reach B's members from the stream, in order, once, and nobody is disconnected."""
    a, b = pair(gateway_factory, redis_server.url, "ch5")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        await joined_now(alice, "g")
        await joined_now(bob, "g")
        for i in range(5):
            await send_json(alice, chat("g", f"m{i}"))
        assert [m["offset"] for m in await chats(bob, 5)] == [1, 2, 3, 4, 5]
        kill_subscriber(redis_server, b.gw.cluster.node)
        for i in range(5, 40):
            await send_json(alice, chat("g", f"m{i}"))
            await asyncio.sleep(0.002)
        got = await chats(bob, 35, timeout=8.0)
        assert [m["offset"] for m in got] == list(range(6, 41))
        assert [m["data"]["msg"] for m in got] == [f"m{i}" for i in range(5, 40)]
        await expect_silence(bob, 0.3)
        assert (await chats(alice, 40))[-1]["offset"] == 40
        await alice.close()
        await bob.close()
    asyncio.run(main())
    m = scrape(b)
    assert sample(m, "wsprism_history_gaps_total", tenant="acme", outcome="repaired") >= 1
    assert sample(m, "wsprism_history_gaps_total", tenant="acme", outcome="lost") == 0
    assert sample(m, "wsprism_history_unnumbered_total", tenant="acme") == 0


def test_a_gap_larger_than_the_history_is_a_reported_jump(gateway_factory, redis_server):
    """The stream holds `size` messages: a node that missed more (its feed blinded here
    by dropping the room's channel from its table) sees the gap at the next message,
    delivers the newest the stream holds (a jump its members can see), counts the loss,
    and a join with `since` from before it hears `recovered: false`."""
    a, b = pair(gateway_factory, redis_server.url, "ch8", size=5)

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, j = await joined_now(alice, "g")
        await joined_now(bob, "g")
        epoch = j["data"]["epoch"]
        await send_json(alice, chat("g", "m0"))
        assert [m["offset"] for m in await chats(bob, 1)] == [1]
        broker = b.gw.cluster.broker
        channel = broker.room_channel("acme", "g")
        target = b.call(lambda: broker.targets.pop(channel))       # B misses what follows ...
        for i in range(1, 20):
            await send_json(alice, chat("g", f"m{i}"))
        assert (await chats(alice, 20))[-1]["offset"] == 20
        b.call(lambda: broker.targets.__setitem__(channel, target))
        await send_json(alice, chat("g", "m20"))                    # ... and sees offset 21 after 1
        got = await chats(bob, 5, timeout=8.0)
        assert [m["offset"] for m in got] == [17, 18, 19, 20, 21]  # the newest 5 the stream held
        await expect_silence(bob, 0.3)
        bob2, _ = await connect_authed(b.url(ticket="dev:bob2"))
        before, joined = await joined_now(bob2, "g", {"offset": 1, "epoch": epoch})
        assert joined["data"] == {"offset": 21, "epoch": epoch, "recovered": False}
        assert [m["offset"] for m in before] == [17, 18, 19, 20, 21]
        for ws in (alice, bob, bob2):
            await ws.close()
    asyncio.run(main())
    assert sample(scrape(b), "wsprism_history_gaps_total", tenant="acme", outcome="lost") == 1


def kill_subscriber(redis, node):
    """Cut one node's subscriber link (its command link stays)."""
    name = f"name=wsprism:{node}:sub"
    for line in redis.cmd("CLIENT", "LIST").splitlines():
        if name in line.split():
            cid = line.split()[0].partition("=")[2]
            assert redis.cmd("CLIENT", "KILL", "ID", cid) == 1
            return
    raise AssertionError(f"no subscriber link for node {node}")


def test_live_traffic_during_cross_node_joins_arrives_once_in_order(gateway_factory, redis_server):
    """While node A publishes without pause, sessions join on node B with `since`: each
    gets every offset after its `since` exactly once, in order, the replay before
    `joined` and the rest live after it (the read and the feed merged by offset)."""
    a, b = pair(gateway_factory, redis_server.url, "ch6")
    total = 300

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        watcher, _ = await connect_authed(b.url(ticket="dev:watcher"))    # B follows the room
        _, j = await joined_now(alice, "busy")
        epoch = j["data"]["epoch"]
        await joined_now(watcher, "busy")

        async def talk():
            for i in range(total):
                await send_json(alice, chat("busy", f"m{i}"))
                await asyncio.sleep(0.005)

        talker = asyncio.create_task(talk())
        seen = 0
        joiners = []
        for k in range(6):
            while seen < 30 * (k + 1):                    # let the room move on
                seen = (await chats(watcher, 1))[0]["offset"]
            ws, _ = await connect_authed(b.url(ticket=f"dev:joiner{k}"))
            since = max(0, seen - 15)
            before, joined = await joined_now(ws, "busy", {"offset": since, "epoch": epoch})
            assert joined["data"]["recovered"] is True and joined["data"]["epoch"] == epoch
            top = joined["data"]["offset"]
            assert [m["offset"] for m in before] == list(range(since + 1, top + 1))
            joiners.append((ws, top))
        await talker
        for ws, top in joiners:                           # then live, each offset once
            rest = await chats(ws, total - top, timeout=8.0)
            assert [m["offset"] for m in rest] == list(range(top + 1, total + 1))
            await expect_silence(ws, 0.05)
            await ws.close()
        for ws in (alice, watcher):
            await ws.close()
    asyncio.run(main())


def test_redis_lost_then_restarted_empty(gateway_factory, redis_factory):
    """Broker down: publishes are delivered on their node, unnumbered; a join with `since`
    answers unrecovered from what the node knows. Redis back empty: the room's history
    is gone, a new epoch starts at offset 1 on every node."""
    r = redis_factory()
    a, b = pair(gateway_factory, r.url, "ch7")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, j = await joined_now(alice, "x")
        await joined_now(bob, "x")
        epoch = j["data"]["epoch"]
        for i in range(3):
            await send_json(alice, chat("x", f"m{i}"))
        for ws in (alice, bob):
            assert [m["offset"] for m in await chats(ws, 3)] == [1, 2, 3]
        r.kill()
        wait(lambda: not a.gw.cluster.up and not b.gw.cluster.up)
        await send_json(alice, chat("x", "during"))
        (during,) = await chats(alice, 1)
        assert during["data"]["msg"] == "during" and "offset" not in during and "epoch" not in during
        await expect_silence(bob, 0.2)                      # the other node never hears it
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        before, joined = await joined_now(carol, "x", {"offset": 1, "epoch": epoch})
        assert before == [] and joined["data"] == {"offset": 3, "epoch": epoch, "recovered": False}
        # the server API: a publish has no position; the history cannot be read
        status, out = await asyncio.to_thread(api, a, "POST", "/v1/publish",
                                              {"tenant": "acme", "room": "x", "svc": "svc", "type": "t"})
        assert status == 200 and "offset" not in out and "epoch" not in out, out
        (pushed,) = [m for m in [await recv_json(alice)] if m["svc"] == "svc"]
        assert "offset" not in pushed
        status, out = await asyncio.to_thread(api, a, "GET", "/v1/history?tenant=acme&room=x&since=0")
        assert status == 503 and out == {"error": "history is unavailable: the broker is down"}, out
        r.start()
        wait(lambda: a.gw.cluster.up and b.gw.cluster.up)
        await asyncio.sleep(0.2)
        await send_json(alice, chat("x", "after"))
        for ws in (alice, bob, carol):
            (m,) = await chats(ws, 1)
            assert m["data"]["msg"] == "after" and m["offset"] == 1 and m["epoch"] != epoch
        new = m["epoch"]
        dave, _ = await connect_authed(a.url(ticket="dev:dave"))
        before, joined = await joined_now(dave, "x", {"offset": 3, "epoch": epoch})
        assert joined["data"] == {"offset": 1, "epoch": new, "recovered": False}
        assert [m["offset"] for m in before] == [1]
        for ws in (alice, bob, carol, dave):
            await ws.close()
    asyncio.run(main())
    assert b.tenant("acme").history.outcomes["unavailable"] == 1


def test_bad_since_with_a_broker_is_bad_request_and_the_session_stays(gateway_factory, redis_server):
    a, _ = pair(gateway_factory, redis_server.url, "ch9")

    async def main():
        ws, _ = await connect_authed(a.url(ticket="dev:alice"))
        for since in ("17", {"offset": -1, "epoch": "e"}, {"offset": 1.5, "epoch": "e"},
                      {"offset": 2**64, "epoch": "e"}, {"offset": 1, "epoch": 5}):
            await send_json(ws, join_msg("b", since))
            m = await recv_json(ws)
            assert m["svc"] == "sys" and m["type"] == "error" and m["data"]["code"] == "BAD_REQUEST", m
        _, joined = await joined_now(ws, "b")                        # still there
        assert joined["data"]["offset"] == 0
        await ws.close()
    asyncio.run(main())


def test_a_node_cut_from_redis_ends_the_history_it_could_not_number(gateway_factory, redis_server):
    """Only node A loses Redis (a proxy in front of it is cut): what A publishes meanwhile
    reaches A's members unnumbered and nobody else; B goes on numbering. When A is back,
    its members get B's messages of the outage from the stream (in order, once), then A
    ends the room's history: every join with `since` from before hears `recovered:
    false`, because A's messages of the outage are in no history."""
    from tests.redisproc import RedisProxy

    proxy = RedisProxy(redis_server.port)
    os.environ[ENV] = KEY
    try:
        a = gateway_factory(YAML.format(url=proxy.url, prefix="ch11", size=100, ttl=60000))
        b = gateway_factory(YAML.format(url=redis_server.url, prefix="ch11", size=100, ttl=60000))
    finally:
        del os.environ[ENV]
    wait(lambda: a.gw.cluster.up and b.gw.cluster.up)

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, j = await joined_now(alice, "p")
        await joined_now(bob, "p")
        epoch = j["data"]["epoch"]
        await send_json(alice, chat("p", "before"))
        for ws in (alice, bob):
            assert [m["offset"] for m in await chats(ws, 1)] == [1]
        proxy.cut()
        wait(lambda: not a.gw.cluster.up)
        await send_json(alice, chat("p", "a-during"))
        (m,) = await chats(alice, 1)
        assert m["data"]["msg"] == "a-during" and "offset" not in m
        for i in range(3):
            await send_json(bob, chat("p", f"b-during{i}"))
        assert [m["offset"] for m in await chats(bob, 3)] == [2, 3, 4]
        await expect_silence(bob, 0.2)                     # A's message never reached B
        proxy.restore()
        wait(lambda: a.gw.cluster.up, timeout=8)
        got = await chats(alice, 3, timeout=5)             # the outage's gap, from the stream
        assert [(m["data"]["msg"], m["offset"]) for m in got] == [(f"b-during{i}", i + 2) for i in range(3)]
        wait(lambda: a.tenant("acme").history.resets == 1)
        # a client that dropped before the outage cannot recover it: A's message is lost to it
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        before, joined = await joined_now(carol, "p", {"offset": 1, "epoch": epoch})
        assert joined["data"]["recovered"] is False and joined["data"]["epoch"] != epoch
        new = joined["data"]["epoch"]
        await send_json(bob, chat("p", "after"))
        for ws in (alice, bob, carol):
            (m,) = await chats(ws, 1)
            assert (m["data"]["msg"], m["offset"], m["epoch"]) == ("after", 1, new)
        for ws in (alice, bob, carol):
            await ws.close()
    try:
        asyncio.run(main())
    finally:
        proxy.stop()
    assert sample(scrape(a), "wsprism_history_epoch_resets_total", tenant="acme") == 1
    assert sample(scrape(a), "wsprism_history_unnumbered_total", tenant="acme") == 1


def test_a_history_publish_past_the_backlog_cap_is_delivered_here_unnumbered(gateway_factory, redis_server,
                                                                              monkeypatch):
    """The command link's backlog past RELIABLE_CAP (Redis not keeping up): a history
    publish is not queued (it would grow the backlog without bound); it reaches this node's
    members unnumbered, as with the broker down, and the room's history ends (a new epoch)."""
    import wsprism.broker.redis as broker_redis

    a, b = pair(gateway_factory, redis_server.url, "ch12")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, j = await joined_now(alice, "q")
        await joined_now(bob, "q")
        epoch = j["data"]["epoch"]
        await send_json(alice, chat("q", "m0"))
        for ws in (alice, bob):
            assert [m["offset"] for m in await chats(ws, 1)] == [1]
        monkeypatch.setattr(broker_redis, "RELIABLE_CAP", -1)     # every backlog is past it
        await send_json(alice, chat("q", "over"))
        (m,) = await chats(alice, 1)
        assert m["data"]["msg"] == "over" and "offset" not in m and "epoch" not in m
        await expect_silence(bob, 0.2)
        monkeypatch.undo()
        history = a.tenant("acme").history
        assert history.unnumbered == 1 and history.resets == 1      # the room's history ended
        await send_json(alice, chat("q", "after"))
        for ws in (alice, bob):
            (m,) = await chats(ws, 1)
            assert (m["data"]["msg"], m["offset"]) == ("after", 1) and m["epoch"] != epoch
        await alice.close()
        await bob.close()
    asyncio.run(main())


def test_a_stream_left_without_its_meta_does_not_block_the_room(gateway_factory, redis_server):
    """The room's meta is gone (evicted) but its stream is left; a join's read makes a new
    meta (a new epoch, top 0): the next publish starts the new epoch at offset 1 and drops
    the old stream, instead of failing on entry id 1-0 (and losing every message until the
    old stream expired)."""
    a, b = pair(gateway_factory, redis_server.url, "ch13")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        _, j = await joined_now(alice, "s")
        epoch = j["data"]["epoch"]
        for i in range(3):
            await send_json(alice, chat("s", f"m{i}"))
        assert [m["offset"] for m in await chats(alice, 3)] == [1, 2, 3]
        assert redis_server.cmd("DEL", "ch13:{acme}:hm:s") == 1          # evicted; the stream stays
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        _, joined = await joined_now(carol, "s", {"offset": 3, "epoch": epoch})
        new = joined["data"]["epoch"]
        assert joined["data"] == {"offset": 0, "epoch": new, "recovered": False} and new != epoch
        for i in range(2):
            await send_json(alice, chat("s", f"n{i}"))
        for ws in (alice, carol):
            got = await chats(ws, 2)
            assert [(m["data"]["msg"], m["offset"], m["epoch"]) for m in got] == [("n0", 1, new), ("n1", 2, new)]
        await alice.close()
        await carol.close()
    asyncio.run(main())
    assert redis_server.cmd("XLEN", "ch13:{acme}:hs:s") == 2
    assert redis_server.cmd("HGET", "ch13:{acme}:hm:s", "s") == "2"


def test_a_history_step_redis_refuses_is_delivered_here_unnumbered_and_ends_the_epoch(gateway_factory,
                                                                                      redis_server):
    """A history step Redis answers with an error (here the room's stream is a string:
    WRONGTYPE; in production -OOM or NOSCRIPT) published nothing: the publisher's members
    get the message unnumbered (not lost for everyone), and the node ends the room's
    history, so a join with `since` from before hears `recovered: false`."""
    a, b = pair(gateway_factory, redis_server.url, "ch14")

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        _, j = await joined_now(alice, "w")
        await joined_now(bob, "w")
        epoch = j["data"]["epoch"]
        await send_json(alice, chat("w", "m0"))
        for ws in (alice, bob):
            assert [m["offset"] for m in await chats(ws, 1)] == [1]
        redis_server.cmd("DEL", "ch14:{acme}:hs:w")
        redis_server.cmd("SET", "ch14:{acme}:hs:w", "not a stream")
        await send_json(alice, chat("w", "refused"))
        (m,) = await chats(alice, 1)
        assert m["data"]["msg"] == "refused" and "offset" not in m
        await expect_silence(bob, 0.2)
        wait(lambda: a.tenant("acme").history.resets == 1)
        assert a.tenant("acme").history.unnumbered == 1
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        _, joined = await joined_now(carol, "w", {"offset": 0, "epoch": epoch})   # a read (not B's newest)
        assert joined["data"]["recovered"] is False and joined["data"]["epoch"] != epoch
        new = joined["data"]["epoch"]
        await send_json(alice, chat("w", "after"))
        for ws in (alice, bob, carol):
            (m,) = await chats(ws, 1)
            assert (m["data"]["msg"], m["offset"], m["epoch"]) == ("after", 1, new)
        for ws in (alice, bob, carol):
            await ws.close()
    asyncio.run(main())
