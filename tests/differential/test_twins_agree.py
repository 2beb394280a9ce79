"""Hypothesis: the compiled kernels and their Python twins give the same answers.

Same inputs to both, equal results, equal state afterwards, equal exceptions. Plus the
explicit edges: refill exactly at the tick where a token completes.
"""
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from wsprism._fast import bucket_py, utf8_py  # noqa: E402

if os.environ.get("WSPRISM_NO_EXTENSIONS"):
    pytest.fail("differential tests compare the compiled modules: build them", pytrace=False)

from wsprism._fast import bucket_c, utf8_c  # noqa: E402

rates = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("allow_at"), st.floats(min_value=0, max_value=50, allow_nan=False)),
        st.tuples(st.just("refund"), st.none()),
        st.tuples(st.just("retry_after"), st.floats(min_value=0, max_value=50, allow_nan=False)),
        st.tuples(st.just("configure"), st.tuples(rates, rates)),
    ),
    max_size=60,
)


def state(b):
    return (b.rate, b.burst, b.tokens, b.last)


@settings(max_examples=400, deadline=None)
@given(rate=rates, burst=rates, start=times, steps=ops)
def test_bucket_twins_agree(rate, burst, start, steps):
    c = bucket_c.TokenBucket(rate, burst, start)
    p = bucket_py.TokenBucket(rate, burst, start)
    now = start
    for op, arg in steps:
        if op == "allow_at":
            now += arg
            assert c.allow_at(now) == p.allow_at(now)
        elif op == "refund":
            c.refund(); p.refund()
        elif op == "retry_after":
            assert c.retry_after(now + arg) == p.retry_after(now + arg)
        else:
            c.configure(*arg); p.configure(*arg)
        assert state(c) == state(p)


@pytest.mark.parametrize("rate", [1.0, 3.0, 10.0, 1000.0, 0.5])
def test_bucket_refill_at_exact_tick_edges(rate):
    for impl in (bucket_c, bucket_py):
        b = impl.TokenBucket(rate, 1, 0.0)
        assert b.allow_at(0.0)
        tick = 1.0 / rate
        assert not b.allow_at(tick * 0.999999)
    # identical decisions at the edges, step by step
    c, p = bucket_c.TokenBucket(rate, 2, 0.0), bucket_py.TokenBucket(rate, 2, 0.0)
    for i in range(200):
        t = i * (0.5 / rate)
        assert c.allow_at(t) == p.allow_at(t)
        assert state(c) == state(p)


@pytest.mark.parametrize("args", [(0.0, 1.0), (1.0, 0.0), (-3.0, 2.0)])
def test_bucket_same_errors(args):
    errors = []
    for impl in (bucket_c, bucket_py):
        with pytest.raises(ValueError) as info:
            impl.TokenBucket(*args)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_utf8_twins_agree_on_bytes(data):
    assert utf8_c.utf8_valid(data) == utf8_py.utf8_valid(data)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=64), st.integers(0, 64), st.binary(min_size=1, max_size=3))
def test_utf8_twins_agree_on_corrupted_text(text, pos, junk):
    raw = text.encode("utf-8", "surrogatepass")
    pos = min(pos, len(raw))
    data = raw[:pos] + junk + raw[pos:]
    assert utf8_c.utf8_valid(raw) == utf8_py.utf8_valid(raw)
    assert utf8_c.utf8_valid(data) == utf8_py.utf8_valid(data)


def test_utf8_every_lead_byte_and_length():
    """Boundary sweep: every lead byte with every continuation pattern, at every offset."""
    conts = [0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0x00, 0xC0]
    for lead in range(256):
        for c1 in conts:
            for c2 in (0x80, 0xBF, 0x41):
                for c3 in (0x80, 0xBF, 0x41):
                    for prefix in (b"", b"a" * 7, b"b" * 8, b"c" * 9):
                        for seq in (bytes([lead]), bytes([lead, c1]), bytes([lead, c1, c2]), bytes([lead, c1, c2, c3])):
                            data = prefix + seq
                            assert utf8_c.utf8_valid(data) == utf8_py.utf8_valid(data), data
