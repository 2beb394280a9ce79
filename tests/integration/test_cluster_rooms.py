"""Rooms across gateways sharing a Redis (SPEC 11): fan-out of both lanes and of service
publishes, presence and its events, room limits exact across nodes, a chat sent right
after a join, the server API, and memberships made during an outage. Two gateways in
this process (each its own loop thread and broker node, real sockets, a real
redis-server)."""
import asyncio
import json
import time

import aiohttp
import pytest

from tests.client import (
    connect_authed, error_of, expect_silence, joined, left, recv, recv_json, request, send_json, until,
)

KEY = "cluster-rooms-api-key-0123456789abcdef"

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  {api}
broker: {{url: "{url}", prefix: "{prefix}", lease_ms: 2000}}
tenants:
  - id: {tenant}
    limits: {{max_users_per_room: {users}, max_rooms_total: {rooms}, max_rooms_per_user: {per_user}}}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*"]
      presence_events: {events}
      sessions: {{max_sessions_per_user: 8}}{history}
"""


def pair(gateway_factory, url, prefix, users=0, rooms=0, per_user=0, api=False, tenant="acme", events=False,
         history=False):
    out = []
    for _ in range(2):
        api_cfg = ('api: {listen: "127.0.0.1:0", keys: {%s: {env: WSPRISM_CLUSTER_KEY}}}' % tenant) if api else ""
        text = YAML.format(url=url, prefix=prefix, users=users, rooms=rooms, per_user=per_user, api=api_cfg,
                           tenant=tenant, events="true" if events else "false",
                           history="\n      history: {size: 100, ttl_ms: 60000}" if history else "")
        out.append(gateway_factory(text))
    wait(lambda: all(g.gw.cluster.up for g in out))
    return out


def wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)




async def join(ws, room):
    assert await request(ws, {"v": 1, "svc": "room", "type": "join", "room": room}) == joined(room)


async def ask(ws, obj, type_="presence") -> dict:
    """Send `obj`, return the answer of that type or an error (skipping presence events)."""
    await send_json(ws, obj)
    return await until(ws, lambda m: m["type"] in (type_, "error"))


PRESENCE = {"v": 1, "svc": "room", "type": "presence"}


def chat(room, text, seq=None):
    msg = {"v": 1, "svc": "chat", "type": "send", "room": room, "data": {"msg": text}}
    if seq is not None:
        msg.update(seq=seq, flags=4)
    return msg


def is_chat(msg):
    return msg["svc"] == "chat"


def presence_event(kind, user):
    return lambda m: m["svc"] == "room" and m["type"] == kind and m["data"] == {"user": user}


def test_chat_reaches_every_node_once_in_order_with_presence(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cr1", events=True)

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        carol, _ = await connect_authed(b.url(ticket="dev:carol"))
        await join(bob, "lobby")
        await join(carol, "lobby")
        await until(bob, presence_event("user_joined", "carol"))             # same node
        await join(alice, "lobby")
        # alice's arrival is announced on the other node (published by the join script)
        for ws in (bob, carol):
            await until(ws, presence_event("user_joined", "alice"))
        # exact presence over both nodes
        p = await ask(alice, {**PRESENCE, "room": "lobby"})
        assert p["type"] == "presence" and p["data"]["count"] == 3
        assert sorted(p["data"]["users"]) == ["alice", "bob", "carol"]
        for i in range(50):
            await send_json(alice, chat("lobby", f"m{i}"))
        await send_json(bob, chat("lobby", "from-b"))
        for ws in (alice, bob, carol):
            got = [m["data"]["msg"] for m in [await until(ws, is_chat) for _ in range(51)]]
            mine = [x for x in got if x != "from-b"]
            assert mine == [f"m{i}" for i in range(50)], got          # per-sender order, once each
            assert got.count("from-b") == 1
            await expect_silence(ws, 0.3)                              # nothing twice
        # the user's last session anywhere leaving: user_left on the other node
        assert await request(alice, {"v": 1, "svc": "room", "type": "leave", "room": "lobby"}) == left("lobby")
        for ws in (bob, carol):
            assert (await until(ws, lambda m: m["type"] == "user_left"))["data"] == {"user": "alice"}
        for ws in (alice, bob, carol):
            await ws.close()

    asyncio.run(main())


def test_a_second_session_of_a_user_elsewhere_announces_nothing(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cr2", events=True)

    async def main():
        watcher, _ = await connect_authed(a.url(ticket="dev:watcher"))
        await join(watcher, "r")
        one, _ = await connect_authed(a.url(ticket="dev:dan", sid="one"))
        two, _ = await connect_authed(b.url(ticket="dev:dan", sid="two"))
        await until(watcher, presence_event("user_joined", "watcher"))
        await join(one, "r")
        await until(watcher, presence_event("user_joined", "dan"))
        await join(two, "r")                                   # dan is in the room already
        await expect_silence(watcher, 0.3)
        await request(one, {"v": 1, "svc": "room", "type": "leave", "room": "r"})
        await expect_silence(watcher, 0.3)                     # still there through node b
        await two.close()
        await until(watcher, presence_event("user_left", "dan"))
        for ws in (watcher, one):
            await ws.close()

    asyncio.run(main())


def test_a_chat_sent_right_after_a_join_waits_for_it(gateway_factory, redis_server):
    """No waiting for `joined`: the join goes to Redis, the chat (and a ping) behind it are
    held and handled once the join is answered, in order, and reach the other node; a
    message the allowlist refuses meanwhile is answered in its turn too."""
    a, b = pair(gateway_factory, redis_server.url, "cr3", events=True)

    async def main():
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        await join(bob, "fast")
        alice, _ = await connect_authed(a.url(ticket="dev:alice"))
        await send_json(alice, {"v": 1, "svc": "room", "type": "join", "room": "fast", "seq": 1, "flags": 4})
        await send_json(alice, chat("fast", "right away", seq=2))
        await send_json(alice, {"v": 1, "svc": "echo", "type": "x", "seq": 4})    # not in the allowlist
        await send_json(alice, {"v": 1, "svc": "sys", "type": "ping", "seq": 3})
        got = [await recv_json(alice) for _ in range(7)]
        assert got[0] == joined("fast")
        # answered later: its ack with `joined`, then the room hears of alice
        assert got[1] == {"v": 1, "svc": "sys", "type": "ack", "seq": 1}
        assert got[2]["type"] == "user_joined" and got[2]["data"] == {"user": "alice"}
        assert got[3]["svc"] == "chat" and got[3]["data"] == {"from": "alice", "msg": "right away"}
        assert got[4] == {"v": 1, "svc": "sys", "type": "ack", "seq": 2}
        assert error_of(got[5]) == "NOT_ALLOWED" and got[5]["seq"] == 4    # refused in its turn
        assert got[6]["type"] == "pong"
        assert (await until(bob, is_chat))["data"]["msg"] == "right away"
        # a join refused by Redis: the held messages after it still run, with their errors
        for ws in (alice, bob):
            await ws.close()

    asyncio.run(main())


def test_room_limits_are_exact_across_nodes(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cr4", users=2, rooms=2, per_user=2)

    async def main():
        u1, _ = await connect_authed(a.url(ticket="dev:u1"))
        u2, _ = await connect_authed(b.url(ticket="dev:u2"))
        u3, _ = await connect_authed(a.url(ticket="dev:u3"))
        u1b, _ = await connect_authed(b.url(ticket="dev:u1", sid="second"))
        await join(u1, "r1")
        await join(u2, "r1")
        # node a holds one user of r1, the tenant two: refused for every node
        refusal = await request(u3, {"v": 1, "svc": "room", "type": "join", "room": "r1", "seq": 7})
        assert refusal["type"] == "error" and refusal["seq"] == 7
        assert refusal["data"] == {"code": "RESOURCE_EXHAUSTED", "msg": "max_users_per_room reached"}
        await join(u1b, "r1")                                  # a user already in is never refused
        await join(u3, "r2")                                   # second room of the tenant
        refusal = await request(u2, {"v": 1, "svc": "room", "type": "join", "room": "r3"})
        assert refusal["data"]["msg"] == "max_rooms_total reached"
        await join(u1, "r2")                                   # u1: r1, r2
        # u1's third room, asked from the other node (rooms per user count every node)
        await request(u3, {"v": 1, "svc": "room", "type": "leave", "room": "r2"})
        refusal = await request(u1b, {"v": 1, "svc": "room", "type": "join", "room": "r9"})
        assert refusal["data"]["msg"] in ("max_rooms_per_user reached", "max_rooms_total reached")
        # the session stays and works
        assert (await request(u3, {"v": 1, "svc": "sys", "type": "ping"}))["type"] == "pong"
        for ws in (u1, u2, u3, u1b):
            await ws.close()

    asyncio.run(main())


def test_a_node_subscribes_only_rooms_it_has_members_in(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cr5")

    async def main():
        x, _ = await connect_authed(a.url(ticket="dev:x"))
        y, _ = await connect_authed(b.url(ticket="dev:y"))
        await join(x, "only-a")
        await join(y, "both")
        await join(x, "both")
        numsub = redis_server.cmd("PUBSUB", "NUMSUB", "cr5:{acme}:c:only-a", "cr5:{acme}:c:both")
        assert numsub == ["cr5:{acme}:c:only-a", 1, "cr5:{acme}:c:both", 2]
        assert redis_server.cmd("PUBSUB", "NUMPAT") == 0
        # a publish to a room only node a has is never delivered to node b
        before = b.gw.cluster.broker.stats.received[0]
        await send_json(x, chat("only-a", "here"))
        assert (await recv_json(x))["data"]["msg"] == "here"
        await asyncio.sleep(0.2)
        assert b.gw.cluster.broker.stats.received[0] == before
        await x.close()
        await asyncio.sleep(1.5)                              # the linger after the last member
        numsub = redis_server.cmd("PUBSUB", "NUMSUB", "cr5:{acme}:c:only-a", "cr5:{acme}:c:both")
        assert numsub == ["cr5:{acme}:c:only-a", 0, "cr5:{acme}:c:both", 1]
        await y.close()

    asyncio.run(main())


def test_hot_lane_across_nodes_packed_and_lossy(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cr6")

    async def main():
        sender, _ = await connect_authed(a.url(ticket="dev:s"))
        peer, _ = await connect_authed(b.url(ticket="dev:p"))
        await join(peer, "game")
        await join(sender, "game")
        pub0 = a.gw.cluster.broker.stats.published_frames[1]
        msgs0 = a.gw.cluster.broker.stats.published[1]
        frames = [bytes((1, 1, 0)) + b"tick%03d" % i for i in range(40)]
        for f in frames:
            await sender.send(f)
        got = [await recv(peer) for _ in range(40)]
        assert got == frames                                   # relayed in order across nodes
        assert [await recv(sender) for _ in range(40)] == frames
        stats = a.gw.cluster.broker.stats
        assert stats.published_frames[1] - pub0 == 40
        assert stats.published[1] - msgs0 < 40                 # packed: fewer publishes than frames
        for ws in (sender, peer):
            await ws.close()

    asyncio.run(main())


def test_service_publishes_reach_every_node(gateway_factory, redis_server):
    a, b = pair(gateway_factory, redis_server.url, "cr7")

    async def main():
        here, _ = await connect_authed(a.url(ticket="dev:h"))
        there, _ = await connect_authed(b.url(ticket="dev:t"))
        await join(here, "news")
        await join(there, "news")
        tenant = a.tenant()
        assert a.call(tenant.publish, "news", "feed", "item", {"n": 1}) == 1     # this node's count
        assert a.call(tenant.publish_hot, "news", bytes((1, 9, 0)) + b"hot") == 1
        for ws in (here, there):
            assert await recv_json(ws) == {"v": 1, "svc": "feed", "type": "item", "room": "news", "data": {"n": 1}}
            assert await recv(ws) == bytes((1, 9, 0)) + b"hot"
        for ws in (here, there):
            await ws.close()

    asyncio.run(main())


def test_server_api_spans_every_node(gateway_factory, redis_server, monkeypatch):
    monkeypatch.setenv("WSPRISM_CLUSTER_KEY", KEY)
    a, b = pair(gateway_factory, redis_server.url, "cr8", api=True)
    auth = {"Authorization": f"Bearer {KEY}"}

    async def main():
        a1, _ = await connect_authed(a.url(ticket="dev:ann", sid="1"))
        b1, _ = await connect_authed(b.url(ticket="dev:ann", sid="2"))
        b2, _ = await connect_authed(b.url(ticket="dev:ben"))
        for ws in (a1, b1, b2):
            await join(ws, "hall")
        await asyncio.sleep(0.1)            # sizes reach Redis within a loop turn
        api = f"http://127.0.0.1:{a.gw.api.port}"
        async with aiohttp.ClientSession(headers=auth) as http:
            async def post(path, body):
                async with http.post(api + path, json=body) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            async def get(path):
                async with http.get(api + path) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            out = await post("/v1/publish", {"tenant": "acme", "room": "hall", "svc": "news", "type": "x", "data": 1})
            assert out == {"delivered": 3}
            for ws in (a1, b1, b2):
                assert (await recv_json(ws))["svc"] == "news"
            out = await post("/v1/send", {"tenant": "acme", "user": "ann", "svc": "dm", "type": "y"})
            assert out == {"delivered": 2}
            for ws in (a1, b1):
                assert (await recv_json(ws)) == {"v": 1, "svc": "dm", "type": "y"}
            await expect_silence(b2, 0.2)
            p = await get("/v1/presence?tenant=acme&room=hall")
            assert p["count"] == 2 and sorted(p["users"]) == ["ann", "ben"]
            p = await get("/v1/presence?tenant=acme&room=hall&limit=0")   # the count over both nodes alone
            assert p == {"count": 2, "users": []}
            assert await get("/v1/stats?tenant=acme") == {"sessions": 3, "rooms": 1, "users": 2}
            scale = (await get("/v1/admin/state?tenant=acme"))["process"]["scale_out"]
            assert scale["mode"] == "broker" and scale["workers"] == 1 and scale["worker"] is None
            assert scale["broker"]["up"] and scale["broker"]["state"] == "up"
            assert scale["broker"]["node"] == a.gw.cluster.node and scale["broker"]["subscriptions"] == 1
            assert scale["summary"].startswith("one process, broker up at redis://127.0.0.1:")
            out = await post("/v1/disconnect", {"tenant": "acme", "user": "ann", "code": 4321, "reason": "bye"})
            assert out == {"delivered": 2}
        from tests.client import expect_close
        assert await expect_close(a1) == 4321
        assert await expect_close(b1) == 4321
        await b2.close()

    asyncio.run(main())


def test_memberships_made_during_an_outage_are_reconciled(gateway_factory, redis_factory):
    """Redis dies; each node lets a different user into a room capped at 1 (its own counts).
    Redis comes back empty: both re-register, the one registered second is refused:
    RESOURCE_EXHAUSTED and `left`, and the room's other member hears user_left."""
    r = redis_factory()
    a, b = pair(gateway_factory, r.url, "cr9", users=1)

    async def main():
        x, _ = await connect_authed(a.url(ticket="dev:x"))
        y, _ = await connect_authed(b.url(ticket="dev:y"))
        r.kill()
        wait(lambda: not a.gw.cluster.up and not b.gw.cluster.up)
        await join(x, "solo")
        await asyncio.sleep(0.05)
        await join(y, "solo")
        # local delivery goes on meanwhile
        await send_json(x, chat("solo", "alone"))
        assert (await recv_json(x))["data"]["msg"] == "alone"
        r.start()

        async def fate(ws):
            try:
                err = await recv_json(ws, 6)
            except asyncio.TimeoutError:
                return None
            return err, await recv_json(ws)

        results = await asyncio.gather(fate(x), fate(y))
        undone = [res for res in results if res is not None]
        assert len(undone) == 1, results
        err, gone = undone[0]
        assert err["type"] == "error" and err["data"]["code"] == "RESOURCE_EXHAUSTED"
        assert err["data"]["msg"].startswith("max_users_per_room reached")
        assert gone == left("solo")
        assert r.cmd("HLEN", "cr9:{acme}:r:solo") == 1
        stats = a.gw.cluster.broker.stats.reconciled
        stats_b = b.gw.cluster.broker.stats.reconciled
        assert stats.get(("membership", "refused"), 0) + stats_b.get(("membership", "refused"), 0) == 1
        # cross-node delivery is back
        keeper = x if results[0] is None else y
        other_gw = b if keeper is x else a
        watcher, _ = await connect_authed(other_gw.url(ticket="dev:w"))
        refusal = await request(watcher, {"v": 1, "svc": "room", "type": "join", "room": "solo"})
        assert error_of(refusal) == "RESOURCE_EXHAUSTED"
        for ws in (x, y, watcher):
            await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("room", ["a:b@c.d-e_f", "x" * 128, "{acme}:c:evil"])
