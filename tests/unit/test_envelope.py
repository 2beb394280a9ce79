"""The envelope decoder's limits (SPEC 14): nesting depth whatever the recursion limit,
versions of any size, lone surrogates named as such."""
import sys

import pytest

from wsprism.core.envelope import MAX_DATA_DEPTH, TOO_DEEP, DecodeFailed, decode_envelope, peek_version


def with_data(depth: int) -> bytes:
    return b'{"v":1,"svc":"sys","type":"ping","data":' + b"[" * depth + b"]" * depth + b"}"


def test_64_levels_in_data_decode_and_65_are_too_deep():
    assert MAX_DATA_DEPTH == 64
    assert decode_envelope(with_data(64)).svc == "sys"
    with pytest.raises(DecodeFailed) as info:
        decode_envelope(with_data(65))
    assert str(info.value) == TOO_DEEP and "too deep" in TOO_DEEP


@pytest.mark.parametrize("limit", [60, 200, 1000, 100_000])
def test_too_deep_does_not_depend_on_the_recursion_limit(limit):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 60))
    try:
        for depth in (65, 991, 992, 100_000):
            with pytest.raises(DecodeFailed) as info:
                decode_envelope(with_data(depth))
            assert str(info.value) == TOO_DEEP
            assert peek_version(with_data(depth)) is None
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("raw,expected", [
    (b"2", 2), (b"0", 0), (b"-1", -1), (b"7" * 5000, 2), (b"-" + b"1" * 5000, 2), (b"1", 1),
])
def test_peek_version_reads_integers_of_any_size(raw, expected):
    payload = b'{"v":' + raw + b',"svc":"sys","type":"ping","seq":3,"extra":true}'
    assert peek_version(payload) == (expected, 3)


@pytest.mark.parametrize("raw", [b'"1"', b"1.0", b"1e0", b"true", b"null", b"[1]", b"01"])
def test_peek_version_refuses_what_is_not_an_integer(raw):
    assert peek_version(b'{"v":' + raw + b',"svc":"sys","type":"ping"}') is None


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udbff\\u0041", b"\\udc00", b"\\udfff\\ud800", b"\\ud800x"])
def test_a_lone_surrogate_is_named(escape):
    with pytest.raises(DecodeFailed) as info:
        decode_envelope(b'{"v":1,"svc":"sys","type":"ping","data":"' + escape + b'"}')
    assert "surrogate" in str(info.value) and "truncated" not in str(info.value)


def test_a_surrogate_pair_and_an_escaped_backslash_are_fine():
    assert decode_envelope(b'{"v":1,"svc":"sys","type":"ping","data":"\\ud83d\\ude00"}').type == "ping"
    assert decode_envelope(b'{"v":1,"svc":"sys","type":"ping","data":"\\\\ud800"}').type == "ping"


from hypothesis import given, strategies as st  # noqa: E402

from wsprism.core.envelope import encode_authed, encode_sys  # noqa: E402


@given(st.text(), st.one_of(st.text(), st.integers()), st.text(), st.text())
def test_encode_authed_is_encode_sys_byte_for_byte(tenant, user, sid, trace_id):
    assert encode_authed(tenant, user, sid, trace_id) == encode_sys(
        "authed", data={"tenant": tenant, "user": user, "sid": sid}, trace_id=trace_id)
