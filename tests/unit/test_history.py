"""The in-memory history store and the recovery decision (wsprism/core/history.py); the
feed and join cursor of history with a broker (wsprism/cluster_history.py) on a fake broker."""
import asyncio
import json
import tracemalloc

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsprism.core.envelope import encode_message, encode_room_parts
from wsprism.core.history import (
    ABORTED, AHEAD, OTHER_EPOCH, RECOVERED, TRIMMED, U64_MAX, UNAVAILABLE, BadSince, HistoryStore, Since, _payload, decide,
    decode_since, new_epoch,
)

BIG = 1 << 40


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def epochs():
    n = iter(range(1, 1 << 30))
    return lambda: f"E{next(n)}"


def store(size=100, ttl_ms=10_000):
    clock = Clock()
    return HistoryStore(size, ttl_ms, clock=clock, epochs=epochs()), clock


def msg(i: int, room: str = "r"):
    return encode_room_parts("chat", "msg", room, {"from": "u", "msg": f"m{i}"})


def publish(s, room: str, i: int) -> bytes:
    return s.publish(room, *msg(i, room))


def decoded(frames) -> list:
    return [json.loads(_payload(f)) for f in frames]


def offsets(frames) -> list[int]:
    return [m["offset"] for m in decoded(frames)]


# -- join data -------------------------------------------------------------------------

def since_of(raw: bytes):
    return decode_since(msgspec.Raw(raw))


@pytest.mark.parametrize("raw,expected", [
    (b'{"since":{"offset":17,"epoch":"abc"}}', Since(17, "abc")),
    (b'{"since":{"epoch":"abc","offset":0}}', Since(0, "abc")),
    (b'{"since":{"offset":18446744073709551615,"epoch":""}}', Since(U64_MAX, "")),
    (b'{"since":null}', None),
    (b'{}', None),
    (b'null', None),
    (b'{"other":[1,{"x":2}],"since":{"offset":1,"epoch":"e"}}', Since(1, "e")),
])
def test_since_accepted(raw, expected):
    assert since_of(raw) == expected


def test_since_absent_data():
    assert decode_since(msgspec.UNSET) is None


@pytest.mark.parametrize("raw,words", [
    (b'{"since":{"offset":"17","epoch":"e"}}', ["data.since", "got `str`"]),
    (b'{"since":{"offset":-1,"epoch":"e"}}', ["data.since", ">= 0"]),
    (b'{"since":{"offset":17.0,"epoch":"e"}}', ["data.since", "got `float`"]),
    (b'{"since":{"offset":1e3,"epoch":"e"}}', ["data.since", "got `float`"]),
    (b'{"since":{"offset":true,"epoch":"e"}}', ["data.since", "got `bool`"]),
    (b'{"since":{"offset":18446744073709551616,"epoch":"e"}}', ["data.since.offset out of range (u64)"]),
    (b'{"since":{"offset":99999999999999999999999999999,"epoch":"e"}}', ["out of range (u64)"]),
    (b'{"since":{"offset":1,"epoch":5}}', ["data.since", "got `int`"]),
    (b'{"since":{"offset":1,"epoch":null}}', ["data.since", "got `null`"]),
    (b'{"since":{"offset":1}}', ["data.since", "missing required field `epoch`"]),
    (b'{"since":{"epoch":"e"}}', ["data.since", "missing required field `offset`"]),
    (b'{"since":{"offset":1,"epoch":"e","x":1}}', ["data.since", "unknown field `x`"]),
    (b'{"since":17}', ["data.since", "got `int`"]),
    (b'{"since":"17"}', ["data.since"]),
    (b'5', ["data must be an object"]),
    (b'"x"', ["data must be an object"]),
    (b'[]', ["data must be an object"]),
])
def test_since_malformed(raw, words):
    with pytest.raises(BadSince) as info:
        since_of(raw)
    for w in words:
        assert w in info.value.msg


# -- the decision ----------------------------------------------------------------------

