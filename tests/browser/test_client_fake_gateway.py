"""The client against a scripted fake gateway (fake_gateway.py): the close-code table of
SPEC 16, bad input from the server, timeouts, sends while reconnecting, the app-level
ping, and recovery by offset/epoch (SPEC 13) before the gateway has history."""
import json
import struct
import time
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.conftest import REPO, open_test_page
from tests.browser.fake_gateway import BASE, WS_URL, FakeGateway

CLIENT_JS = (REPO / "clients" / "js" / "wsprism.js").read_bytes()
FAST = "minDelay: 50, maxDelay: 200, timeout: 1000"


@pytest.fixture
def page(pages):
    return open_test_page(pages, BASE, client_js=CLIENT_JS)


def make(page, name="c", opts="", ticket="dev:alice"):
    page.evaluate(f"window.{name} = make({{url: '{WS_URL}', tenant: 'acme', ticket: '{ticket}', {FAST}, {opts}}})")


def connect(page, name="c"):
    return page.evaluate(f"{name}.connect()")


def events(page, ev, name="c"):
    return page.evaluate(f"{name}.events('{ev}')")


def present(d: dict) -> dict:
    """Without the keys whose value is undefined in the page (None here)."""
    return {k: v for k, v in d.items() if v is not None}


# -- close codes ----------------------------------------------------------------------
STOP = [1000, 1002, 1007, 1008, 1009, 4000, 4003, 4004, 4006, 4007, 4010, 4999]
RETRY = [1001, 1006, 1011, 3000, 4001, 4002, 4005]


def test_close_code_table(page):
    """One client per code, all at once: the fake closes each client's first session
    with its code; stop codes end in `closed` after one connection, the others come back."""
    def on_connect(conn):
        conn.authed()
        code = int(conn.query["tenant"][1:])
        if len([c for c in fake.conns if c.query["tenant"] == conn.query["tenant"]]) == 1:
            if code == 4003:
                conn.sys("kicked", data={"reason": "replaced"})
            conn.close(code, "bye")
    fake = FakeGateway(page, on_connect)
    codes = STOP + RETRY
    page.evaluate("""(codes) => {
        window.tickets = {};
        window.clients = Object.fromEntries(codes.map((code) => [code, make({
            url: '%s', tenant: 'c' + code, minDelay: 50, maxDelay: 200,
            getTicket: () => { tickets[code] = (tickets[code] || 0) + 1; return 'dev:alice'; }})]));
        return Promise.all(Object.values(clients).map((c) => c.connect()));
    }""" % WS_URL, codes)
    # 4005 waits at least 2 s; the others settle well within that
    page.wait_for_function("Object.values(clients).every((c) => c.state === 'open' || c.state === 'closed')"
                           " && clients[4005].state === 'open'", timeout=6000)
    page.wait_for_timeout(400)    # several backoff periods: a stopped client must stay stopped
    result = page.evaluate("""() => Object.fromEntries(Object.entries(clients).map(([code, c]) =>
        [code, {state: c.state, states: c.events('state'), errors: c.events('error'), tickets: tickets[code]}]))""")
    per_code = {code: [c for c in fake.conns if c.query["tenant"] == f"c{code}"] for code in codes}
    for code in STOP:
        r = result[str(code)]
        assert r["state"] == "closed" and len(per_code[code]) == 1, (code, r)
        closed = r["states"][-1]
        assert closed[0] == "closed" and closed[1]["closeCode"] == code, (code, r)
        err = r["errors"][-1]
        assert err["code"] == "CLOSED" and err["closeCode"] == code, (code, err)
    assert result["4003"]["errors"][-1]["reason"] == "replaced"        # the kick's reason, not the close text
    for code in RETRY:
        r = result[str(code)]
        assert r["state"] == "open" and len(per_code[code]) == 2, (code, r)
        reconnecting = [s for s in r["states"] if s[0] == "reconnecting"]
        assert len(reconnecting) == 1 and reconnecting[0][1]["closeCode"] == code, (code, r)
        assert not r["errors"], (code, r)        # a drop that heals is a state, not an error
        assert r["tickets"] == 2                 # getTicket before every attempt (4001: a new ticket)
    delay = {code: [s for s in result[str(code)]["states"] if s[0] == "reconnecting"][0][1]["delay"] for code in RETRY}
    assert delay[4005] >= 2000
    assert per_code[4005][1].at - per_code[4005][0].at >= 2.0
    # the others: the first step of the backoff (1001, draining: one step more of spread)
    assert all(50 <= d <= 100 for code, d in delay.items() if code not in (4005, 1001)), delay
    assert 50 <= delay[1001] <= 150


