"""SPEC section 3 built-in services: chat:send, room:presence, presence events, sys:ping,
acks, and the ext_allowlist around them (sys:ping / sys:refresh always allowed)."""
import asyncio

import pytest

from tests.client import (
    PONG, joined,
    connect_authed, error_of, expect_close, recv_json, request, run, send_json,
)

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
  - id: other
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
  - id: pres
    policy:
      ext_allowlist: ["room:*", "chat:send"]
      presence_events: true
  - id: kickpres
    policy:
      ext_allowlist: ["room:*"]
      presence_events: true
      sessions: {max_sessions_per_user: 1, on_exceed: kick_oldest}
  - id: locked
    policy:
      ext_allowlist: []
  - id: chatonly
    policy:
      ext_allowlist: ["chat:send"]
  - id: roomonly
    policy:
      ext_allowlist: ["room:*"]
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


# -- helpers -------------------------------------------------------------------------


def chat_msg(room: str, user: str, text: str) -> dict:
    return {"v": 1, "svc": "chat", "type": "msg", "room": room, "data": {"from": user, "msg": text}}


def ack(seq: int) -> dict:
    return {"v": 1, "svc": "sys", "type": "ack", "seq": seq}


def presence_event(kind: str, room: str, user: str) -> dict:
    return {"v": 1, "svc": "room", "type": kind, "room": room, "data": {"user": user}}


async def join(ws, room) -> dict:
    return await request(ws, {"v": 1, "svc": "room", "type": "join", "room": room})


async def chat(ws, room, text, **extra) -> None:
    await send_json(ws, {"v": 1, "svc": "chat", "type": "send", "room": room, "data": {"msg": text}, **extra})


async def join_announced(ws, room, user) -> bool:
    """room:join with presence events on: `joined`, then user_joined for oneself."""
    assert await join(ws, room) == joined(room)
    assert await recv_json(ws) == presence_event("user_joined", room, user)
    return True


async def ping(ws) -> dict:
    return await request(ws, {"v": 1, "svc": "sys", "type": "ping"})


async def nothing_pending(ws) -> None:
    """Nothing was queued for this session: a ping sent now is answered by the very next
    frame (everything the gateway did before is already in the socket, in order)."""
    assert await ping(ws) == PONG


async def presence(ws, room, **extra) -> dict:
    return await request(ws, {"v": 1, "svc": "room", "type": "presence", "room": room, **extra})


# -- chat:send -------------------------------------------------------------------------

def test_chat_fans_out_to_every_member_including_the_sender(g):
    async def main():
        a1, _ = await connect_authed(g.url(ticket="dev:alice"))
        a2, _ = await connect_authed(g.url(ticket="dev:alice"))
        b, _ = await connect_authed(g.url(ticket="dev:bob"))
        outsider, _ = await connect_authed(g.url(ticket="dev:carol"))
        a3, _ = await connect_authed(g.url(ticket="dev:alice"))     # alice, not in the room
        for ws in (a1, a2, b):
            assert await join(ws, "match:1") == joined("match:1")
        await chat(b, "match:1", "gl hf")
        for ws in (a1, a2, b):
            assert await recv_json(ws) == chat_msg("match:1", "bob", "gl hf")
        await nothing_pending(outsider)
        await nothing_pending(a3)
        for ws in (a1, a2, b, outsider, a3):
            await ws.close()
    run(main())