@pytest.mark.parametrize("since,epoch,top,first,expected", [
    ((17, "E"), "E", 20, 1, (18, RECOVERED)),
    ((20, "E"), "E", 20, 1, (21, RECOVERED)),         # up to date: nothing to replay
    ((20, "E"), "E", 20, 21, (21, RECOVERED)),        # up to date, messages all expired
    ((0, "E"), "E", 0, 1, (1, RECOVERED)),            # quiet room, nothing ever published
    ((0, "E"), "E", 5, 1, (1, RECOVERED)),            # joined a quiet room, all since held
    ((0, "E"), "E", 5, 2, (2, TRIMMED)),              # the first message is gone
    ((10, "E"), "E", 120, 21, (21, TRIMMED)),         # gap larger than size
    ((19, "E"), "E", 120, 21, (21, TRIMMED)),
    ((20, "E"), "E", 120, 21, (21, RECOVERED)),       # exactly at the edge
    ((21, "E"), "E", 20, 1, (1, AHEAD)),
    ((U64_MAX, "E"), "E", 20, 11, (11, AHEAD)),
    ((17, "F"), "E", 20, 1, (1, OTHER_EPOCH)),
    ((17, ""), "E", 20, 21, (21, OTHER_EPOCH)),
])
def test_decide(since, epoch, top, first, expected):
    assert decide(since[0], since[1], epoch, top, first) == expected


# -- wire form -------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    {"from": "alice", "msg": 'he said "hi" \u00e9\u2028'},
    msgspec.Raw(b'{"a":[1,2,3]}'),
    msgspec.Raw(b'"text"'),
    None,
    msgspec.UNSET,
])
def test_room_parts_are_encode_message(data):
    head, tail = encode_room_parts("svc", "type", "room:1", data)
    assert head + tail == encode_message("svc", "type", "room:1", data)


def test_published_message_carries_position_once_encoded():
    s, _ = store()
    frame = publish(s, "lobby", 1)
    m = json.loads(_payload(frame))
    assert m == {"v": 1, "svc": "chat", "type": "msg", "room": "lobby", "offset": 1, "epoch": "E1",
                 "data": {"from": "u", "msg": "m1"}}
    assert list(m) == ["v", "svc", "type", "room", "offset", "epoch", "data"]
    assert s.rooms["lobby"].frame_at(1) is frame            # stored once: the fanned-out object
    assert frame[0] == 0x81


def test_payload_of_every_frame_header_size():
    s, _ = store()
    for n in (10, 200, 70_000):
        head, tail = encode_room_parts("chat", "msg", "r", {"msg": "x" * n})
        frame = s.publish("r", head, tail)
        assert json.loads(_payload(frame))["data"]["msg"] == "x" * n


def test_epochs_are_json_safe_and_distinct():
    seen = {new_epoch() for _ in range(1000)}
    assert len(seen) == 1000
    for e in seen:
        assert len(e) == 12 and json.dumps(e) == f'"{e}"'


# -- the ring --------------------------------------------------------------------------

def test_offsets_per_room_from_one():
    s, _ = store()
    assert offsets([publish(s, "a", i) for i in range(3)]) == [1, 2, 3]
    assert offsets([publish(s, "b", i) for i in range(2)]) == [1, 2]
    assert s.position("a") == (3, "E1") and s.position("b") == (2, "E2")
    assert s.position("c") == (0, "E3")


def test_size_trims_oldest_first_and_ring_wraps():
    s, _ = store(size=5)
    for i in range(1, 23):
        publish(s, "r", i)
        rec = s.rooms["r"]
        assert rec.count == min(i, 5) and rec.top == i
        assert offsets(rec.frame_at(o) for o in range(rec.first, rec.top + 1)) == list(range(rec.first, i + 1))
    assert len(s.rooms["r"].frames) == 5
    assert s.count == 5 and s.nbytes == sum(len(f) for f in s.rooms["r"].frames)


def test_ring_grows_to_size_only():
    s, _ = store(size=100)
    publish(s, "r", 1)
    assert len(s.rooms["r"].frames) == 4
    for i in range(2, 10):
        publish(s, "r", i)
    assert len(s.rooms["r"].frames) == 16
    for i in range(10, 300):
        publish(s, "r", i)
    assert len(s.rooms["r"].frames) == 100