def test_backoff_is_full_jitter_within_bounds_and_resets_after_authed(page):
    # a gateway that opens the socket and closes it at once, 8 times, then works
    def on_connect(conn):
        if len(fake.conns) <= 8:
            conn.sys("pong")        # (a frame first: the socket opened, so it is a close, not a refusal)
            conn.close(1011)
        else:
            conn.authed()
    fake = FakeGateway(page, on_connect)
    make(page, opts="minDelay: 20, maxDelay: 300")
    page.evaluate("c.connect().catch(() => {})")
    page.wait_for_function("c.state === 'open'", timeout=8000)
    reconnecting = [s[1] for s in events(page, "state") if s[0] == "reconnecting"]
    assert [r["closeCode"] for r in reconnecting] == [1011] * 8
    delays = [r["delay"] for r in reconnecting]
    # attempt n waits min + random(0, min(max, min * 2^n)), never more than max
    for n, d in enumerate(delays):
        assert 20 <= d <= min(300, 20 + 20 * 2 ** n), (n, d, delays)
    assert page.evaluate("c._n") == 0


def test_tries_that_find_nobody_listening_stop_growing_at_step_two(page):
    """A gateway that is down (its check gets no answer either) costs nothing per try:
    the backoff stops growing at min + random(0, 4 min); answers keep the full growth."""
    page.route(f"{BASE}/v1/ws/check?*", lambda route: route.abort())
    FakeGateway(page, lambda conn: conn.close(1006))
    make(page, opts="minDelay: 10, maxDelay: 5000")
    page.evaluate("c.connect().catch(() => {})")
    page.wait_for_function("c.events('state').filter((s) => s[0] === 'reconnecting').length >= 7", timeout=5000)
    page.evaluate("c.close()")
    delays = [s[1]["delay"] for s in events(page, "state") if s[0] == "reconnecting"]
    assert all(s[1]["reason"] == "unreachable" for s in events(page, "state") if s[0] == "reconnecting")
    assert all(10 <= d <= 50 for d in delays), delays


def test_first_connect_rejects_when_the_first_attempt_ends_before_authed(page):
    def on_connect(conn):
        conn.sys("error", data={"code": "TOO_MANY_SESSIONS", "msg": "at the limit"}, trace_id="t")
        conn.close(4004)
    FakeGateway(page, on_connect)
    make(page)
    err = page.evaluate("c.connect().then(() => null, (e) => plain(e))")
    assert err["code"] == "CLOSED" and err["closeCode"] == 4004
    assert page.evaluate("c.state") == "closed"
    assert [e["code"] for e in events(page, "error")] == ["TOO_MANY_SESSIONS", "CLOSED"]


REFUSALS = [                # what GET /v1/ws/check answers, and whether the client gives up
    ({"reason": "unknown_tenant", "msg": "unknown tenant"}, True),
    ({"reason": "auth_failed", "msg": "ticket rejected"}, True),
    ({"reason": "bad_request", "msg": "malformed sid"}, True),
    ({"reason": "tenant_full", "msg": "full", "retry_after": 1}, False),
    ({"reason": "rate_limited", "msg": "too many", "retry_after": 1}, False),
    ({"reason": "draining", "msg": "draining"}, False),
    ({"reason": "ok", "msg": "would pass"}, False),
    (None, False),                  # the check itself gets no answer
]


