"""SPEC section 15: in-process Python services, over real sockets.

The services under test live in tests/integration/pyservices.py; the gateway imports them
by their `python:` path, as it would a user's module.
"""
import asyncio
import logging
import subprocess
import sys
import time

import pytest

from tests.client import (
    PING, PONG, connect_authed, error_of, expect_close, expect_silence, joined, recv, recv_json, request, run,
    send_json,
)
from tests.integration import pyservices
from tests.integration.backend_app import sample, scrape

M = "tests.integration.pyservices"
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]

YAML = f"""
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "sys:*", "match:*", "count:*", "hooks:*", "nomsg:*", "tick:*"]
      hot_allowlist: ["1:*", "7:*", "8:1"]
      hot_requires_active_room: false
      rate_limit_rps: 100000
      rate_limit_burst: 100000
    services:
      match: {{python: "{M}:Echo", hot_svc_id: 7, timeout_ms: 300, max_inflight_per_session: 3,
              options: {{greeting: hi}}}}
      count: {{python: "{M}:Counter"}}
      hooks: {{python: "{M}:Hooks"}}
      nomsg: {{python: "{M}:NoMessages"}}
      tick: {{python: "{M}:Ticker"}}
  - id: quiet
    policy:
      ext_allowlist: ["match:*", "room:*"]
      hot_allowlist: ["7:*"]
      hot_error_mode: silent
      hot_requires_active_room: false
    services:
      match: {{python: "{M}:Echo", hot_svc_id: 7}}
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def match(type_, **fields) -> dict:
    msg = {"v": 1, "svc": "match", "type": type_}
    msg.update(fields)
    return msg


def service(g, svc="match", tenant="acme"):
    return g.call(lambda: g.tenant(tenant).services[svc].instance)


async def eventually(check, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- on_message ------------------------------------------------------------------------

def test_reply_then_ack_with_ctx_and_options(g):
    async def main():
        ws, authed = await connect_authed(g.url(ticket="dev:ann", sid="tab-1"))
        assert await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "m:1"}) == joined("m:1")
        await send_json(ws, match("echo", seq=5, flags=4, room="m:1", data={"x": [1, 2]}))
        reply, ack = await recv_json(ws), await recv_json(ws)
        await ws.close()
        return reply, ack
    reply, ack = run(main())
    assert reply == {"v": 1, "svc": "match", "type": "reply", "seq": 5, "data": {
        "data": {"x": [1, 2]}, "user": "ann", "tenant": "acme", "sid": "tab-1",
        "rooms": ["m:1"], "active": "m:1", "opt": "hi"}}
    assert ack == {"v": 1, "svc": "sys", "type": "ack", "seq": 5}
    assert ("echo", "m:1", 5, {"x": [1, 2]}) in service(g).seen


def test_none_sends_no_reply_only_the_ack(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, match("none", seq=9, flags=4))
        ack = await recv_json(ws)
        await send_json(ws, match("none"))                 # no seq: nothing at all
        await expect_silence(ws)
        await ws.close()
        return ack
    assert run(main()) == {"v": 1, "svc": "sys", "type": "ack", "seq": 9}


def test_absent_fields_are_none_and_reply_has_no_seq(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:bare"))
        reply = await request(ws, match("whatever"))
        await ws.close()
        return reply
    assert run(main()) == {"v": 1, "svc": "match", "type": "reply", "data": {"type": "whatever"}}
    assert ("whatever", None, None, None) in service(g).seen


def test_service_error_code_no_ack_session_stays(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        err = await request(ws, match("refuse", seq=3, flags=4))
        odd = await request(ws, match("oddcode", seq=4))
        await expect_silence(ws)                          # no ack after an error
        pong = await request(ws, PING)
        await ws.close()
        return err, odd, pong
    err, odd, pong = run(main())
    assert error_of(err) == "NOT_ALLOWED" and err["data"]["msg"] == "not your turn" and err["seq"] == 3
    assert error_of(odd) == "INTERNAL" and odd["seq"] == 4          # not one of SPEC 3's codes
    assert pong == PONG


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_exception_on_every_message_is_internal_counted_logged_once(g):
    records = _Records()
    logger = logging.getLogger("wsprism.services")
    logger.addHandler(records)
    before = sample(scrape(g), "wsprism_service_errors_total", tenant="acme", lane="ext")
    try:
        async def main():
            ws, _ = await connect_authed(g.url(ticket="dev:bug"))
            errors = []
            for i in range(30):
                errors.append(await request(ws, match("boom", seq=i)))
            pong = await request(ws, PING)
            await ws.close()
            return errors, pong
        errors, pong = run(main())
    finally:
        logger.removeHandler(records)
    assert [error_of(e) for e in errors] == ["INTERNAL"] * 30
    assert [e["seq"] for e in errors] == list(range(30))
    assert errors[0]["data"]["msg"] == "internal error"          # nothing of the exception leaks
    assert pong == PONG
    logged = [r for r in records.records if "service bug" in r.getMessage()]
    assert len(logged) <= 1                                        # at most once per 10 s
    after = scrape(g)
    assert sample(after, "wsprism_service_errors_total", tenant="acme", lane="ext") == before + 30
    assert sample(after, "wsprism_service_calls_total", tenant="acme", service="match", hook="message",
                  outcome="exception") >= 30


def test_never_returning_call_times_out_others_unaffected(g):
    async def main():
        slow, _ = await connect_authed(g.url(ticket="dev:slow"))
        other, _ = await connect_authed(g.url(ticket="dev:other"))
        t0 = time.monotonic()
        await send_json(slow, match("forever", seq=1))
        await send_json(slow, match("forever", seq=2))       # queued behind it
        # the other session is served at once while the first waits
        reply = await request(other, match("none", seq=7, flags=4))
        t_other = time.monotonic() - t0
        first = await recv_json(slow)
        t_first = time.monotonic() - t0
        second = await recv_json(slow)
        t_second = time.monotonic() - t0
        await slow.close()
        await other.close()
        return reply, t_other, first, t_first, second, t_second
    reply, t_other, first, t_first, second, t_second = run(main())
    assert reply == {"v": 1, "svc": "sys", "type": "ack", "seq": 7} and t_other < 0.25
    assert error_of(first) == "TIMEOUT" and first["seq"] == 1 and "300 ms" in first["data"]["msg"]
    assert t_first >= 0.29
    # the second's timeout counts from its arrival, time queued behind the first included
    assert error_of(second) == "TIMEOUT" and second["seq"] == 2 and t_second < 0.55


def test_calls_run_in_a_task_of_their_own_even_when_started_eagerly(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        in_task = await request(ws, match("in_task", seq=1))
        inner = await request(ws, match("inner_timeout", seq=2))
        await ws.close()
        return in_task, inner
    in_task, inner = run(main())
    assert in_task["data"] == {"task": True, "same": True, "tg": "a"}
    assert inner["data"] == {"inner": "timed out"}


def test_context_variables_do_not_leak_between_calls(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ctxa"))
        b, _ = await connect_authed(g.url(ticket="dev:ctxb"))
        first = await request(a, match("mark", seq=1))                        # finishes at once
        second = await request(b, match("mark", seq=2, data={"await": True}))  # suspends
        third = await request(a, match("mark", seq=3))
        await a.close()
        await b.close()
        return first, second, third
    first, second, third = run(main())
    assert first["data"] == {"seen": None, "after": "ctxa"}
    assert second["data"] == {"seen": None, "after": "ctxb"}
    assert third["data"] == {"seen": None, "after": "ctxa"}


def test_a_services_own_timeout_error_is_internal_not_timeout(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        err = await request(ws, match("own_timeout", seq=1))
        await ws.close()
        return err
    assert error_of(run(main())) == "INTERNAL"


def test_per_session_order_and_no_head_of_line_blocking_across_sessions(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:oa"))
        b, _ = await connect_authed(g.url(ticket="dev:ob"))
        await send_json(a, match("sleep", seq=1, data={"s": 0.15, "n": 1}))
        await send_json(a, match("sleep", seq=2, data={"s": 0.0, "n": 2}))
        t0 = time.monotonic()
        b_reply = await request(b, match("sleep", seq=3, data={"s": 0.0, "n": 3}))
        t_b = time.monotonic() - t0
        first, second = await recv_json(a), await recv_json(a)
        await a.close()
        await b.close()
        return first, second, b_reply, t_b
    first, second, b_reply, t_b = run(main())
    assert [first["data"]["n"], second["data"]["n"]] == [1, 2]     # in order, though 2 was quicker
    assert b_reply["data"]["n"] == 3 and t_b < 0.12


def test_max_inflight_per_session(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:busy"))
        for i in range(3):
            await send_json(ws, match("sleep", seq=i, data={"s": 0.05, "n": i}))
        err = await request(ws, match("sleep", seq=99, data={"s": 0.0}))
        replies = [await recv_json(ws) for _ in range(3)]
        await ws.close()
        return err, replies
    err, replies = run(main())
    assert error_of(err) == "RESOURCE_EXHAUSTED" and err["seq"] == 99
    assert [r["data"]["n"] for r in replies] == [0, 1, 2]


def test_plain_def_on_message_runs_inline(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:inline"))
        out = [await request(ws, {"v": 1, "svc": "count", "type": "x", "seq": i}) for i in range(3)]
        await send_json(ws, {"v": 1, "svc": "count", "type": "x", "seq": 10, "flags": 4})
        reply, ack = await recv_json(ws), await recv_json(ws)
        boom = await request(ws, {"v": 1, "svc": "count", "type": "boom", "seq": 11})
        refused = await request(ws, {"v": 1, "svc": "count", "type": "refuse", "seq": 12})
        await ws.close()
        return out, reply, ack, boom, refused
    out, reply, ack, boom, refused = run(main())
    assert [o["svc"] for o in out] == ["count"] * 3 and [o["seq"] for o in out] == [0, 1, 2]
    assert reply["seq"] == 10 and ack == {"v": 1, "svc": "sys", "type": "ack", "seq": 10}
    assert error_of(boom) == "INTERNAL" and error_of(refused) == "RESOURCE_EXHAUSTED"


def test_service_without_on_message_is_an_unknown_service(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        err = await request(ws, {"v": 1, "svc": "nomsg", "type": "x", "seq": 1})
        await ws.close()
        return err
    err = run(main())
    assert error_of(err) == "NOT_ALLOWED" and err["data"]["msg"] == "unknown service"


def test_allowlist_decides_first(g):
    async def main():
        ws, _ = await connect_authed(g.url(tenant="quiet"))
        err = await request(ws, {"v": 1, "svc": "count", "type": "x"})   # not in quiet's allowlist
        await ws.close()
        return err
    assert error_of(run(main())) == "NOT_ALLOWED"


# -- ctx and gw --------------------------------------------------------------------------

def test_gw_publish_send_to_user_presence(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:pa"))
        b, _ = await connect_authed(g.url(ticket="dev:pb"))
        for ws in (a, b):
            assert await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "pub"}) == joined("pub")
        await send_json(a, match("publish", seq=1, room="pub", data={"k": 1}))
        ev_a, reply = await recv_json(a), await recv_json(a)
        ev_b = await recv_json(b)
        sent = await request(a, match("send_to_user", data={"user": "pb"}))
        note = await recv_json(b)
        pres = await request(a, match("presence", room="pub"))
        direct = await request(a, match("send"))
        await a.close()
        await b.close()
        return ev_a, reply, ev_b, sent, note, pres, direct
    ev_a, reply, ev_b, sent, note, pres, direct = run(main())
    event = {"v": 1, "svc": "match", "type": "event", "room": "pub", "data": {"k": 1}}
    assert ev_a == ev_b == event
    assert reply["data"] == {"delivered": 2}                 # the sender's copy came before its reply
    assert sent["data"] == {"delivered": 1}
    assert note == {"v": 1, "svc": "match", "type": "note", "data": {"from": "pa"}}
    assert pres["data"] == {"count": 2, "users": ["pa", "pb"]}
    assert direct == {"v": 1, "svc": "match", "type": "direct", "data": {"to": "pa"}}


def test_gw_disconnect_by_sid_and_ctx_close(g):
    async def main():
        victim, _ = await connect_authed(g.url(ticket="dev:victim", sid="kill-me"))
        admin, _ = await connect_authed(g.url(ticket="dev:admin"))
        reply = await request(admin, match("disconnect", data={"sid": "kill-me"}))
        code = await expect_close(victim)
        closer, _ = await connect_authed(g.url(ticket="dev:closer"))
        await send_json(closer, match("close"))
        code2 = await expect_close(closer)
        await admin.close()
        return reply, code, code2
    reply, code, code2 = run(main())
    assert reply["data"] == {"closed": 1} and code == 4006 and code2 == 4100


def test_ctx_send_hot(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, match("send_hot", seq=1))
        got = [await recv(ws), await recv(ws)]
        await ws.close()
        return got
    got = run(main())
    binary = [m for m in got if isinstance(m, bytes)]
    assert binary == [bytes([7, 9, 0]) + b"direct"]


def test_every_timer_publishes_and_errors_do_not_stop_it(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:watch"))
        await ws.send('{"v":1,"svc":"room","type":"join","room":"tick"}')
        msgs = []
        while len([m for m in msgs if m.get("svc") == "ticker"]) < 3:
            msgs.append(await recv_json(ws))
        await ws.close()
        return msgs
    ticks = [m for m in run(main()) if m.get("svc") == "ticker"]
    ns = [m["data"]["n"] for m in ticks]
    assert ns == sorted(ns) and len(set(ns)) == 3
    t = service(g, "tick")
    assert g.call(lambda: t.errors) >= 1 and g.call(lambda: t.ticks) >= 3


def test_on_start_ran_before_clients(g):
    echo, counter = service(g), service(g, "count")
    assert g.call(lambda: echo.started) is True
    assert g.call(lambda: counter.timer.active) is True


# -- on_hot ---------------------------------------------------------------------------

def test_on_hot_publish_hot_to_the_room_and_ack(g):
    async def main():
        a, _ = await connect_authed(g.url(ticket="dev:ha"))
        b, _ = await connect_authed(g.url(ticket="dev:hb"))
        for ws in (a, b):
            assert await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "hot"}) == joined("hot")
        await a.send(bytes([7, 5, 0x03, 1, 0, 0, 0]) + b"move")     # SEQ_PRESENT | ACK_REQUESTED
        got_a = [await recv(a), await recv(a)]
        got_b = await recv(b)
        await a.close()
        await b.close()
        return got_a, got_b
    got_a, got_b = run(main())
    assert got_b == bytes([7, 5, 0]) + b"move"
    assert sorted(got_a) == sorted([bytes([7, 5, 0]) + b"move", bytes([7, 5, 0x05, 1, 0, 0, 0])])
    assert (5, 3, b"move") in service(g).hot


def test_on_hot_errors_sys_error_mode_and_silent_mode(g):
    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:hoterr"))
        await ws.send(bytes([7, 66, 0x03, 2, 0, 0, 0]) + b"x")      # ServiceError: no ack
        refused = await recv_json(ws)
        await ws.send(bytes([7, 99, 0]) + b"x")                      # any other exception
        internal = await recv_json(ws)
        await expect_silence(ws)
        await ws.close()
        quiet, _ = await connect_authed(g.url(tenant="quiet"))
        await quiet.send(bytes([7, 99, 0]))
        await expect_silence(quiet)
        pong = await request(quiet, {"v": 1, "svc": "sys", "type": "ping"})
        await quiet.close()
        return refused, internal, pong
    before = sample(scrape(g), "wsprism_service_errors_total", tenant="acme", lane="hot")
    refused, internal, pong = run(main())
    assert error_of(refused) == "NOT_ALLOWED" and refused["data"]["msg"] == "op 66 refused"
    assert error_of(internal) == "INTERNAL"
    assert pong == PONG
    assert sample(scrape(g), "wsprism_service_errors_total", tenant="acme", lane="hot") == before + 2


def test_hot_allowlist_and_svc_id_without_service(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        await ws.send(bytes([8, 2, 0]))        # 8:2 is not in the allowlist (only 8:1)
        denied = await recv_json(ws)
        await ws.send(bytes([8, 1, 0]))        # allowed, but no service has hot_svc_id 8
        no_service = await recv_json(ws)
        await ws.close()
        return denied, no_service
    denied, no_service = run(main())
    assert error_of(denied) == "NOT_ALLOWED" and "hot_allowlist" in denied["data"]["msg"]
    assert error_of(no_service) == "NOT_ALLOWED" and no_service["data"]["msg"] == "no service for this svc_id"


def test_blocking_on_hot_shows_in_the_dispatch_histogram(g):
    """A service that blocks the loop for 200 ms in on_hot (docs/services.md warns against
    it): the sampled Hot Lane dispatch histogram shows it."""
    lane = g.call(lambda: g.tenant().lane)

    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:blocker"))
        # quick frames until the next one is the sampled one (1 in 64)
        while g.call(lambda: lane.hot_seq) % 64 != 63:
            await ws.send(bytes([7, 1, 0]))
            await asyncio.sleep(0.002)
        await ws.send(bytes([7, 200, 0]))
        pong = await request(ws, PING)
        await ws.close()
        return pong
    assert run(main()) == PONG
    m = scrape(g)
    slow = sample(m, "wsprism_dispatch_duration_seconds_count", tenant="acme", lane="hot") - \
        sample(m, "wsprism_dispatch_duration_seconds_bucket", tenant="acme", lane="hot", le="0.1")
    assert slow >= 1


# -- hooks ----------------------------------------------------------------------------

def test_join_leave_disconnect_hooks_in_order(g):
    hooks = service(g, "hooks")

    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:hooked"))
        for room in ("h1", "h2"):
            await request(ws, {"v": 1, "svc": "room", "type": "join", "room": room})
        await request(ws, {"v": 1, "svc": "room", "type": "leave", "room": "h1"})
        await ws.close()
        await eventually(lambda: g.call(lambda: ("gone", "hooked", False) in hooks.seen))
    run(main())
    mine = [e for e in g.call(lambda: list(hooks.seen)) if e[1] == "hooked"]
    assert mine == [("join", "hooked", "h1"), ("join", "hooked", "h2"), ("leave", "hooked", "h1"),
                    ("leave", "hooked", "h2"), ("gone", "hooked", False)]


def test_on_stop_after_drain_and_timers_cancelled(gateway_factory):
    g2 = gateway_factory(f"""