def test_ttl_is_per_message_age():
    s, clock = store(ttl_ms=10_000)
    for i in range(1, 6):
        publish(s, "r", i)
        clock.t += 1
    # messages at t=0..4 (relative); now 5
    clock.t += 5.5                          # now 10.5: offsets 1 (t=0) expired, 2 (t=1) not yet
    r = s.replay("r", Since(0, "E1"))
    assert r.outcome == TRIMMED and offsets(r.take(BIG)) == [2, 3, 4, 5]
    clock.t += 2                            # now 12.5: 2 and 3 expired as well
    r = s.replay("r", Since(3, "E1"))
    assert r.outcome == RECOVERED and offsets(r.take(BIG)) == [4, 5]
    assert s.count == 2


def test_publish_trims_expired_messages():
    s, clock = store(ttl_ms=10_000)
    for i in range(50):
        publish(s, "r", i)
    clock.t += 11
    publish(s, "r", 50)
    assert s.count == 1 and s.rooms["r"].first == 51


def test_size_lowered_by_reload():
    s, _ = store(size=50)
    for i in range(50):
        publish(s, "r", i)
    s.configure(10, 10_000)
    publish(s, "r", 50)
    rec = s.rooms["r"]
    assert rec.count == 10 and rec.first == 42 and len(rec.frames) == 10
    assert s.count == 10 and s.nbytes == rec.nbytes
    s.configure(20, 10_000)
    for i in range(30):
        publish(s, "r", i)
    assert rec.count == 20 and len(rec.frames) == 20
    assert offsets(rec.frame_at(o) for o in range(rec.first, rec.top + 1)) == list(range(62, 82))


def test_size_lowered_applies_to_reads_too():
    s, _ = store(size=50)
    for i in range(50):
        publish(s, "r", i)
    s.configure(10, 10_000)
    r = s.replay("r", Since(0, "E1"))
    assert r.outcome == TRIMMED and offsets(r.take(BIG)) == list(range(41, 51))
    assert s.count == 10


# -- replays ---------------------------------------------------------------------------

def test_replay_outcomes_are_counted():
    s, _ = store(size=10)
    for i in range(30):
        publish(s, "r", i)
    cases = [(Since(25, "E1"), RECOVERED, list(range(26, 31))),
             (Since(30, "E1"), RECOVERED, []),
             (Since(5, "E1"), TRIMMED, list(range(21, 31))),
             (Since(31, "E1"), AHEAD, list(range(21, 31))),
             (Since(25, "nope"), OTHER_EPOCH, list(range(21, 31)))]
    for since, outcome, got in cases:
        r = s.replay("r", since)
        assert (r.outcome, r.recovered) == (outcome, outcome == RECOVERED)
        assert offsets(r.take(BIG)) == got and r.done and r.finish() == (30, "E1", outcome == RECOVERED)
    assert s.outcomes == {RECOVERED: 2, TRIMMED: 1, AHEAD: 1, OTHER_EPOCH: 1, ABORTED: 0, UNAVAILABLE: 0}
    assert s.replayed == 5 + 30


def test_replay_in_chunks_follows_new_messages():
    s, _ = store(size=100)
    for i in range(20):
        publish(s, "r", i)
    r = s.replay("r", Since(0, "E1"))
    one = len(s.rooms["r"].frame_at(1))
    got = r.take(3 * one)
    assert offsets(got) == [1, 2, 3] and not r.done
    publish(s, "r", 20)                              # published while the replay is paced
    rest = []
    while not r.done:
        rest += r.take(5 * one)
    assert offsets(got + rest) == list(range(1, 22)) and r.recovered and r.top == 21
    assert r.take(BIG) == [] and r.done


def test_replay_that_falls_behind_the_ring_reports_the_loss():
    s, _ = store(size=10)
    for i in range(10):
        publish(s, "r", i)
    r = s.replay("r", Since(0, "E1"))
    got = r.take(1)
    assert offsets(got) == [1] and r.recovered
    for i in range(15):                               # a busy room trims what the cursor has not reached
        publish(s, "r", i)
    rest = r.take(BIG)
    assert offsets(rest) == list(range(16, 26)) and r.outcome == TRIMMED and not r.recovered
    assert r.finish() == (25, "E1", False) and s.outcomes[TRIMMED] == 1 and s.outcomes[RECOVERED] == 0


def test_take_hands_out_at_least_one_frame():
    s, _ = store()
    publish(s, "r", 1)
    r = s.replay("r", Since(0, "E1"))
    assert offsets(r.take(0)) == [1]