def test_a_refused_handshake_asks_why_and_stops_only_when_retrying_cannot_help(page):
    """A socket closed before it opened looks like a refused handshake to the client, as
    a real refusal does (close 1006): it asks GET <url>/check and acts on the reason.
    One client per answer, all at once (tenant r<i> gets REFUSALS[i])."""
    checks, at = [], {}

    def check(route):
        url = route.request.url
        checks.append(url)
        at.setdefault(url, []).append(time.monotonic())
        answer = REFUSALS[int(parse_qs(urlparse(url).query)["tenant"][0][1:])][0]
        if answer is None:
            route.abort()
        else:
            route.fulfill(status=200, body=json.dumps(answer), content_type="application/json")
    page.route(f"{BASE}/v1/ws/check?*", check)
    FakeGateway(page, lambda conn: conn.close(1006))
    got = page.evaluate("""(n) => Promise.all([...Array(n).keys()].map((i) => {
        const c = make({url: '%s', tenant: 'r' + i, ticket: 'dev:alice', minDelay: 100, maxDelay: 100});
        (window.clients ||= []).push(c);
        return c.connect().then(() => null, (e) => plain(e));
    }))""" % WS_URL, len(REFUSALS))
    # the clients that keep trying must have asked twice (their backoff is 100 ms); under a
    # loaded host that can take longer than a few periods, so wait for it (bounded), then
    # a little more for any client that should stay stopped to show it
    retrying = [i for i, (answer, final) in enumerate(REFUSALS) if not final and not (answer or {}).get("retry_after")]
    for _ in range(100):
        if all(sum(f"tenant=r{i}&" in u for u in checks) >= 2 for i in retrying):
            break
        page.wait_for_timeout(50)
    page.wait_for_timeout(300)
    for i, (answer, final) in enumerate(REFUSALS):
        mine = [u for u in checks if f"tenant=r{i}&" in u]
        reason = answer["reason"] if answer else "unreachable"
        expected = {"ok": "handshake_failed"}.get(reason, reason)
        err = got[i]
        assert err["code"] == ("UNREACHABLE" if answer is None else "REFUSED") and err["reason"] == expected, (i, err)
        sid = page.evaluate(f"clients[{i}].sid")
        assert mine[0] == f"{BASE}/v1/ws/check?tenant=r{i}&ticket=dev%3Aalice&sid={sid}"
        states = page.evaluate(f"clients[{i}].events('state')")
        if final:
            assert page.evaluate(f"clients[{i}].state") == "closed" and len(mine) == 1, (i, states)
            assert states[-1] == ["closed", {"reason": expected}]
        else:
            assert [s for s in states if s[0] == "reconnecting"][0][1]["reason"] == expected
            if answer and answer.get("retry_after"):      # Retry-After is a floor for the next try
                reconnects = [s for s in states if s[0] == "reconnecting"]
                assert all(s[1]["delay"] >= 1000 for s in reconnects), (i, states)
                # a loaded host may let the wait above outlast the floor: a second try is
                # fine then, as long as it came no sooner than Retry-After allows
                times = at[mine[0]]
                assert all(b - a >= 0.95 for a, b in zip(times, times[1:])), (i, times)
            else:
                assert len(mine) >= 2, (i, mine)          # it keeps trying, with backoff
        assert page.evaluate(f"clients[{i}].lastError.reason") == expected


def test_auth_failed_with_get_ticket_retries(page):
    page.route(f"{BASE}/v1/ws/check?*", lambda route: route.fulfill(
        body=json.dumps({"reason": "auth_failed", "msg": "ticket rejected"}), content_type="application/json"))
    fake = FakeGateway(page, lambda conn: conn.close(1006) if len(fake.conns) == 1 else conn.authed())
    page.evaluate(f"window.c = make({{url: '{WS_URL}', tenant: 'acme', minDelay: 50, maxDelay: 50,"
                  " getTicket: async () => 'fresh-' + (window.n = (window.n || 0) + 1)})")
    page.evaluate("c.connect().catch(() => {})")
    page.wait_for_function("c.state === 'open'")
    assert [c.query["ticket"] for c in fake.conns] == ["fresh-1", "fresh-2"]


# -- bad input from the server --------------------------------------------------------
def test_malformed_json_and_unknown_types_are_reported_and_the_connection_kept(page):
    def on_connect(conn):
        conn.authed()
        conn.send("{not json")
        conn.send("[1, 2]")
        conn.send('{"v":1,"svc":"sys"}')
        conn.sys("surprise")
        conn.send({"v": 1, "svc": "room", "type": "redecorated", "room": "lobby"})
        conn.send({"v": 1, "svc": "sys", "type": "error"})          # no data: still no crash
        conn.send({"v": 1, "svc": "chat", "type": "msg", "room": "lobby", "data": {"from": "bob", "msg": "still here"}})
    fake = FakeGateway(page, on_connect)
    make(page)
    connect(page)
    page.wait_for_function("c.events('message').length === 1")
    errors = events(page, "error")
    assert [e["code"] for e in errors] == ["MALFORMED", "MALFORMED", "MALFORMED", "UNKNOWN_TYPE", "UNKNOWN_TYPE", None]
    assert "{not json" in errors[0]["message"]
    assert events(page, "message")[0]["data"] == {"from": "bob", "msg": "still here"}
    assert page.evaluate("c.state") == "open" and len(fake.conns) == 1
    assert page.evaluate("c.presence('lobby').catch((e) => e.code)") is not None   # still talking