def test_chat_keeps_order_and_text(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ord-a"))
        b, _ = await connect_authed(g.url(ticket="dev:ord-b"))
        for ws in (a, b):
            assert await join(ws, "ord") == joined("ord")
        texts = [f"m{i}" for i in range(50)] + ["", "h\u00e9llo \u2713 \U0001F600", 'quote " and \\ and \n', "x" * 3000]
        for t in texts:
            await chat(a, "ord", t)
        for ws in (a, b):
            for t in texts:
                assert await recv_json(ws) == chat_msg("ord", "ord-a", t)
        await a.close()
        await b.close()
    run(main())


def test_chat_ignores_extra_data_fields(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:extra"))
        assert await join(a, "extra") == joined("extra")
        await send_json(a, {"v": 1, "svc": "chat", "type": "send", "room": "extra",
                            "data": {"msg": "hi", "from": "mallory", "admin": True}})
        # `from` is always the authenticated user, never taken from the client
        assert await recv_json(a) == chat_msg("extra", "extra", "hi")
        await a.close()
    run(main())


def test_chat_sender_not_in_room_is_not_allowed(g):
    async def main():
        member, _ = await connect_authed(g.url(ticket="dev:mem"))
        intruder, _ = await connect_authed(g.url(ticket="dev:intruder"))
        assert await join(member, "guarded") == joined("guarded")
        await chat(intruder, "guarded", "let me in", seq=12)
        err = await recv_json(intruder)
        assert error_of(err) == "NOT_ALLOWED" and err["seq"] == 12
        await chat(intruder, "nowhere", "anyone?")       # a room that does not exist
        assert error_of(await recv_json(intruder)) == "NOT_ALLOWED"
        await nothing_pending(member)
        assert await ping(intruder) == PONG
        await member.close()
        await intruder.close()
    run(main())


@pytest.mark.parametrize("extra", [
    {},                                   # no data
    {"data": None},
    {"data": {}},                         # no msg
    {"data": {"msg": 5}},
    {"data": {"msg": None}},
    {"data": {"msg": ["x"]}},
    {"data": {"msg": {"text": "x"}}},
    {"data": {"msg": True}},
    {"data": "hello"},
    {"data": ["hello"]},
    {"data": 3},
])
def test_chat_without_string_msg_is_bad_request(g, extra):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:badmsg"))
        b, _ = await connect_authed(g.url(ticket="dev:badmsg-peer"))
        assert await join(a, "bm") == joined("bm")
        assert await join(b, "bm") == joined("bm")
        err = await request(a, {"v": 1, "svc": "chat", "type": "send", "room": "bm", "seq": 2, **extra})
        assert error_of(err) == "BAD_REQUEST" and err["seq"] == 2
        await nothing_pending(b)
        assert await ping(a) == PONG
        await a.close()
        await b.close()
    run(main())


@pytest.mark.parametrize("room", [None, "", "bad room", "r" * 129])
def test_chat_without_valid_room_is_bad_request(g, room):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:badroom"))
        msg = {"v": 1, "svc": "chat", "type": "send", "data": {"msg": "x"}}
        if room is not None:
            msg["room"] = room
        assert error_of(await request(a, msg)) == "BAD_REQUEST"
        assert await ping(a) == PONG
        await a.close()
    run(main())


def test_chat_stays_within_its_tenant(g):
    async def main():
        a, _ = await connect_authed(g.url("acme", "dev:t1"))
        b, _ = await connect_authed(g.url("other", "dev:t2"))
        assert await join(a, "same-name") == joined("same-name")
        assert await join(b, "same-name") == joined("same-name")
        await chat(a, "same-name", "acme only")
        assert await recv_json(a) == chat_msg("same-name", "t1", "acme only")
        await nothing_pending(b)
        await a.close()
        await b.close()
    run(main())


# -- acks ------------------------------------------------------------------------------

def test_ack_follows_the_senders_own_copy(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:acker"))
        b, _ = await connect_authed(g.url(ticket="dev:acker-peer"))
        for ws in (a, b):
            assert await join(ws, "ack") == joined("ack")
        await chat(a, "ack", "one", flags=4, seq=7)
        assert await recv_json(a) == chat_msg("ack", "acker", "one")
        assert await recv_json(a) == ack(7)
        assert await recv_json(b) == chat_msg("ack", "acker", "one")
        await nothing_pending(b)     # only the sender is acked
        # SEQ_PRESENT set too, and unknown high bits: still one ack
        await chat(a, "ack", "two", flags=0xFFFFFFF5, seq=2**64 - 1)
        assert await recv_json(a) == chat_msg("ack", "acker", "two")
        assert await recv_json(a) == ack(2**64 - 1)
        assert await recv_json(b) == chat_msg("ack", "acker", "two")
        await a.close()
        await b.close()
    run(main())


def test_no_ack_without_seq_or_without_the_flag(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:noack"))
        assert await join(a, "noack") == joined("noack")
        await chat(a, "noack", "flag, no seq", flags=4)
        assert await recv_json(a) == chat_msg("noack", "noack", "flag, no seq")
        await chat(a, "noack", "seq, no flag", seq=9)
        assert await recv_json(a) == chat_msg("noack", "noack", "seq, no flag")
        await chat(a, "noack", "seq bit only", flags=1, seq=10)
        assert await recv_json(a) == chat_msg("noack", "noack", "seq bit only")
        # had any ack been sent it would come before the pong
        assert await ping(a) == PONG
        await a.close()
    run(main())


def test_no_ack_on_errors(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:errack"))
        # a service error
        err = await request(a, {"v": 1, "svc": "chat", "type": "send", "room": "not-mine",
                                "data": {"msg": "x"}, "flags": 4, "seq": 9})
        assert error_of(err) == "NOT_ALLOWED" and err["seq"] == 9
        err = await request(a, {"v": 1, "svc": "room", "type": "leave", "flags": 4, "seq": 10})
        assert error_of(err) == "BAD_REQUEST" and err["seq"] == 10
        # an unknown service within an allowed wildcard
        err = await request(a, {"v": 1, "svc": "sys", "type": "nope", "flags": 4, "seq": 11})
        assert error_of(err) == "NOT_ALLOWED" and err["seq"] == 11
        assert err["data"]["msg"] == "unknown service"
        assert await ping(a) == PONG
        await a.close()
    run(main())


def test_ack_after_builtin_replies(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ackb"))
        await send_json(a, {"v": 1, "svc": "room", "type": "join", "room": "ackb", "flags": 4, "seq": 1})
        assert await recv_json(a) == joined("ackb")
        assert await recv_json(a) == ack(1)
        await send_json(a, {"v": 1, "svc": "sys", "type": "ping", "flags": 4, "seq": 0})
        assert await recv_json(a) == PONG
        assert await recv_json(a) == ack(0)
        await send_json(a, {"v": 1, "svc": "room", "type": "leave", "flags": 4, "seq": 3})
        assert await recv_json(a) == {"v": 1, "svc": "sys", "type": "left", "room": "ackb"}
        assert await recv_json(a) == ack(3)
        await a.close()
    run(main())


# -- room:presence ---------------------------------------------------------------------

def test_presence_counts_users_not_sessions(g):
    async def main():
        a1, _ = await connect_authed(g.url(ticket="dev:p-alice"))
        a2, _ = await connect_authed(g.url(ticket="dev:p-alice"))
        b, _ = await connect_authed(g.url(ticket="dev:p-bob"))
        for ws in (a1, a2, b):
            assert await join(ws, "pr") == joined("pr")
        msg = await presence(a2, "pr")
        assert set(msg) == {"v", "svc", "type", "room", "data"}
        assert (msg["v"], msg["svc"], msg["type"], msg["room"]) == (1, "sys", "presence", "pr")
        assert msg["data"]["count"] == 2
        assert sorted(msg["data"]["users"]) == ["p-alice", "p-bob"]
        await b.close()
        await asyncio.sleep(0.05)
        msg = await presence(a1, "pr")
        assert msg["data"] == {"count": 1, "users": ["p-alice"]}
        await a1.close()
        await a2.close()
    run(main())


def test_presence_needs_membership(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:pm-a"))
        b, _ = await connect_authed(g.url(ticket="dev:pm-b"))
        assert await join(a, "pm") == joined("pm")
        err = await presence(b, "pm", seq=4)
        assert error_of(err) == "NOT_ALLOWED" and err["seq"] == 4
        assert error_of(await presence(b, "pm-ghost")) == "NOT_ALLOWED"
        assert error_of(await request(b, {"v": 1, "svc": "room", "type": "presence"})) == "BAD_REQUEST"
        assert error_of(await presence(b, "bad room")) == "BAD_REQUEST"
        assert await ping(b) == PONG
        await a.close()
        await b.close()
    run(main())


def test_presence_user_list_is_capped_but_count_exact(g):
    async def main():
        clients = []
        for i in range(5):
            ws, _ = await connect_authed(g.url(ticket=f"dev:cap{i}"))
            assert await join(ws, "cap") == joined("cap")
            clients.append(ws)
        count, users = g.call(lambda: g.tenant().rooms.presence("cap", 3))
        assert count == 5 and len(users) == 3 and set(users) <= {f"cap{i}" for i in range(5)}
        msg = await presence(clients[0], "cap")
        assert msg["data"]["count"] == 5 and len(msg["data"]["users"]) == 5
        for ws in clients:
            await ws.close()
    run(main())


# -- presence events -------------------------------------------------------------------

def test_presence_events_join_and_leave(g):
    async def main():
        bob, _ = await connect_authed(g.url("pres", "dev:bob"))
        # the joiner is a member too: `joined` first, then the event about itself
        assert await join_announced(bob, "lobby", "bob")

        alice1, _ = await connect_authed(g.url("pres", "dev:alice"))
        await send_json(alice1, {"v": 1, "svc": "room", "type": "join", "room": "lobby"})
        # every member, the newcomer included, hears of alice's first session
        assert await recv_json(bob) == presence_event("user_joined", "lobby", "alice")
        assert await recv_json(alice1) == joined("lobby")
        assert await recv_json(alice1) == presence_event("user_joined", "lobby", "alice")

        # a second session of the same user is not news
        alice2, _ = await connect_authed(g.url("pres", "dev:alice"))
        assert await join(alice2, "lobby") == joined("lobby")
        await nothing_pending(bob)
        await nothing_pending(alice1)

        # one of alice's sessions leaving is not news either
        assert await request(alice1, {"v": 1, "svc": "room", "type": "leave"}) == \
            {"v": 1, "svc": "sys", "type": "left", "room": "lobby"}
        await nothing_pending(bob)
        await nothing_pending(alice2)

        # her last session leaving is
        assert await request(alice2, {"v": 1, "svc": "room", "type": "leave", "room": "lobby"}) == \
            {"v": 1, "svc": "sys", "type": "left", "room": "lobby"}
        assert await recv_json(bob) == presence_event("user_left", "lobby", "alice")
        await nothing_pending(alice2)       # no longer a member
        await nothing_pending(alice1)
        for ws in (bob, alice1, alice2):
            await ws.close()
    run(main())


def test_presence_event_on_close(g):
    async def main():
        bob, _ = await connect_authed(g.url("pres", "dev:cbob"))
        carl, _ = await connect_authed(g.url("pres", "dev:carl"))
        assert await join_announced(bob, "closing", "cbob")
        await send_json(carl, {"v": 1, "svc": "room", "type": "join", "room": "closing"})
        assert await recv_json(bob) == presence_event("user_joined", "closing", "carl")
        assert await recv_json(carl) == joined("closing")
        assert await recv_json(carl) == presence_event("user_joined", "closing", "carl")
        await carl.close()
        assert await recv_json(bob) == presence_event("user_left", "closing", "carl")
        # an abrupt disconnect too
        dave, _ = await connect_authed(g.url("pres", "dev:dave"))
        await send_json(dave, {"v": 1, "svc": "room", "type": "join", "room": "closing"})
        assert await recv_json(bob) == presence_event("user_joined", "closing", "dave")
        dave.transport.abort()
        assert await recv_json(bob) == presence_event("user_left", "closing", "dave")
        await bob.close()
    run(main())


def test_presence_event_on_kick(g):
    async def main():
        # replaced by a session with the same sid
        bob, _ = await connect_authed(g.url("pres", "dev:kbob"))
        assert await join_announced(bob, "kick", "kbob")
        old, _ = await connect_authed(g.url("pres", "dev:kim", sid="tab"))
        await send_json(old, {"v": 1, "svc": "room", "type": "join", "room": "kick"})
        assert await recv_json(bob) == presence_event("user_joined", "kick", "kim")
        new, _ = await connect_authed(g.url("pres", "dev:kim", sid="tab"))
        assert await recv_json(bob) == presence_event("user_left", "kick", "kim")
        assert await expect_close(old) == 4003
        await new.close()
        await bob.close()
    run(main())


def test_presence_event_on_kick_oldest(g):
    async def main():
        bob, _ = await connect_authed(g.url("kickpres", "dev:bob"))
        assert await join_announced(bob, "ko", "bob")
        first, _ = await connect_authed(g.url("kickpres", "dev:kate"))
        await send_json(first, {"v": 1, "svc": "room", "type": "join", "room": "ko"})
        assert await recv_json(bob) == presence_event("user_joined", "ko", "kate")
        second, _ = await connect_authed(g.url("kickpres", "dev:kate"))
        assert await recv_json(bob) == presence_event("user_left", "ko", "kate")
        assert await expect_close(first) == 4003
        await second.close()
        await bob.close()
    run(main())


def test_no_presence_events_when_disabled(g):
    async def main():
        bob, _ = await connect_authed(g.url("acme", "dev:quiet-bob"))
        assert await join(bob, "quiet") == joined("quiet")
        alice, _ = await connect_authed(g.url("acme", "dev:quiet-alice"))
        assert await join(alice, "quiet") == joined("quiet")
        await alice.close()
        await nothing_pending(bob)
        await bob.close()
    run(main())


def test_presence_events_stay_in_their_room(g):
    async def main():
        elsewhere, _ = await connect_authed(g.url("pres", "dev:elsewhere"))
        assert await join_announced(elsewhere, "room-b", "elsewhere")
        a, _ = await connect_authed(g.url("pres", "dev:ev-a"))
        assert await join_announced(a, "room-a", "ev-a")
        await a.close()
        await nothing_pending(elsewhere)
        await elsewhere.close()
    run(main())


# -- sys:ping and the allowlist --------------------------------------------------------

def test_ping_answers_pong_exactly(g):
    async def main():
        a, _ = await connect_authed(g.url())
        await send_json(a, {"v": 1, "svc": "sys", "type": "ping", "data": {"anything": [1, 2]}})
        raw = await asyncio.wait_for(a.recv(), 3)
        assert raw == '{"v":1,"svc":"sys","type":"pong"}'
        await a.close()
    run(main())


@pytest.mark.parametrize("tenant", ["locked", "chatonly", "roomonly", "pres"])
def test_ping_and_refresh_are_always_allowed(g, tenant):
    async def main():
        a, _ = await connect_authed(g.url(tenant, "dev:ctl"))
        assert await ping(a) == PONG
        # a refused ticket answers AUTH_FAILED, not NOT_ALLOWED: refresh got through
        err = await request(a, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": "nope"}, "seq": 6})
        assert error_of(err) == "AUTH_FAILED" and err["seq"] == 6
        ok = await request(a, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": "dev:ctl"}})
        assert (ok["svc"], ok["type"]) == ("sys", "refreshed")
        await a.close()
    run(main())


def test_empty_allowlist_denies_everything_else(g):
    async def main():
        a, _ = await connect_authed(g.url("locked", "dev:lk"))
        for svc, typ in [("room", "join"), ("room", "leave"), ("room", "presence"), ("chat", "send"),
                         ("sys", "other"), ("match", "find")]:
            err = await request(a, {"v": 1, "svc": svc, "type": typ, "room": "r", "seq": 1})
            assert error_of(err) == "NOT_ALLOWED", (svc, typ)
            assert err["seq"] == 1
        assert await ping(a) == PONG
        assert g.call(lambda: g.tenant("locked").rooms.rooms) == {}
        await a.close()
    run(main())


def test_room_is_subject_to_the_allowlist(g):
    async def main():
        a, _ = await connect_authed(g.url("chatonly", "dev:co"))
        err = await request(a, {"v": 1, "svc": "room", "type": "join", "room": "r", "flags": 4, "seq": 3})
        assert error_of(err) == "NOT_ALLOWED" and err["seq"] == 3
        assert g.call(lambda: g.tenant("chatonly").rooms.rooms) == {}
        # chat is allowed, but the sender is in no room
        err = await request(a, {"v": 1, "svc": "chat", "type": "send", "room": "r", "data": {"msg": "x"}})
        assert error_of(err) == "NOT_ALLOWED"
        assert await ping(a) == PONG
        await a.close()
    run(main())


def test_chat_is_subject_to_the_allowlist(g):
    async def main():
        a, _ = await connect_authed(g.url("roomonly", "dev:ro"))
        b, _ = await connect_authed(g.url("roomonly", "dev:ro2"))
        assert await join(a, "r") == joined("r")
        assert await join(b, "r") == joined("r")
        err = await request(a, {"v": 1, "svc": "chat", "type": "send", "room": "r", "data": {"msg": "x"}, "seq": 5})
        assert error_of(err) == "NOT_ALLOWED" and err["seq"] == 5
        await nothing_pending(b)
        # presence is part of room:* here
        assert (await request(a, {"v": 1, "svc": "room", "type": "presence", "room": "r"}))["data"]["count"] == 2
        await a.close()
        await b.close()
    run(main())