def test_room_names_that_look_like_keys_stay_in_their_room(gateway_factory, redis_server, room):
    a, b = pair(gateway_factory, redis_server.url, "cr10", tenant="t.e-s_t")

    async def main():
        one, _ = await connect_authed(a.url(tenant="t.e-s_t", ticket="dev:one"))
        two, _ = await connect_authed(b.url(tenant="t.e-s_t", ticket="dev:two"))
        other, _ = await connect_authed(b.url(tenant="t.e-s_t", ticket="dev:three"))
        if not room.startswith("{"):
            await join(one, room)
            await join(two, room)
            await join(other, room + "x" if len(room) < 128 else "y")
            await send_json(one, chat(room, "hello"))
            assert (await until(two, is_chat))["data"]["msg"] == "hello"
            await expect_silence(other, 0.3)
        else:                                # braces are not a room name (SPEC 14): refused first
            assert error_of(await request(one, {"v": 1, "svc": "room", "type": "join", "room": room})) == "BAD_REQUEST"
        for ws in (one, two, other):
            await ws.close()

    asyncio.run(main())


def test_a_room_on_one_node_costs_redis_nothing_per_message(gateway_factory, redis_server):
    """While no other node has members in a room, its messages are not published at all
    (room affinity keeps game rooms off Redis); a member arriving on another node gets
    what is sent after its `joined`, and once it leaves the publishes stop again."""
    a, b = pair(gateway_factory, redis_server.url, "cr11")
    sa = a.gw.cluster.broker.stats

    def calls():
        info = redis_server.cmd("INFO", "commandstats")
        line = [ln for ln in info.splitlines() if ln.startswith("cmdstat_publish:")]
        return int(line[0].split("calls=")[1].split(",")[0]) if line else 0

    async def main():
        p1, _ = await connect_authed(a.url(ticket="dev:p1"))
        p2, _ = await connect_authed(a.url(ticket="dev:p2"))
        await join(p1, "game")
        await join(p2, "game")
        before, local0, pub0 = calls(), sa.local_frames[:], sa.published[:]
        for i in range(20):
            await p1.send(bytes((1, 1, 0)) + b"f%d" % i)
            await send_json(p1, chat("game", f"c{i}"))
        for _ in range(40):
            await recv(p2)
        assert sa.published == pub0                                 # nothing went to Redis:
        assert calls() - before <= 2                                # (but a node's self-probe, on a slow run)
        assert sa.local_frames[0] - local0[0] == 20 and sa.local_frames[1] - local0[1] == 20
        watcher, _ = await connect_authed(b.url(ticket="dev:w"))
        await join(watcher, "game")
        await p1.send(bytes((1, 1, 0)) + b"after")
        await send_json(p1, chat("game", "after"))
        assert await recv(watcher) == bytes((1, 1, 0)) + b"after"
        assert (await recv_json(watcher))["data"]["msg"] == "after"
        assert await request(watcher, {"v": 1, "svc": "room", "type": "leave", "room": "game"}) == left("game")
        await asyncio.sleep(0.2)                                    # node a hears 'X'
        published = sa.published_frames[:]
        await send_json(p1, chat("game", "alone again"))
        await until(p2, lambda m: m.get("data", {}).get("msg") == "alone again")
        await asyncio.sleep(0.05)
        assert sa.published_frames == published
        for ws in (p1, p2, watcher):
            await ws.close()

    asyncio.run(main())