# -- records: members, ttl, sweep ------------------------------------------------------

def test_history_outlives_members_until_ttl_after_newest():
    s, clock = store(ttl_ms=10_000)
    s.occupied("r")
    publish(s, "r", 1)
    clock.t += 4
    s.vacated("r")                                    # the only member drops
    clock.t += 9.9                                    # 9.9 s after the leave
    assert not s.sweep()
    r = s.replay("r", Since(0, "E1"))
    assert r.recovered is False and r.outcome == TRIMMED        # message 1 (13.9 s old) expired
    r = s.replay("r", Since(1, "E1"))
    assert r.recovered                                          # but it had seen it: nothing missed
    clock.t += 0.1
    assert not s.sweep() and "r" not in s.rooms and s.count == 0
    assert s.position("r") == (0, "E2")                         # a new epoch: recovery says false


def test_quiet_room_keeps_its_epoch_while_members_stay():
    s, clock = store(ttl_ms=10_000)
    rec = s.occupied("r")
    publish(s, "r", 1)
    for _ in range(10):
        clock.t += 20
        s.sweep()
    assert s.rooms["r"] is rec and rec.count == 0 and s.nbytes == 0
    r = s.replay("r", Since(1, "E1"))
    assert r.recovered and r.take(BIG) == []
    s.vacated("r")
    clock.t += 9
    s.sweep()
    assert s.replay("r", Since(1, "E1")).recovered              # within ttl after the last member left
    clock.t += 1
    s.sweep()
    assert "r" not in s.rooms


def test_record_made_by_a_publish_without_members():
    s, clock = store(ttl_ms=10_000)
    publish(s, "r", 1)                               # e.g. the server API, nobody in the room
    assert not s.rooms["r"].pinned
    clock.t += 10
    s.sweep()
    assert "r" not in s.rooms


def test_occupied_keeps_an_existing_record():
    s, clock = store(ttl_ms=10_000)
    publish(s, "r", 1)
    rec = s.occupied("r")
    assert rec is s.rooms["r"] and rec.epoch == "E1" and rec.pinned
    clock.t += 30
    s.sweep()
    assert s.rooms["r"] is rec and rec.count == 0


def test_sweep_is_bounded_and_ordered_by_activity():
    s, clock = store(ttl_ms=10_000)
    t0 = clock.t
    for i in range(1200):
        clock.t = t0 + 0.01 * i
        publish(s, f"r{i}", i)
    clock.t = t0 + 12
    publish(s, "r0", 1)                              # r0 active again: at the back
    clock.t = t0 + 10 + 2.005                        # r1 .. r200 are due
    assert not s.sweep(budget=500)
    assert len(s.rooms) == 1000 and "r0" in s.rooms and "r200" not in s.rooms and "r201" in s.rooms
    clock.t = t0 + 10 + 9.005                        # r201 .. r900 are due: more than one batch
    assert s.sweep(budget=500) and len(s.rooms) == 500
    assert not s.sweep(budget=500) and len(s.rooms) == 300
    clock.t += 100
    assert not s.sweep(budget=500) and len(s.rooms) == 0
    assert s.count == 0 and s.nbytes == 0


def test_vacated_unknown_room_is_harmless():
    s, _ = store()
    s.vacated("nothing")
    assert not s.rooms


def test_clear():
    s, _ = store()
    publish(s, "r", 1)
    s.clear()
    assert (len(s.rooms), s.count, s.nbytes) == (0, 0, 0)


# -- the server API's read -------------------------------------------------------------

def test_read_pages_and_reports_gaps():
    s, _ = store(size=10)
    for i in range(25):
        publish(s, "r", i)
    epoch, top, out, complete = s.read("r", 16, None, 3)
    assert (epoch, top, complete) == ("E1", 25, True)
    assert [json.loads(p)["offset"] for p in out] == [17, 18, 19]
    epoch, top, out, complete = s.read("r", 0, None, 100)
    assert not complete and [json.loads(p)["offset"] for p in out] == list(range(16, 26))
    assert s.read("r", 25, "E1", 100)[2:] == ([], True)
    assert s.read("r", 20, "other", 2)[2:] == ([p for p in out[:2]], False)
    assert s.read("r", 30, None, 5)[3] is False                  # ahead
    assert s.read("new", 0, None, 5) == ("E2", 0, [], True)


