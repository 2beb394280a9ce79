"""SPEC section 3 (rooms) and 14 (Rooms): room:join / room:leave, names, limits, cleanup."""
import asyncio

import pytest

from tests.client import PONG, joined, left, connect_authed, error_of, expect_close, recv_json, request, run, send_json

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
  - id: upr
    limits: {max_users_per_room: 2}
    policy:
      ext_allowlist: ["room:*", "sys:*"]
  - id: rpu
    limits: {max_rooms_per_user: 2}
    policy:
      ext_allowlist: ["room:*", "sys:*"]
  - id: rtot
    limits: {max_rooms_total: 2}
    policy:
      ext_allowlist: ["room:*", "sys:*"]
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


# -- helpers -------------------------------------------------------------------------


async def join(ws, room, **extra) -> dict:
    return await request(ws, {"v": 1, "svc": "room", "type": "join", "room": room, **extra})


async def leave(ws, room=None, **extra) -> dict:
    msg = {"v": 1, "svc": "room", "type": "leave", **extra}
    if room is not None:
        msg["room"] = room
    return await request(ws, msg)


async def alive(ws) -> None:
    """The session is still open and answering."""
    assert await request(ws, {"v": 1, "svc": "sys", "type": "ping"}) == PONG


def rooms_of(g, tenant: str = "acme") -> dict:
    """{room: sorted member users} as the gateway holds it."""
    def snap():
        table = g.tenant(tenant).rooms
        return {name: sorted(s.user for s in room.members) for name, room in table.rooms.items()}
    return g.call(snap)


def room_count(g, tenant: str = "acme") -> int:
    return g.call(lambda: len(g.tenant(tenant).rooms.rooms))


