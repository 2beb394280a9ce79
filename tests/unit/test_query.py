"""`parse_query` (wsprism/transport/handshake.py): the `/v1/ws` query rules of SPEC 14."""
import string
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsprism.transport.handshake import BadQuery, parse_query


def ok(q: str):
    return parse_query(q.encode("latin-1"))


def bad(q) -> str:
    raw = q if isinstance(q, bytes) else q.encode("latin-1")
    with pytest.raises(BadQuery) as info:
        parse_query(raw)
    return str(info.value)


# -- accepted --------------------------------------------------------------------------------

def test_minimal_and_with_sid():
    assert ok("tenant=acme&ticket=dev") == ("acme", "dev", None)
    assert ok("tenant=acme&ticket=dev&sid=tab-1") == ("acme", "dev", "tab-1")


def test_order_and_unknown_keys_do_not_matter():
    assert ok("sid=s&foo=1&ticket=t&bar=&tenant=acme&foo=2") == ("acme", "t", "s")


def test_empty_pairs_are_skipped():
    assert ok("&&tenant=acme&&ticket=dev&") == ("acme", "dev", None)


def test_percent_decoding_of_keys_and_values():
    assert ok("%74enant=acme&t%69cket=dev%3Aalice&%73id=a%3Ab") == ("acme", "dev:alice", "a:b")
    assert ok("tenant=%61%63%6D%65&ticket=%64ev") == ("acme", "dev", None)


def test_plus_is_a_space_and_percent_2b_a_plus():
    # form encoding, as browsers' URLSearchParams writes it
    assert ok("tenant=acme&ticket=a+b") == ("acme", "a b", None)
    assert ok("tenant=acme&ticket=a%2Bb") == ("acme", "a+b", None)


def test_equals_sign_inside_a_value():
    assert ok("tenant=acme&ticket=abc==") == ("acme", "abc==", None)


def test_stray_percent_is_literal():
    assert ok("tenant=acme&ticket=%25") == ("acme", "%", None)
    assert ok("tenant=acme&ticket=100%") == ("acme", "100%", None)
    assert ok("tenant=acme&ticket=%zz") == ("acme", "%zz", None)


def test_ticket_every_printable_ascii_character():
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    assert ok("tenant=acme&ticket=" + quote(printable, safe=""))[1] == printable


def test_length_limits_inclusive():
    assert ok("tenant=" + "t" * 64 + "&ticket=x")[0] == "t" * 64
    assert ok("tenant=acme&ticket=" + "x" * 4096)[1] == "x" * 4096
    assert ok("tenant=acme&ticket=x&sid=" + "s" * 64)[2] == "s" * 64
    # the ticket limit is after percent-decoding
    assert ok("tenant=acme&ticket=" + "%41" * 4096)[1] == "A" * 4096


def test_allowed_characters():
    assert ok("tenant=A-Z_a.z-0.9&ticket=x")[0] == "A-Z_a.z-0.9"
    assert ok("tenant=acme&ticket=x&sid=Tab_1.2:3-4")[2] == "Tab_1.2:3-4"


def test_long_jwt_like_ticket():
    jwt_like = "eyJhbGciOiJSUzI1NiJ9." + "A" * 3000 + "." + "b-_" * 300
    assert ok("tenant=acme&ticket=" + jwt_like)[1] == jwt_like


def test_field_count_limit():
    filler = "&".join(f"k{i}=v" for i in range(29))
    assert ok(f"tenant=acme&ticket=dev&sid=s&{filler}") == ("acme", "dev", "s")        # 32 fields
    bad(f"tenant=acme&ticket=dev&sid=s&{filler}&one=more")                         # 33


# -- refused ---------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [
    "",
    "tenant=acme",
    "ticket=dev",
    "sid=s",
    "tenant&ticket=dev",                       # key without value
    "tenant=&ticket=dev",
    "tenant=acme&ticket=",
    "tenant=acme&ticket",
    "tenant=acme&ticket=dev&sid=",
    "tenant=acme&ticket=dev&sid",
    "Tenant=acme&ticket=dev",                  # keys are case-sensitive
    "tenant=acme&TICKET=dev",
    "tenant =acme&ticket=dev",
    "tenant=acme;ticket=dev",                  # only & separates
])
def test_missing_or_empty(q):
    bad(q)


@pytest.mark.parametrize("q", [
    "tenant=acme&tenant=acme&ticket=dev",
    "tenant=acme&ticket=dev&ticket=dev",
    "tenant=acme&ticket=dev&sid=a&sid=a",
    "tenant=acme&ticket=dev&%74enant=acme",
    "tenant=acme&ticket=dev&sid=a&sid=",
    "tenant=acme&ticket=dev&tenant=",
])
def test_key_given_twice(q):
    assert "twice" in bad(q)