# -- memory: the goal ----------------------------------------------------------

def test_memory_1000_rooms_of_100_messages():
    """1000 rooms × 100 messages of ~200 B as delivered (offset and epoch included):
    at most 30 MiB for everything the store holds."""
    s = HistoryStore(100, 300_000)
    text = "x" * 77
    head, tail = encode_room_parts("chat", "msg", "room:0000", {"from": "user-0000", "msg": text})
    sample = s.publish("probe", head, tail)
    s.clear()
    assert 195 <= len(_payload(sample)) <= 205, len(_payload(sample))
    parts = [encode_room_parts("chat", "msg", f"room:{r:04d}", {"from": f"user-{r:04d}", "msg": text})
             for r in range(1000)]
    names = [f"room:{r:04d}" for r in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            for name, (head, tail) in zip(names, parts):
                s.publish(name, head, tail)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert s.count == 100_000
    assert used <= 30 * 1024 * 1024, f"{used / 2**20:.1f} MiB"
    assert s.nbytes <= used


# -- against a model -------------------------------------------------------------------

class Model:
    """What the store must answer, computed the obvious way (everything kept in lists)."""

    def __init__(self, size, ttl) -> None:
        self.size, self.ttl = size, ttl
        self.rooms: dict = {}       # name -> dict(epoch, msgs=[(offset, t, frame)], first, pinned, active)

    def room(self, s, name, now):
        r = self.rooms.get(name)
        if r is None:
            r = self.rooms[name] = {"epoch": s.rooms[name].epoch, "msgs": [], "first": 1, "pinned": False,
                                    "active": now}
        return r

    def trim(self, r, now, keep):
        held = [m for m in r["msgs"] if m[0] >= r["first"]]
        while held and (len(held) > keep or held[0][1] <= now - self.ttl):
            held.pop(0)
            r["first"] += 1
        if not held:
            r["first"] = (r["msgs"][-1][0] + 1) if r["msgs"] else 1

    def held(self, r):
        return [m for m in r["msgs"] if m[0] >= r["first"]]


ops = st.lists(st.one_of(
    st.tuples(st.just("pub"), st.sampled_from("abc")),
    st.tuples(st.just("time"), st.floats(0, 4)),
    st.tuples(st.just("replay"), st.sampled_from("abc"), st.integers(-3, 3), st.booleans()),
    st.tuples(st.just("occupy"), st.sampled_from("abc")),
    st.tuples(st.just("vacate"), st.sampled_from("abc")),
    st.tuples(st.just("sweep")),
    st.tuples(st.just("size"), st.integers(1, 8)),
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8))
def test_store_agrees_with_a_model(script, size):
    s, clock = store(size=size, ttl_ms=5_000)
    m = Model(size, 5.0)
    for op in script:
        now = clock.t
        if op[0] == "pub":
            name = op[1]
            if name in m.rooms:
                m.trim(m.rooms[name], now, m.size - 1)
            frame = publish(s, name, 0)
            r = m.room(s, name, now)
            r["msgs"].append((s.rooms[name].top, now, frame))
            r["active"] = now
            if len(m.held(r)) == 1:
                r["first"] = r["msgs"][-1][0]
        elif op[0] == "time":
            clock.t += op[1]
        elif op[0] == "replay":
            name, delta, same_epoch = op[1:]
            top, epoch = s.position(name)
            r = m.room(s, name, now)
            m.trim(r, now, m.size)
            since = Since(max(0, top + delta), epoch if same_epoch else "x")
            replay = s.replay(name, since)
            got = replay.take(BIG)
            held = m.held(r)
            first = held[0][0] if held else top + 1
            if not same_epoch or since.offset > top or since.offset + 1 < first:
                assert not replay.recovered
                assert got == [f for _, _, f in held]
            else:
                assert replay.recovered
                assert got == [f for o, _, f in held if o > since.offset]
        elif op[0] == "occupy":
            s.occupied(op[1])
            m.room(s, op[1], now)["pinned"] = True
        elif op[0] == "vacate":
            s.vacated(op[1])
            if op[1] in m.rooms:
                m.rooms[op[1]].update(pinned=False, active=now)
        elif op[0] == "sweep":
            while s.sweep(budget=2):
                pass
            for name, r in list(m.rooms.items()):
                if r["active"] <= now - m.ttl:
                    if r["pinned"]:
                        r["first"] = r["msgs"][-1][0] + 1 if r["msgs"] else 1
                        r["active"] = now
                    else:
                        del m.rooms[name]
        elif op[0] == "size":
            s.configure(op[1], 5_000)
            m.size = op[1]
        assert set(s.rooms) == set(m.rooms)
        assert s.count == sum(rec.count for rec in s.rooms.values())
        assert s.nbytes == sum(rec.nbytes for rec in s.rooms.values())
        for name, rec in s.rooms.items():
            assert rec.nbytes == sum(len(f) for f in rec.frames if f is not None)
            assert sum(f is not None for f in rec.frames) == rec.count


# -- metrics ---------------------------------------------------------------------------

def test_metric_families():
    from prometheus_client import CollectorRegistry, generate_latest

    from wsprism.ops.metrics import history_metrics

    s, _ = store(size=10)
    for i in range(12):
        publish(s, "r", i)
    for since in (Since(1, "E1"), Since(11, "E1")):
        r = s.replay("r", since)
        r.take(BIG)
        r.finish()

    class Collector:
        def collect(self):
            return history_metrics([("acme", s)])

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector())
    text = generate_latest(reg).decode()
    assert f'wsprism_history_bytes{{tenant="acme"}} {float(s.nbytes)}' in text
    assert 'wsprism_history_messages{tenant="acme"} 10.0' in text
    assert 'wsprism_history_rooms{tenant="acme"} 1.0' in text
    assert 'wsprism_history_replays_total{outcome="trimmed",tenant="acme"} 1.0' in text
    assert 'wsprism_history_replays_total{outcome="recovered",tenant="acme"} 1.0' in text
    assert 'wsprism_history_replays_total{outcome="ahead",tenant="acme"} 0.0' in text
    assert 'wsprism_history_replayed_messages_total{tenant="acme"} 11.0' in text