async def eventually(check, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- join ----------------------------------------------------------------------------

def test_join_answers_joined_and_registers_membership(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:j1"))
        assert await join(ws, "match:1") == joined("match:1")
        assert rooms_of(g)["match:1"] == ["j1"]
        assert g.call(lambda: g.tenant().rooms.user_rooms["j1"]) == {"match:1": 1}
        await ws.close()
        await eventually(lambda: "match:1" not in rooms_of(g))
    run(main())


@pytest.mark.parametrize("room", [
    "a",
    "Z",
    "0",
    "A-Za-z0-9_.:@-",
    "lobby@eu-west.1:match_42",
    "r" * 128,
    ":", "@", ".", "-", "_",
])
def test_valid_room_names(g, room):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:names"))
        assert await join(ws, room) == joined(room)
        assert await leave(ws, room) == left(room)
        await ws.close()
    run(main())


@pytest.mark.parametrize("room", [
    "",                 # empty
    "r" * 129,          # one over the limit
    "a b",
    "a/b",
    "a#b",
    "a,b",
    "a*",
    "room\n",
    "caf\u00e9",        # non-ASCII letter
    "\u0661",           # non-ASCII digit
    "emoji\U0001F600",
    "a\u0000b",
])
def test_bad_room_names_are_bad_request_and_session_stays(g, room):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:badnames"))
        err = await join(ws, room, seq=41)
        assert error_of(err) == "BAD_REQUEST"
        assert err["seq"] == 41
        assert room not in rooms_of(g)
        await alive(ws)
        # leaving such a room is the same input error
        err = await leave(ws, room)
        assert error_of(err) == "BAD_REQUEST"
        assert "seq" not in err
        await alive(ws)
        await ws.close()
    run(main())


def test_join_without_room_is_bad_request(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:noroom"))
        err = await request(ws, {"v": 1, "svc": "room", "type": "join", "seq": 3})
        assert error_of(err) == "BAD_REQUEST"
        assert err["seq"] == 3
        # the ROOM_PRESENT bit is informational: no `room` field is still no room
        err = await request(ws, {"v": 1, "svc": "room", "type": "join", "flags": 2})
        assert error_of(err) == "BAD_REQUEST"
        await alive(ws)
        assert g.call(lambda: g.tenant().rooms.user_rooms.get("noroom")) is None
        await ws.close()
    run(main())


def test_rejoin_is_idempotent_and_makes_the_room_active_again(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:rejoin"))
        for room in ("re:a", "re:b", "re:c"):
            assert await join(ws, room) == joined(room)
        assert await join(ws, "re:a") == joined("re:a")
        # membership is not doubled
        snap = rooms_of(g)
        assert snap["re:a"] == ["rejoin"]
        assert g.call(lambda: g.tenant().rooms.user_rooms["rejoin"]) == {"re:a": 1, "re:b": 1, "re:c": 1}
        # the active room is now re:a, then the most recently joined remaining ones
        assert await leave(ws) == left("re:a")
        assert await leave(ws) == left("re:c")
        assert await leave(ws) == left("re:b")
        err = await leave(ws)
        assert error_of(err) == "BAD_REQUEST"
        assert room_count(g) == 0
        await ws.close()
    run(main())


# -- leave ---------------------------------------------------------------------------

def test_leave_explicit_and_default_active_room(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:leaver"))
        for room in ("l:1", "l:2", "l:3", "l:4"):
            assert await join(ws, room) == joined(room)
        # leaving a room that is not the active one keeps the active room
        assert await leave(ws, "l:2") == left("l:2")
        assert await leave(ws) == left("l:4")
        # leaving the active room explicitly: the next most recent becomes active
        assert await leave(ws, "l:3") == left("l:3")
        assert await join(ws, "l:5") == joined("l:5")
        assert await leave(ws) == left("l:5")
        assert await leave(ws) == left("l:1")
        assert g.call(lambda: g.tenant().rooms.user_rooms.get("leaver")) is None
        await ws.close()
    run(main())


def test_leave_a_room_one_is_not_in_is_bad_request(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ln-a"))
        b, _ = await connect_authed(g.url(ticket="dev:ln-b"))
        assert await join(a, "ln:room") == joined("ln:room")
        # a room that exists, with someone else in it
        err = await leave(b, "ln:room", seq=8)
        assert error_of(err) == "BAD_REQUEST" and err["seq"] == 8
        # a room that does not exist
        err = await leave(b, "ln:ghost")
        assert error_of(err) == "BAD_REQUEST"
        # no room given and none joined
        err = await leave(b)
        assert error_of(err) == "BAD_REQUEST"
        await alive(b)
        # a's membership is untouched
        assert rooms_of(g)["ln:room"] == ["ln-a"]
        # leaving twice: the second is an error
        assert await leave(a, "ln:room") == left("ln:room")
        assert error_of(await leave(a, "ln:room")) == "BAD_REQUEST"
        await alive(a)
        await a.close()
        await b.close()
    run(main())


def test_rooms_are_per_session_not_per_user(g):
    async def main():
        s1, _ = await connect_authed(g.url(ticket="dev:twin"))
        s2, _ = await connect_authed(g.url(ticket="dev:twin"))
        assert await join(s1, "ps:x") == joined("ps:x")
        # the other session of the same user is not a member
        assert error_of(await leave(s2)) == "BAD_REQUEST"
        assert error_of(await leave(s2, "ps:x")) == "BAD_REQUEST"
        assert await join(s2, "ps:x") == joined("ps:x")
        assert g.call(lambda: g.tenant().rooms.rooms["ps:x"].users) == {"twin": 2}
        assert await leave(s1) == left("ps:x")
        assert g.call(lambda: g.tenant().rooms.rooms["ps:x"].users) == {"twin": 1}
        assert await leave(s2) == left("ps:x")
        assert "ps:x" not in rooms_of(g)
        await s1.close()
        await s2.close()
    run(main())


# -- cleanup -------------------------------------------------------------------------

def test_room_is_deleted_when_its_last_member_leaves(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:del-a"))
        b, _ = await connect_authed(g.url(ticket="dev:del-b"))
        before = room_count(g)
        assert await join(a, "del:r") == joined("del:r")
        assert await join(b, "del:r") == joined("del:r")
        assert room_count(g) == before + 1
        assert await leave(a) == left("del:r")
        assert room_count(g) == before + 1
        assert await leave(b) == left("del:r")
        assert room_count(g) == before
        assert "del:r" not in rooms_of(g)
        await a.close()
        await b.close()
    run(main())


def test_disconnect_leaves_every_room(g):
    async def main():
        stay, _ = await connect_authed(g.url(ticket="dev:dc-stay"))
        gone, _ = await connect_authed(g.url(ticket="dev:dc-gone"))
        assert await join(stay, "dc:shared") == joined("dc:shared")
        for room in ("dc:shared", "dc:own1", "dc:own2"):
            assert await join(gone, room) == joined(room)
        await gone.close()
        await eventually(lambda: "dc:own1" not in rooms_of(g) and "dc:own2" not in rooms_of(g))
        assert rooms_of(g)["dc:shared"] == ["dc-stay"]
        assert g.call(lambda: g.tenant().rooms.user_rooms.get("dc-gone")) is None
        await alive(stay)
        await stay.close()
    run(main())


def test_abrupt_disconnect_leaves_every_room(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:abrupt"))
        for room in ("ab:1", "ab:2"):
            assert await join(ws, room) == joined(room)
        ws.transport.abort()          # no close frame: the TCP connection just goes
        await eventually(lambda: "ab:1" not in rooms_of(g) and "ab:2" not in rooms_of(g))
        assert g.call(lambda: g.tenant().rooms.user_rooms.get("abrupt")) is None
    run(main())


def test_replaced_session_leaves_its_rooms(g):
    async def main():
        old, _ = await connect_authed(g.url(ticket="dev:repl", sid="tab"))
        assert await join(old, "repl:r") == joined("repl:r")
        new, _ = await connect_authed(g.url(ticket="dev:repl", sid="tab"))
        assert (await recv_json(old))["type"] == "kicked"
        assert await expect_close(old) == 4003
        assert "repl:r" not in rooms_of(g)
        # the new session starts with no room
        assert error_of(await leave(new)) == "BAD_REQUEST"
        await new.close()
    run(main())


# -- limits --------------------------------------------------------------------------

def test_max_users_per_room_counts_distinct_users(g):
    async def main():
        a1, _ = await connect_authed(g.url("upr", "dev:alice"))
        a2, _ = await connect_authed(g.url("upr", "dev:alice"))
        b, _ = await connect_authed(g.url("upr", "dev:bob"))
        c, _ = await connect_authed(g.url("upr", "dev:carol"))
        assert await join(a1, "full") == joined("full")
        assert await join(b, "full") == joined("full")
        # alice's second session does not count as a new user
        assert await join(a2, "full") == joined("full")
        err = await join(c, "full", seq=5)
        assert error_of(err) == "RESOURCE_EXHAUSTED"
        assert err["seq"] == 5
        await alive(c)
        assert g.call(lambda: sorted(g.tenant("upr").rooms.rooms["full"].users)) == ["alice", "bob"]
        # carol was not added anywhere
        assert g.call(lambda: g.tenant("upr").rooms.user_rooms.get("carol")) is None
        # one alice session leaving frees nothing: alice is still in the room
        assert await leave(a1) == left("full")
        assert error_of(await join(c, "full")) == "RESOURCE_EXHAUSTED"
        # bob leaving frees a user slot
        assert await leave(b) == left("full")
        assert await join(c, "full") == joined("full")
        assert error_of(await join(b, "full")) == "RESOURCE_EXHAUSTED"
        for ws in (a1, a2, b, c):
            await ws.close()
    run(main())


def test_max_users_per_room_is_exact_under_a_burst(g):
    async def main():
        clients = [(await connect_authed(g.url("upr", f"dev:burst{i}")))[0] for i in range(8)]
        for ws in clients:
            await send_json(ws, {"v": 1, "svc": "room", "type": "join", "room": "burst"})
        answers = await asyncio.gather(*(recv_json(ws) for ws in clients))
        ok = [a for a in answers if a == joined("burst")]
        refused = [a for a in answers if a.get("type") == "error"]
        assert len(ok) == 2 and len(refused) == 6
        assert all(error_of(a) == "RESOURCE_EXHAUSTED" for a in refused)
        assert g.call(lambda: len(g.tenant("upr").rooms.rooms["burst"].users)) == 2
        for ws in clients:
            await ws.close()
    run(main())


def test_max_rooms_per_user_counts_distinct_rooms_over_all_sessions(g):
    async def main():
        s1, _ = await connect_authed(g.url("rpu", "dev:dora"))
        s2, _ = await connect_authed(g.url("rpu", "dev:dora"))
        other, _ = await connect_authed(g.url("rpu", "dev:eve"))
        assert await join(s1, "r1") == joined("r1")
        assert await join(s2, "r2") == joined("r2")
        # a room the user is already in (through another session) is not a new room
        assert await join(s2, "r1") == joined("r1")
        assert await join(s1, "r2") == joined("r2")
        # a third distinct room, from either session
        err = await join(s1, "r3", seq=77)
        assert error_of(err) == "RESOURCE_EXHAUSTED" and err["seq"] == 77
        assert error_of(await join(s2, "r3")) == "RESOURCE_EXHAUSTED"
        await alive(s1)
        # the limit is per user: eve may join r3
        assert await join(other, "r3") == joined("r3")
        # r1 still counts while one of dora's sessions is in it
        assert await leave(s1, "r1") == left("r1")
        assert error_of(await join(s1, "r3")) == "RESOURCE_EXHAUSTED"
        assert await leave(s2, "r1") == left("r1")
        assert await join(s1, "r3") == joined("r3")
        assert g.call(lambda: g.tenant("rpu").rooms.user_rooms["dora"]) == {"r2": 2, "r3": 1}
        for ws in (s1, s2, other):
            await ws.close()
    run(main())


def test_max_rooms_total_and_empty_rooms_stop_counting(g):
    async def main():
        a, _ = await connect_authed(g.url("rtot", "dev:a"))
        b, _ = await connect_authed(g.url("rtot", "dev:b"))
        c, _ = await connect_authed(g.url("rtot", "dev:c"))
        assert await join(a, "t1") == joined("t1")
        assert await join(b, "t2") == joined("t2")
        err = await join(c, "t3", seq=1)
        assert error_of(err) == "RESOURCE_EXHAUSTED" and err["seq"] == 1
        assert room_count(g, "rtot") == 2
        # joining an existing room is always fine
        assert await join(c, "t1") == joined("t1")
        # t1 is not empty yet: still two rooms
        assert await leave(a, "t1") == left("t1")
        assert error_of(await join(c, "t3")) == "RESOURCE_EXHAUSTED"
        # the last member leaves: t1 is deleted and a new room fits
        assert await leave(c, "t1") == left("t1")
        assert room_count(g, "rtot") == 1
        assert await join(c, "t3") == joined("t3")
        assert error_of(await join(a, "t4")) == "RESOURCE_EXHAUSTED"
        # a disconnect frees rooms too
        await b.close()
        await eventually(lambda: room_count(g, "rtot") == 1)
        assert await join(a, "t4") == joined("t4")
        assert sorted(rooms_of(g, "rtot")) == ["t3", "t4"]
        await a.close()
        await c.close()
        await eventually(lambda: room_count(g, "rtot") == 0)
    run(main())


def test_limits_of_one_tenant_do_not_touch_another(g):
    async def main():
        # acme has no limits: many rooms for one user
        ws, _ = await connect_authed(g.url(ticket="dev:many"))
        for i in range(30):
            assert await join(ws, f"many:{i}") == joined(f"many:{i}")
        assert g.call(lambda: len(g.tenant().rooms.user_rooms["many"])) == 30
        assert "many:0" not in rooms_of(g, "rtot")
        await ws.close()
        await eventually(lambda: g.call(lambda: g.tenant().rooms.user_rooms.get("many")) is None)
    run(main())