@pytest.mark.parametrize("tenant", [
    "t" * 65, "ac me", "ac+me", "acme:1", "acme/x", "acme@x", "ac%2Fme", "ac%00me", "caf%C3%A9", "%FF", "*",
])
def test_bad_tenant(tenant):
    bad(f"tenant={tenant}&ticket=dev")


@pytest.mark.parametrize("ticket", [
    "x" * 4097,
    "%41" * 4097,
    "a%0Ab", "a%09b", "a%0Db", "%00", "a%7Fb", "%1B[31m",
    "caf%C3%A9",                               # UTF-8, but not ASCII
    "%FF%FE",                                  # not even UTF-8
    "%E2%80%AE",                               # RIGHT-TO-LEFT OVERRIDE
])
def test_bad_ticket(ticket):
    bad(f"tenant=acme&ticket={ticket}")


@pytest.mark.parametrize("sid", ["s" * 65, "a/b", "a b", "a+b", "a@b", "tab%231", "a%00", "%C3%A9", "a,b"])
def test_bad_sid(sid):
    bad(f"tenant=acme&ticket=dev&sid={sid}")


def test_raw_non_ascii_bytes_are_refused():
    bad(b"tenant=acme&ticket=d\xc3\xa9v")
    bad(b"tenant=acme\xff&ticket=dev")
    bad(b"tenant=acme&ticket=dev&x=\x80")


def test_reasons_never_echo_the_ticket():
    for q in ("tenant=acme&ticket=SECRET%0A1", "tenant=acme&ticket=SECRET&ticket=SECRET2",
              "tenant=bad%20one&ticket=SECRET", "tenant=acme&ticket=SECRET&sid=bad/sid",
              "tenant=acme&ticket=" + "SECRET" * 700):
        assert "SECRET" not in bad(q)


# -- round trip ------------------------------------------------------------------------------

_tenant = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1, max_size=64)
_sid = st.text(alphabet=string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=64)
_ticket = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(_tenant, _ticket, st.one_of(st.none(), _sid), st.booleans())
def test_round_trip_of_any_valid_triple(tenant, ticket, sid, encode_all):
    safe = "" if encode_all else "-_.~"
    parts = [("tenant", tenant), ("ticket", ticket)] + ([("sid", sid)] if sid is not None else [])
    q = "&".join(f"{k}={quote(v, safe=safe)}" for k, v in parts)
    assert ok(q) == (tenant, ticket, sid)


# -- the fast path (no escapes) agrees with parse_qsl -----------------------------------------

@settings(max_examples=400)
@given(st.lists(st.tuples(st.sampled_from(["tenant", "ticket", "sid", "x", "", "tenant=", "a=b"]),
                          st.sampled_from(["=", ""]),
                          st.text(alphabet=string.ascii_letters + string.digits + ":=-._ ;", max_size=12)),
                max_size=36),
       st.sampled_from(["&", "&&"]))
def test_plain_queries_split_as_parse_qsl_does(fields, sep):
    """What parse_query does without '%' or '+' (split; more than 32 fields refused)
    is what parse_qsl(keep_blank_values, max_num_fields=32) gives."""
    from urllib.parse import parse_qsl

    from wsprism.transport.handshake import _split_plain

    text = sep.join(k + eq + v for k, eq, v in fields)
    try:
        expected = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=32)
    except ValueError:
        expected = None
    got = None if text.count("&") >= 32 else _split_plain(text)
    assert got == expected


# -- the usual query in one match agrees with the general path ------------------------------

def _general(text: str):
    from wsprism.transport.handshake import _parse_query
    try:
        return _parse_query(text)
    except BadQuery as exc:
        return str(exc)


def _any(text: str):
    try:
        return parse_query(text.encode("ascii"))
    except BadQuery as exc:
        return str(exc)


_piece = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], max_size=70)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_tenant, _piece), st.one_of(_ticket, _piece, st.text(alphabet="ab%+&=", max_size=8)),
       st.one_of(st.none(), _sid, _piece), st.sampled_from(["", "&", "&x=1", "&sid=a", "&tenant=b"]))
def test_the_usual_query_matches_what_the_general_path_gives(tenant, ticket, sid, tail):
    from wsprism.transport.handshake import _USUAL_QUERY

    q = f"tenant={tenant}&ticket={ticket}" + ("" if sid is None else f"&sid={sid}") + tail
    assert _any(q) == _general(q)
    if tail == "" and _USUAL_QUERY.fullmatch(q) is not None:
        assert _general(q) == (tenant, ticket, sid)