# --- history with a broker: the feed and a join's cursor (wsprism/cluster_history.py) ----
# The store is driven by hand: the broker's read answers when the test says, the feed's
# messages arrive when the test says, so the two links' races can be played in any order.

class FakeBroker:
    linked = True

    class keys:
        @staticmethod
        def tenant(tid):
            return f"p:{{{tid}}}:"

    def __init__(self) -> None:
        self.reads: list = []       # futures of history_read, answered by the test
        self.resets: list = []

    def room_channel(self, tid, room):
        return f"c:{room}".encode()

    def history_read(self, prefix, room, start, limit, meta_ttl_ms):
        fut = asyncio.get_running_loop().create_future()
        self.reads.append((start, fut))
        return fut

    def history_reset(self, prefix, room):
        self.resets.append(room)
        return True


class FakeTenant:
    id = "acme"

    def __init__(self) -> None:
        self.rooms: dict = {}


def read_reply(epoch: str, top: int, first: int = 0, n: int = 0):
    """A history_read answer: the meta (epoch, top) and messages first..first+n-1."""
    entries = [[b"%d-0" % (first + i), [b"t", b"1000", b"d", b"m%d" % (first + i)]] for i in range(n)]
    return [0, 0, 1, [epoch.encode(), b"%d" % top], entries, [b"1", b"0"]]


def feed_msg(epoch: str, first: int, n: int) -> bytes:
    payloads = [b"m%d" % (first + i) for i in range(n)]
    return (b"O" + b"n" * 12 + b"%d %s " % (first, epoch.encode()) + b" ".join(b"%d" % len(p) for p in payloads)
            + b"\n" + b"".join(payloads))


def handed(cursor) -> list:
    """What the session got so far: the messages' offsets (the payload is m<offset>)."""
    return [int(frame[3:]) for frame in cursor.take(1 << 20)]   # short frames: 2 bytes of header