def test_short_binary_frames_are_ignored_and_reported(page):
    def on_connect(conn):
        conn.authed()
        for frame in (b"", b"\x01", b"\x01\x02", b"\x01\x02\x01\x00\x00\x00"):    # the last: SEQ flag, 3 bytes of seq
            conn.send(frame)
        conn.send(b"\x01\x07\x01" + struct.pack("<I", 42) + b"xy")
        conn.send(b"\x02\x09\x00")
    fake = FakeGateway(page, on_connect)
    make(page)
    connect(page)
    page.wait_for_function("c.events('hot').length === 2")
    errors = events(page, "error")
    assert [e["code"] for e in errors] == ["BAD_FRAME"] * 4
    assert "0 bytes" in errors[0]["message"] and "6 bytes" in errors[3]["message"]
    hot = events(page, "hot")
    assert hot[0] == {"svc": 1, "op": 7, "flags": 1, "seq": 42, "payload": list(b"xy")}
    assert hot[1]["svc"] == 2 and hot[1]["op"] == 9 and hot[1]["payload"] == [] and hot[1].get("seq") is None
    assert page.evaluate("c.state") == "open" and len(fake.conns) == 1


def test_hot_lane_encoding_and_ack(page):
    def on_message(conn, msg):
        if isinstance(msg, bytes) and msg[2] & 0x02:
            conn.send(bytes([msg[0], msg[1], 0x05]) + msg[3:7])     # IS_ACK|SEQ_PRESENT, as the relay does
    fake = FakeGateway(page, on_message=on_message)
    make(page)
    connect(page)
    assert page.evaluate("c.sendHot(1, 3, new Uint8Array([9, 8]))") is True
    page.evaluate("c.sendHot(1, 4, 'hé', {ack: true})")      # resolves on the ack frame
    page.evaluate("c.sendHot(1, 4, new Uint8Array([1]).buffer, {ack: true})")
    frames = [m for m in fake.last.received if isinstance(m, bytes)]
    assert frames[0] == b"\x01\x03\x00\x09\x08"
    assert frames[1] == b"\x01\x04\x03" + struct.pack("<I", 1) + "hé".encode()
    assert frames[2] == b"\x01\x04\x03" + struct.pack("<I", 2) + b"\x01"
    # encode/decode helpers round-trip
    got = page.evaluate("plain(W.decodeHot(W.encodeHot(200, 255, new Uint8Array([1, 2, 3]), W.HOT_SEQ, 0xfffffffe)))")
    assert got == {"svc": 200, "op": 255, "flags": 1, "seq": 0xfffffffe, "payload": [1, 2, 3]}


# -- requests: timeouts, errors, sends while reconnecting -----------------------------
def test_request_without_answer_is_rejected_at_its_timeout_and_sent_once(page):
    fake = FakeGateway(page)      # answers pings and joins only
    make(page, opts="timeout: 10000")
    connect(page)
    t0 = page.evaluate("performance.now()")
    err = page.evaluate("c.request('match', 'move', {x: 1}, {timeout: 300}).then(() => null, (e) => [plain(e), performance.now()])")
    assert err[0]["code"] == "TIMEOUT" and 290 <= err[1] - t0 < 5000     # its own timeout, not the client's
    page.wait_for_timeout(300)
    sent = fake.last.sent("match", "move")
    assert len(sent) == 1
    assert sent[0] == {"v": 1, "svc": "match", "type": "move", "flags": 4, "seq": sent[0]["seq"], "data": {"x": 1}}


def test_request_resolves_with_the_reply_and_rejects_with_the_error_code(page):
    def on_message(conn, msg):
        if msg.get("svc") == "match":
            if msg["type"] == "move":
                conn.send({"v": 1, "svc": "match", "type": "reply", "seq": msg["seq"], "data": {"ok": msg["data"]}})
                conn.sys("ack", seq=msg["seq"])
            else:
                conn.sys("error", data={"code": "NOT_ALLOWED", "msg": "no"}, seq=msg["seq"], trace_id="t1-1")
        elif msg.get("svc") == "chat":
            conn.sys("ack", seq=msg["seq"])
    FakeGateway(page, on_message=on_message)
    make(page)
    connect(page)
    assert page.evaluate("c.request('match', 'move', 5, {room: 'r'})") == {"ok": 5}
    err = page.evaluate("c.request('match', 'other').catch((e) => plain(e))")
    assert err["code"] == "NOT_ALLOWED" and err["message"] == "no" and isinstance(err["seq"], int)
    assert page.evaluate("c.send('r', 'hi')") is None
    assert events(page, "error") == []       # a rejected request is not also an `error` event


