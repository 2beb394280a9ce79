"""Hypothesis: the compiled hostile-input kernels agree with their twins.

- reader.FrameGuard: the same byte stream, cut into the same chunks, gives the same
  number of bytes let through per chunk and the same state afterwards, whatever the
  frames (lengths 0..2**64-1 in all three encodings, every opcode, RSV bits, masks,
  fragments, control frames between them); plus a sweep of every announced length
  around the limit for single frames and fragment sums.
- utf8.json_too_deep: the same verdict for any bytes, strings, escapes and brackets.
- fanout budget: the same enqueue answers and the same accounting (out_bytes, over,
  total) for the same frames, caps and flushes (no transport: bookkeeping only).
"""
import asyncio
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

if os.environ.get("WSPRISM_NO_EXTENSIONS"):
    pytest.fail("differential tests compare the compiled modules: build them", pytrace=False)

from wsprism._fast import OPEN, fanout_c, fanout_py, reader_c, reader_py, utf8_c, utf8_py  # noqa: E402

STATE = ("hdr_got", "hdr_need", "remaining", "in_msg", "msg_binary", "msg_total", "held", "refused",
         "refused_binary")


def state(guard):
    return tuple(getattr(guard, name) for name in STATE)


def frame_header(fin: bool, rsv: int, opcode: int, length: int, masked: bool, form: int) -> bytes:
    """A frame header in encoding `form` (0: 7-bit, 1: 16-bit, 2: 64-bit), not always
    the shortest one (picows refuses those; the guard must still follow them)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if masked else 0
    if form == 0:
        out = bytes([b0, m | min(length, 125)])
    elif form == 1:
        out = bytes([b0, m | 126]) + (length & 0xFFFF).to_bytes(2, "big")
    else:
        out = bytes([b0, m | 127]) + length.to_bytes(8, "big")
    return out + (b"\x11\x22\x33\x44" if masked else b"")


def payload_len(length: int, form: int) -> int:
    return min(length, 125) if form == 0 else (length & 0xFFFF) if form == 1 else length


frames = st.builds(
    lambda fin, rsv, op, length, masked, form, keep: (fin, rsv, op, length, masked, form, keep),
    st.booleans(), st.integers(0, 7), st.sampled_from([0, 1, 2, 3, 8, 9, 10, 15]),
    st.one_of(st.integers(0, 300), st.integers(0, 70_000), st.integers(0, 2**64 - 1)),
    st.booleans(), st.integers(0, 2), st.integers(0, 400),
)


def stream_of(spec) -> bytes:
    out = b""
    for fin, rsv, op, length, masked, form, keep in spec:
        out += frame_header(fin, rsv, op, length, masked, form)
        out += b"p" * min(payload_len(length, form), keep)   # a payload, or its first part
        if payload_len(length, form) > keep:
            break                                             # the stream ends inside this frame
    return out


@settings(max_examples=1500, deadline=None)
@given(st.lists(frames, max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=30),
       st.sampled_from([0, 1, 125, 126, 1024, 65535, 65536, 2**63]))
def test_frame_guard_twins_agree(spec, cuts, limit):
    data = stream_of(spec)
    c, p = reader_c.FrameGuard(), reader_py.FrameGuard()
    pos = 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        if pos >= len(data):
            break
        chunk = data[pos:pos + cut]
        pos += cut
        assert c.feed(chunk, limit) == p.feed(chunk, limit)
        assert state(c) == state(p)


@pytest.mark.parametrize("form", [0, 1, 2])
@pytest.mark.parametrize("opcode", [1, 2])
def test_frame_guard_sweep_around_the_limit(form, opcode):
    """Every announced length from limit-3 to limit+3, alone and as the second fragment,
    with the header cut at every byte: refused exactly when over the limit."""
    limit = {0: 100, 1: 1000, 2: 70_000}[form]
    for length in range(limit - 3, limit + 4):
        single = frame_header(True, 0, opcode, length, True, form)
        for impl in (reader_c, reader_py):
            for cut in range(len(single) + 1):
                guard = impl.FrameGuard()
                first = guard.feed(single[:cut], limit)
                second = guard.feed(single[cut:], limit)
                assert guard.refused == (length > limit), (impl, length, cut)
                if guard.refused:
                    # header bytes of an earlier chunk went through; none of the chunk completing it
                    assert (first, second) == ((cut, 0) if cut < len(single) else (0, 0))
                    assert guard.refused_binary == (opcode == 2)
                else:
                    assert (first, second) == (cut, len(single) - cut)
        head = frame_header(False, 0, opcode, 10, True, 0) + b"x" * 10
        cont = frame_header(True, 0, 0, length - 10, True, form if length - 10 > 125 else 0)
        for impl in (reader_c, reader_py):
            guard = impl.FrameGuard()
            n = guard.feed(head + cont, limit)
            assert guard.refused == (length > limit)
            assert n == (len(head) if length > limit else len(head) + len(cont))


def test_frame_guard_control_frames_between_fragments_do_not_count():
    for impl in (reader_c, reader_py):
        guard = impl.FrameGuard()
        data = (frame_header(False, 0, 1, 60, True, 0) + b"a" * 60
                + frame_header(True, 0, 9, 100, True, 0) + b"b" * 100      # a ping between
                + frame_header(True, 0, 0, 40, True, 0) + b"c" * 40)       # 60 + 40 = the limit
        assert guard.feed(data, 100) == len(data) and not guard.refused
        assert guard.held == 0 and not guard.in_msg


def test_frame_guard_after_a_refusal_lets_nothing_through():
    for impl in (reader_c, reader_py):
        guard = impl.FrameGuard()
        assert guard.feed(frame_header(True, 0, 2, 5000, True, 1), 1024) == 0
        assert guard.feed(b"more", 1024) == 0 and guard.refused


json_bytes = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b":", b",", b"\\\"", b"\xc3\xa9"]),
                      max_size=200).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(json_bytes, st.integers(0, 70))
def test_json_depth_twins_agree(data, limit):
    assert utf8_c.json_too_deep(data, limit) == utf8_py.json_too_deep(data, limit)


@pytest.mark.parametrize("depth,limit,deep", [(65, 65, False), (66, 65, True), (0, 0, False), (1, 0, True)])
def test_json_depth_edges(depth, limit, deep):
    for impl in (utf8_c, utf8_py):
        assert impl.json_too_deep(b"[" * depth + b"]" * depth, limit) is deep
        assert impl.json_too_deep(b'{"a":"' + b"[" * 200 + b'"}', 1) is False         # inside a string
        assert impl.json_too_deep(b'"\\"' + b"[" * 10, 5) is False                       # escaped quote
        assert impl.json_too_deep(b'"\\\\"' + b"[" * 10, 5) is True                      # escaped backslash


budget_ops = st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.integers(0, 3), st.integers(1, 5000), st.booleans()),
    st.tuples(st.just("flush"), st.integers(0, 3), st.none(), st.none()),
    st.tuples(st.just("flush_all"), st.none(), st.none(), st.none()),
    st.tuples(st.just("pause"), st.integers(0, 3), st.booleans(), st.none()),
    st.tuples(st.just("release"), st.integers(0, 3), st.none(), st.none()),
), max_size=60)


@settings(max_examples=500, deadline=None)
@given(budget_ops, st.integers(1, 20_000), st.integers(1, 40_000))
def test_budget_twins_agree(ops, max_session, max_total):
    """No transport: what is measured is 0, so this compares the queue accounting and the
    over-budget decisions (an event loop that never runs takes the corker's call_soon)."""
    loop = asyncio.new_event_loop()
    try:
        traces = []
        for impl in (fanout_c, fanout_py):
            corker = impl.Corker(loop, max_session, max_total)
            eps = [impl.Endpoint(corker) for _ in range(4)]
            for ep in eps:
                ep.state = OPEN
            trace = []
            for op, i, a, b in ops:
                if op == "enqueue":
                    trace.append(eps[i].enqueue(b"f" * a, b))
                elif op == "flush":
                    eps[i].flush()        # over budget: overflow() on a bare endpoint releases it
                elif op == "flush_all":
                    corker.flush_all()
                elif op == "pause":
                    eps[i].paused = a
                else:
                    eps[i].release()
                trace.append((corker.total, [(e.out_bytes, e.acct, e.over) for e in eps]))
            traces.append(trace)
        assert traces[0] == traces[1]
    finally:
        loop.close()