version: 1
gateway: {{listen: "127.0.0.1:0"}}
tenants:
  - id: s
    services:
      stopper: {{python: "{M}:Counter", options: {{tick_ms: 10}}}}
""")
    svc = g2.call(lambda: g2.tenant("s").services["stopper"].instance)
    timer = svc.timer
    g2.stop()
    assert "stopper" in pyservices.STOPPED
    assert not timer.active
    ticks = svc.ticks
    time.sleep(0.05)
    assert svc.ticks == ticks


# -- reload ---------------------------------------------------------------------------

def test_reload_applies_timeouts_and_logs_code_changes(g):
    from wsprism.config import parse_config

    records = _Records()
    logger = logging.getLogger("wsprism.gateway")
    logger.addHandler(records)
    new = YAML.replace("timeout_ms: 300", "timeout_ms: 350").replace("greeting: hi", "greeting: hello")
    try:
        g.call(lambda: g.gw.reload(parse_config(new)))
    finally:
        logger.removeHandler(records)
    svc = g.call(lambda: g.tenant().services["match"])
    assert svc.timeout == 0.35
    assert svc.instance.options == {"greeting": "hi"}            # options need a restart
    assert any("needs a restart" in r.getMessage() and "match" in r.getMessage() for r in records.records)
    g.call(lambda: g.gw.reload(parse_config(YAML)))


# -- bad services at start: one line naming the path, exit 2 -------------------------------

BAD = """
version: 1
gateway: {{listen: "127.0.0.1:0"}}
tenants:
  - id: t
    services:
      ok: {{python: "{m}:Echo", hot_svc_id: 9}}
      bad: {{{entry}}}
