"""The _fast kernels, run against both implementations (fixture `fast_impl`)."""
import os

import pytest


def test_fast_loaded():
    """Unless WSPRISM_NO_EXTENSIONS is set, the compiled path must be the one in use."""
    import wsprism._fast as fast

    if os.environ.get("WSPRISM_NO_EXTENSIONS"):
        assert not fast.USING_EXTENSIONS
    else:
        assert fast.USING_EXTENSIONS, "compiled modules did not load: build with `pip install -e .`"
        assert fast.TokenBucket.__module__ == "wsprism._fast.bucket_c"


def test_bucket_burst_then_refill(fast_impl):
    b = fast_impl.TokenBucket(8, 3, 100.0)
    assert [b.allow_at(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.allow_at(100.0625)        # half a token
    assert b.allow_at(100.125)             # one token after 1/8 s at 8/s
    assert not b.allow_at(100.125)


def test_bucket_never_exceeds_burst(fast_impl):
    b = fast_impl.TokenBucket(1000, 2, 0.0)
    assert b.allow_at(1e6) and b.allow_at(1e6) and not b.allow_at(1e6)


def test_bucket_clock_going_back_is_ignored(fast_impl):
    b = fast_impl.TokenBucket(1, 1, 10.0)
    assert b.allow_at(10.0)
    assert not b.allow_at(5.0)
    assert b.last == 10.0


def test_bucket_refund_and_configure(fast_impl):
    b = fast_impl.TokenBucket(1, 2, 0.0)
    assert b.allow_at(0.0) and b.allow_at(0.0)
    b.refund()
    assert b.allow_at(0.0)
    b.refund(); b.refund(); b.refund()
    assert b.tokens == 2.0                 # capped at burst
    b.configure(5, 1)
    assert (b.rate, b.burst, b.tokens) == (5.0, 1.0, 1.0)


def test_bucket_retry_after(fast_impl):
    b = fast_impl.TokenBucket(4, 1, 0.0)
    assert b.retry_after(0.0) == 0.0
    assert b.allow_at(0.0)
    assert b.retry_after(0.0) == pytest.approx(0.25)
    assert b.retry_after(0.125) == pytest.approx(0.125)


def test_bucket_monotonic_clock(fast_impl):
    b = fast_impl.TokenBucket(1, 1)
    assert b.allow()
    assert not b.allow()


@pytest.mark.parametrize("args", [(0, 1), (1, 0), (-1, 5)])
def test_bucket_rejects_bad_settings(fast_impl, args):
    with pytest.raises(ValueError, match="rate and burst must be > 0"):
        fast_impl.TokenBucket(*args)


@pytest.mark.parametrize("data,ok", [
    (b"", True),
    (b"plain ascii of more than eight bytes", True),
    ("héllo wörld ✓ 😀".encode(), True),
    (b"\xff", False),
    (b"\xc0\x80", False),                  # overlong NUL
    (b"\xe0\x80\x80", False),              # overlong 3-byte
    (b"\xed\xa0\x80", False),              # surrogate
    (b"\xf4\x90\x80\x80", False),          # above U+10FFFF
    (b"\xf0\x9f\x98", False),              # truncated
    (b"abcdefgh\x80", False),              # stray continuation after an ASCII run
    (b"\xef\xbf\xbf", True),               # U+FFFF
    (b"\xf4\x8f\xbf\xbf", True),           # U+10FFFF
])
def test_utf8(fast_impl, data, ok):
    assert fast_impl.utf8_valid(data) is ok
    assert fast_impl.utf8_valid(bytearray(data)) is ok
    assert fast_impl.utf8_valid(memoryview(data)) is ok