def test_both_lanes_keep_the_senders_order_across_nodes(gateway_factory, redis_server):
    """Chat and Hot Lane frames sent one after the other in one burst reach a member on
    the other node in the order sent (the packs keep runs of one lane in order)."""
    a, b = pair(gateway_factory, redis_server.url, "cr12")

    async def main():
        sender, _ = await connect_authed(a.url(ticket="dev:s"))
        peer, _ = await connect_authed(b.url(ticket="dev:p"))
        await join(peer, "mix")
        await join(sender, "mix")
        expected = []
        for i in range(30):
            if i % 3 == 2:
                await send_json(sender, chat("mix", f"c{i}"))
                expected.append(f"c{i}")
            else:
                await sender.send(bytes((1, 1, 0)) + b"h%d" % i)
                expected.append(f"h{i}")
        got = []
        for _ in range(30):
            raw = await recv(peer)
            got.append(raw[3:].decode() if isinstance(raw, bytes) else json.loads(raw)["data"]["msg"])
        assert got == expected
        for ws in (sender, peer):
            await ws.close()

    asyncio.run(main())


def test_history_with_a_broker_is_shared_by_the_nodes(gateway_factory, redis_server):
    """History in Redis (cluster_history.py; more in test_cluster_history.py): both nodes'
    messages get one room's offsets and epoch, and a client back on its node recovers
    the other node's messages too."""
    a, b = pair(gateway_factory, redis_server.url, "cr13", history=True)

    async def main():
        alice, _ = await connect_authed(a.url(ticket="dev:alice", sid="t1"))
        bob, _ = await connect_authed(b.url(ticket="dev:bob"))
        ja = await request(alice, {"v": 1, "svc": "room", "type": "join", "room": "h"})
        epoch = ja["data"]["epoch"]
        assert (await request(bob, {"v": 1, "svc": "room", "type": "join", "room": "h"}))["data"]["epoch"] == epoch
        await send_json(alice, chat("h", "from a"))
        mine = await until(alice, is_chat)
        assert (mine["offset"], mine["epoch"]) == (1, epoch)
        await send_json(bob, chat("h", "from b"))
        theirs = await until(alice, is_chat)
        assert (theirs["data"]["msg"], theirs["offset"], theirs["epoch"]) == ("from b", 2, epoch)
        await alice.close()
        alice, _ = await connect_authed(a.url(ticket="dev:alice", sid="t1"))
        await send_json(alice, {"v": 1, "svc": "room", "type": "join", "room": "h",
                                "data": {"since": {"offset": 0, "epoch": epoch}}})
        replayed = [await recv_json(alice), await recv_json(alice)]
        assert [(m["data"]["msg"], m["offset"]) for m in replayed] == [("from a", 1), ("from b", 2)]
        answer = await recv_json(alice)
        assert answer["type"] == "joined" and answer["data"] == {"offset": 2, "epoch": epoch, "recovered": True}
        assert a.gw.tenants["acme"].history.outcomes["recovered"] == 1
        for ws in (alice, bob):
            await ws.close()

    asyncio.run(main())