def cluster_store():
    from wsprism.cluster_history import RedisHistoryStore
    broker = FakeBroker()
    return broker, RedisHistoryStore(FakeTenant(), broker, 100, 60000)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_join_whose_read_answers_before_the_feed_goes_live_when_the_feed_catches_up():
    """The read (command link) answers with top 25 while the feed (subscriber link) has
    delivered up to 20: the session goes live only when the feed reaches 25, so 21..25 are
    handed once (from the read), not again from the feed."""
    async def main():
        broker, store = cluster_store()
        store.occupied("r")
        store.on_feed("r", feed_msg("E1", 1, 20))
        feed = store.feeds["r"]
        assert (feed.last, feed.epoch) == (20, "E1")
        plain = store.replay("r", None)                    # a plain join on a followed room: live at once
        assert plain.done and not broker.reads
        plain.abort()
        cursor = store.replay("r", Since(18, "E1"))
        await settle()
        assert not cursor.done
        (_, fut), = broker.reads
        fut.set_result(read_reply("E1", 25, 19, 7))       # offsets 19..25
        await settle()
        assert handed(cursor) == [19, 20, 21, 22, 23, 24, 25]
        assert not cursor.done                             # the feed is at 20: not live yet
        store.on_feed("r", feed_msg("E1", 21, 5))          # the feed catches up
        assert handed(cursor) == [] and cursor.done
        assert cursor.finish() == (25, "E1", True)
        store.on_feed("r", feed_msg("E1", 26, 1))          # live from here (the room's members)
        assert feed.last == 26
    asyncio.run(main())


def watch(store, room):
    """A cursor that never finishes: it sees what the feed delivers to the live members."""
    from wsprism.cluster_history import RedisCursor
    feed = store.feeds[room]
    cursor = RedisCursor(store, feed, None)
    cursor.settle(feed.last, feed.epoch, RECOVERED)
    return cursor


def test_a_join_that_reads_a_new_epoch_first_does_not_make_the_feed_skip_its_start():
    """After an outage another node restarted the room's history (E2, offsets 1..3); a
    join here reads (E2, top 3) before the feed hears of E2: the feed does not jump to 3
    (its members would never get 1..3), it reads the stream, and the members get 1..3 once."""
    async def main():
        broker, store = cluster_store()
        store.occupied("r")
        store.on_feed("r", feed_msg("E1", 1, 25))
        members = watch(store, "r")
        cursor = store.replay("r", Since(20, "E1"))
        await settle()
        (_, fut), = broker.reads
        fut.set_result(read_reply("E2", 3, 1, 3))
        await settle()
        assert len(broker.reads) == 2                      # the feed reads the stream ...
        store.on_feed("r", feed_msg("E2", 1, 3))           # ... while E2's start arrives on the feed
        broker.reads[1][1].set_result(read_reply("E2", 3, 1, 3))
        await settle()
        assert handed(members) == [1, 2, 3] and members.epoch == "E2"
        feed = store.feeds["r"]
        assert (feed.last, feed.epoch) == (3, "E2") and not feed.pending
        assert handed(cursor) == [1, 2, 3] and cursor.done
        assert cursor.finish() == (3, "E2", False)
    asyncio.run(main())


def test_a_repair_answered_from_before_an_epoch_change_is_read_again():
    """The feed repairs a gap in E1; meanwhile E2's messages reach it (held while the
    read is on its way); the read's answer is from before the change (E1): it must not
    revert the feed to E1 and drop E2's messages: the feed reads again and delivers them."""
    async def main():
        broker, store = cluster_store()
        store.occupied("r")
        store.on_feed("r", feed_msg("E1", 1, 5))
        members = watch(store, "r")
        store.on_feed("r", feed_msg("E1", 8, 1))            # a gap: 6, 7 missing -> a read
        await settle()
        assert len(broker.reads) == 1
        store.on_feed("r", feed_msg("E2", 1, 2))            # the room restarted meanwhile
        broker.reads[0][1].set_result(read_reply("E1", 8, 6, 3))   # answered from before
        await settle()
        assert len(broker.reads) == 2                       # read again, from E2's position
        feed = store.feeds["r"]
        assert feed.epoch == "E2" and set(feed.pending) == {1, 2}
        broker.reads[1][1].set_result(read_reply("E2", 2, 1, 2))
        await settle()
        assert (feed.last, feed.epoch) == (2, "E2")
        assert handed(members) == [1, 2] and members.epoch == "E2"
    asyncio.run(main())