"""


@pytest.mark.parametrize("entry, expected", [
    ('python: "tests.integration.no_such_module:X"',
     "tenants[0].services.bad.python: cannot import 'tests.integration.no_such_module': ModuleNotFoundError"),
    (f'python: "{M}:Missing"', f"tenants[0].services.bad.python: module '{M}' has no attribute 'Missing'"),
    (f'python: "{M}:NotAService"', f"tenants[0].services.bad.python: '{M}:NotAService' is not a wsprism.service.Service subclass"),
    (f'python: "{M}:Broken"', "tenants[0].services.bad.python: Broken(options) raised RuntimeError: cannot start: no database"),
    (f'python: "{M}:NoHot", hot_svc_id: 5', "tenants[0].services.bad.hot_svc_id: NoHot has no on_hot for Hot Lane frames"),
    (f'python: "{M}:Echo", hot_svc_id: 9', "tenants[0].services.bad.hot_svc_id: hot_svc_id 9 is also used by tenants[0].services.ok"),
    (f'python: "{M}:Echo", hot_svc_id: 1', "tenants[0].services.bad.hot_svc_id: must be 2-255, got 1"),
    (f'python: "{M}:Echo", hot_svc_id: 0', "tenants[0].services.bad.hot_svc_id: must be 2-255, got 0"),
    (f'python: "{M}:Echo", hot_svc_id: 256', "tenants[0].services.bad.hot_svc_id: must be 2-255, got 256"),
    (f'python: "{M}:FailsToStart"', "cannot start: tenants[0].services.bad: on_start raised ConnectionError: database down"),
])
def test_bad_service_fails_start_with_its_path(tmp_path, entry, expected):
    cfg = tmp_path / "wsprism.yaml"
    cfg.write_text(BAD.format(m=M, entry=entry))
    r = subprocess.run([sys.executable, "-m", "wsprism", "start", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert expected in last and "Traceback" not in last
    if "on_start" not in expected:             # (on_start's traceback is logged, above the line)
        assert "Traceback" not in r.stderr


def test_check_imports_services_but_does_not_build_them(tmp_path):
    cfg = tmp_path / "wsprism.yaml"
    cfg.write_text(BAD.format(m=M, entry=f'python: "{M}:Broken"'))
    r = subprocess.run([sys.executable, "-m", "wsprism", "check", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 0, r.stderr                # Broken only fails when built
    cfg.write_text(BAD.format(m=M, entry=f'python: "{M}:NotAService"'))
    r = subprocess.run([sys.executable, "-m", "wsprism", "check", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 2 and "tenants[0].services.bad.python" in r.stderr