def test_send_while_reconnecting_is_rejected_and_never_sent_later(page):
    def on_message(conn, msg):
        if msg.get("type") == "join":
            conn.sys("joined", room=msg["room"])
            if len(fake.conns) == 1 and msg["room"] == "b":
                conn.close(1011)
    fake = FakeGateway(page, on_message=on_message)
    # the reconnect waits 1.5 s: long enough for the calls below to run while it is pending,
    # even on a loaded host
    make(page, opts="minDelay: 1500, maxDelay: 1500")
    connect(page)
    page.evaluate("c.join('a').then(() => c.join('b'))")
    page.wait_for_function("c.state === 'reconnecting'")
    err = page.evaluate("c.send('lobby', 'lost?').then(() => null, (e) => plain(e))")
    assert err["code"] == "DISCONNECTED"
    assert page.evaluate("c.join('other').catch((e) => e.code)") == "DISCONNECTED"
    assert page.evaluate("c.sendHot(1, 1, new Uint8Array([1]))") is False
    assert page.evaluate("c.leave('a')") is None        # not connected: forgotten, not re-joined
    page.wait_for_function("c.state === 'open'")
    page.wait_for_timeout(200)
    assert len(fake.conns) == 2
    assert [m["room"] for m in fake.conns[1].sent("room", "join")] == ["b"]
    assert all(not c.sent("chat", "send") and not c.sent("room", "leave") for c in fake.conns)
    assert not [m for c in fake.conns for m in c.received if isinstance(m, bytes)]


def test_pending_requests_are_rejected_when_the_link_drops_and_not_resent(page):
    def on_message(conn, msg):
        if msg.get("svc") == "chat" and len(fake.conns) == 1:
            conn.close(1011)      # the answer never comes: the connection goes first
    fake = FakeGateway(page, on_message=on_message)
    make(page)
    connect(page)
    err = page.evaluate("c.send('lobby', 'once').then(() => null, (e) => plain(e))")
    assert err["code"] == "DISCONNECTED"
    page.wait_for_function("c.state === 'open'")
    page.wait_for_timeout(200)
    assert [len(c.sent("chat", "send")) for c in fake.conns] == [1, 0]


def test_sys_ping_notices_a_dead_link_and_reconnects(page):
    def on_message(conn, msg):
        if msg.get("type") == "ping" and len(fake.conns) == 1:
            return               # the first link is dead: no pong, nothing else either
        if msg.get("type") == "ping":
            conn.sys("pong")
    fake = FakeGateway(page, on_message=on_message)
    make(page, opts="pingInterval: 200, timeout: 300")
    connect(page)
    page.wait_for_function("c.events('state').some((s) => s[0] === 'reconnecting')", timeout=3000)
    page.wait_for_function("c.state === 'open'")
    assert len(fake.conns[0].sent("sys", "ping")) == 1
    reconnecting = [s for s in events(page, "state") if s[0] == "reconnecting"][0]
    assert reconnecting[1]["reason"] == "no answer to sys:ping"
    page.wait_for_timeout(1000)     # a live link answers: the client stays on it
    assert len(fake.conns) == 2 and len(fake.conns[1].sent("sys", "ping")) >= 2


def test_online_and_visibility_make_a_waiting_client_try_now(page):
    def on_connect(conn):
        conn.authed()
        if len(fake.conns) == 1:
            conn.close(1011)
    fake = FakeGateway(page, on_connect)
    make(page, opts="minDelay: 60000, maxDelay: 60000")
    page.evaluate("c.connect().catch(() => {})")
    page.wait_for_function("c.state === 'reconnecting'")
    page.evaluate("window.dispatchEvent(new Event('online'))")
    page.wait_for_function("c.state === 'open'", timeout=2000)
    assert len(fake.conns) == 2
    # once more, through visibilitychange (the tab comes back to the front)
    fake.last.close(1011)
    page.wait_for_function("c.state === 'reconnecting'")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_function("c.state === 'open'", timeout=2000)
    assert len(fake.conns) == 3
    # visible again while open: a sys:ping checks the link at once
    pings = len(fake.last.sent("sys", "ping"))
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(100)
    assert len(fake.last.sent("sys", "ping")) == pings + 1


# -- recovery (SPEC 13), as the gateway will speak it once history exists ------------------
def chat(room, offset, epoch, text):
    return {"v": 1, "svc": "chat", "type": "msg", "room": room, "data": {"from": "bob", "msg": text},
            "offset": offset, "epoch": epoch}


