"""ExtAllowlist and HotAllowlist (wsprism/policy/allowlist.py): deny by default, exact
and wildcard entries, no string tricks, every (svc_id, opcode) bit right."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsprism.config import parse_config
from wsprism.policy.allowlist import ExtAllowlist, HotAllowlist

# -- Ext Lane ------------------------------------------------------------------------------


def test_ext_empty_denies_everything():
    a = ExtAllowlist([])
    for svc, typ in [("room", "join"), ("sys", "ping"), ("sys", "refresh"), ("chat", "send"), ("", ""), ("*", "*")]:
        assert not a.allows(svc, typ)


def test_ext_exact_entry_is_exact():
    a = ExtAllowlist(["chat:send"])
    assert a.allows("chat", "send")
    for svc, typ in [
        ("chat", "sendx"), ("chat", "sen"), ("chat", "Send"), ("Chat", "send"), ("chatx", "send"),
        ("cha", "send"), ("chat", ""), ("chat", "*"), ("chat", " send"), ("chat", "send "),
        ("chat", "send:x"), ("chat:send", ""), ("", "chat:send"), ("ch", "at:send"),
        ("ch\u0430t", "send"),            # Cyrillic a
        ("room", "send"),
    ]:
        assert not a.allows(svc, typ), (svc, typ)


def test_ext_wildcard_covers_every_type_of_that_service_only():
    a = ExtAllowlist(["room:*"])
    for typ in ("join", "leave", "presence", "anything", "*", "x" * 200):
        assert a.allows("room", typ)
    for svc in ("rooms", "roo", "Room", "room:", "", "*", "chat"):
        assert not a.allows(svc, "join"), svc


def test_ext_star_is_not_a_global_wildcard():
    # `*:*` is refused by the config loader; even if it slipped through it matches nothing real
    a = ExtAllowlist(["*:*", "*:send"])
    assert not a.allows("chat", "send")
    assert not a.allows("room", "join")


def test_ext_entries_combine():
    a = ExtAllowlist(["room:join", "room:leave", "chat:*", "chat:send", "room:join", "sys:ping"])
    assert a.allows("room", "join") and a.allows("room", "leave")
    assert not a.allows("room", "presence")
    assert a.allows("chat", "send") and a.allows("chat", "edit")
    assert a.allows("sys", "ping") and not a.allows("sys", "refresh")


def test_ext_accepts_any_iterable_and_is_frozen():
    a = ExtAllowlist(e for e in ("match:find", "chat:*"))
    assert a.allows("match", "find") and a.allows("chat", "x")
    assert isinstance(a.wild, frozenset)
    assert all(isinstance(v, frozenset) for v in a.exact.values())
    with pytest.raises(AttributeError):
        a.other = 1                      # __slots__: nothing can be bolted on


def test_ext_from_the_config_defaults():
    cfg = parse_config("version: 1\ntenants:\n  - id: t\n")
    a = ExtAllowlist(cfg.tenants[0].policy.ext_allowlist)
    assert a.allows("room", "join") and a.allows("room", "leave")
    assert not a.allows("room", "presence")
    assert not a.allows("chat", "send")
    assert not a.allows("sys", "ping")   # the Ext Lane itself lets ping/refresh through


_part = st.text(alphabet="abc.-_", min_size=1, max_size=3)
_entry = st.builds(lambda s, t: f"{s}:{t}", _part, st.one_of(_part, st.just("*")))


@settings(max_examples=200, deadline=None)
@given(st.lists(_entry, max_size=8), st.lists(st.tuples(_part, st.one_of(_part, st.just("*"))), max_size=20))
def test_ext_matches_the_reference_model(entries, queries):
    a = ExtAllowlist(entries)
    allowed = set(entries)
    for svc, typ in queries:
        expected = f"{svc}:*" in allowed or f"{svc}:{typ}" in allowed
        assert a.allows(svc, typ) == expected, (entries, svc, typ)


# -- Hot Lane ------------------------------------------------------------------------------

def _table(a: HotAllowlist) -> set[tuple[int, int]]:
    return {(s, o) for s, o in itertools.product(range(256), range(256)) if a.allows(s, o)}


def test_hot_empty_denies_all_65536():
    a = HotAllowlist([])
    assert len(a.bits) == 256 * 256 // 8
    assert _table(a) == set()


def test_hot_exact_entry():
    assert _table(HotAllowlist(["2:10"])) == {(2, 10)}


def test_hot_wildcard_is_one_svc_id():
    assert _table(HotAllowlist(["1:*"])) == {(1, op) for op in range(256)}


@pytest.mark.parametrize("entries,expected", [
    (["0:0"], {(0, 0)}),
    (["255:255"], {(255, 255)}),
    (["0:255", "255:0"], {(0, 255), (255, 0)}),
    (["255:*"], {(255, op) for op in range(256)}),
    (["0:*"], {(0, op) for op in range(256)}),
    # byte boundaries of the bit table: neighbours stay clear
    (["3:7", "3:8"], {(3, 7), (3, 8)}),
    (["7:255", "8:0"], {(7, 255), (8, 0)}),
    # overlaps and duplicates
    (["1:*", "1:5", "1:5"], {(1, op) for op in range(256)}),
    # leading zeros (the config loader allows up to three digits)
    (["001:010"], {(1, 10)}),
])
def test_hot_boundaries(entries, expected):
    assert _table(HotAllowlist(entries)) == expected


def test_hot_reference_config():
    a = HotAllowlist(["1:*", "2:10"])
    assert a.allows(1, 0) and a.allows(1, 255) and a.allows(2, 10)
    assert not a.allows(2, 11) and not a.allows(2, 9) and not a.allows(3, 10) and not a.allows(0, 10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.one_of(st.integers(0, 255), st.just("*"))), max_size=6),
       st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=50))
def test_hot_matches_the_reference_model(entries, queries):
    a = HotAllowlist([f"{s}:{o}" for s, o in entries])
    for svc, op in queries:
        expected = any(s == svc and (o == "*" or o == op) for s, o in entries)
        assert a.allows(svc, op) == expected