def test_a_session_leaving_while_its_users_other_join_is_in_flight_keeps_the_membership(
        gateway_factory, redis_server):
    """Two sessions of one user on one node join a room at once (both go to Redis); the
    first leaves as soon as it is in, before the second's answer is applied: the
    membership stays in Redis (the user still counts toward max_users_per_room)."""
    a, b = pair(gateway_factory, redis_server.url, "cr14", users=1)

    async def main():
        one, _ = await connect_authed(a.url(ticket="dev:u", sid="one"))
        two, _ = await connect_authed(a.url(ticket="dev:u", sid="two"))
        other, _ = await connect_authed(b.url(ticket="dev:v"))
        for i in range(5):
            room = f"r{i}"
            msg = {"v": 1, "svc": "room", "type": "join", "room": room}

            async def join_then_leave():
                await send_json(one, msg)
                await send_json(one, {"v": 1, "svc": "room", "type": "leave", "room": room})

            await asyncio.gather(join_then_leave(), send_json(two, msg))
            assert await recv_json(one) == joined(room)
            assert await recv_json(one) == left(room)
            assert await recv_json(two) == joined(room)
            await asyncio.sleep(0.05)
            assert redis_server.cmd("HEXISTS", f"cr14:{{acme}}:r:{room}", "u") == 1, room
            refusal = await request(other, {"v": 1, "svc": "room", "type": "join", "room": room})
            assert refusal["data"] == {"code": "RESOURCE_EXHAUSTED", "msg": "max_users_per_room reached"}
        for ws in (one, two, other):
            await ws.close()

    asyncio.run(main())