def test_recovery_rejoins_with_since_drops_replayed_offsets_and_surfaces_recovered(page):
    def on_message(conn, msg):
        if msg.get("type") != "join":
            return
        since = (msg.get("data") or {}).get("since")
        if since is None:                       # first join: room position, then live traffic
            conn.sys("joined", room="lobby", data={"offset": 0, "epoch": "e1"})
            for i in (1, 2, 3):
                conn.send(chat("lobby", i, "e1", f"m{i}"))
            conn.close(1011)
        else:                                   # a replay from since+1... that also repeats 2 and 3
            for i in (2, 3, 4, 5):
                conn.send(chat("lobby", i, "e1", f"m{i}"))
            conn.sys("joined", room="lobby", data={"offset": 5, "epoch": "e1", "recovered": True})
            conn.send(chat("lobby", 5, "e1", "m5"))      # a live copy of one replayed: dropped too
            conn.send(chat("lobby", 6, "e1", "m6"))
    fake = FakeGateway(page, on_message=on_message)
    make(page)
    connect(page)
    page.evaluate("c.join('lobby')")
    page.wait_for_function("c.events('message').length >= 6")
    page.wait_for_timeout(100)
    assert [m["data"]["msg"] for m in events(page, "message")] == ["m1", "m2", "m3", "m4", "m5", "m6"]
    rejoin = fake.conns[1].sent("room", "join")
    assert rejoin == [{"v": 1, "svc": "room", "type": "join", "room": "lobby", "seq": rejoin[0]["seq"],
                       "data": {"since": {"offset": 3, "epoch": "e1"}}}]
    joined = [present(j) for j in events(page, "joined")]
    assert joined[0] == {"room": "lobby", "rejoin": False, "offset": 0, "epoch": "e1"}
    assert joined[1] == {"room": "lobby", "rejoin": True, "recovered": True, "offset": 5, "epoch": "e1"}
    assert page.evaluate("c.position('lobby')") == {"offset": 6, "epoch": "e1"}


def test_recovery_with_a_new_epoch_reports_not_recovered_and_keeps_the_new_messages(page):
    def on_message(conn, msg):
        if msg.get("type") != "join":
            return
        if len(fake.conns) == 1:
            conn.sys("joined", room="lobby", data={"offset": 7, "epoch": "old"})
            conn.send(chat("lobby", 8, "old", "before restart"))
            conn.close(1001)
        else:
            assert msg["data"] == {"since": {"offset": 8, "epoch": "old"}}
            conn.send(chat("lobby", 1, "new", "after restart"))      # offsets start again: not dropped
            conn.sys("joined", room="lobby", data={"offset": 1, "epoch": "new", "recovered": False})
    fake = FakeGateway(page, on_message=on_message)
    make(page)
    connect(page)
    page.evaluate("c.join('lobby')")
    page.wait_for_function("c.events('joined').length === 2")
    assert [m["data"]["msg"] for m in events(page, "message")] == ["before restart", "after restart"]
    assert events(page, "joined")[1]["recovered"] is False
    assert page.evaluate("c.position('lobby')") == {"offset": 1, "epoch": "new"}


def test_without_history_rejoin_sends_no_since_and_a_failed_rejoin_is_an_error(page):
    def on_message(conn, msg):
        if msg.get("type") != "join":
            return
        assert "data" not in msg                  # no epoch ever seen: a plain join
        if len(fake.conns) == 1:
            conn.sys("joined", room=msg["room"])
            if msg["room"] == "b":
                conn.close(1011)
        elif msg["room"] == "a":
            conn.sys("joined", room="a")
        else:
            conn.sys("error", data={"code": "RESOURCE_EXHAUSTED", "msg": "room limit"}, seq=msg["seq"], trace_id="t")
    fake = FakeGateway(page, on_message=on_message)
    make(page)
    connect(page)
    page.evaluate("c.join('a').then(() => c.join('b'))")
    page.wait_for_function("c.events('joined').length === 3 && c.events('error').length === 1")
    err = events(page, "error")[0]
    assert err["code"] == "RESOURCE_EXHAUSTED" and err["room"] == "b"
    assert page.evaluate("[...c.rooms.keys()]") == ["a"]
    assert present(events(page, "joined")[2]) == {"room": "a", "rejoin": True}
    assert json.dumps(fake.conns[1].sent("room", "join")).count('"since"') == 0
