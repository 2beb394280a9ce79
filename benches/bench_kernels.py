"""Micro-benchmarks of the hot path, compiled module next to its Python twin.

    pytest benches/bench_kernels.py --benchmark-columns=min,median,mean,ops --benchmark-group-by=group

Groups:
- hot_frame: one Hot Lane frame through a real Session, whole per-frame path (size,
  rate limit, header, allowlist, active room, relay frame built once, fan-out to a room
  whose one member is over its high-water mark so nothing is written).
- hot_checks_inline: the same Session, a frame that passes size, rate limit, header and
  allowlist and is then dropped (silently) at the active-room check: the per-frame
  checks as the framer runs them, plus one call into `on_binary`.
- hot_checks: header parse + allowlist + bucket as three calls from Python (includes
  the Python call overhead that the framer does not pay: it runs them inline in C).
- ext_policy: a 100-byte chat:send envelope through UTF-8 check, strict decode and
  allowlist (the per-message policy path before dispatch).
- bucket, utf8, fanout: the kernels alone.
"""
import asyncio
import types

import pytest

from wsprism._fast import (
    bucket_c, bucket_py, codes_c, codes_py, fanout_c, fanout_py, framer_c, framer_py, hotheader_c, hotheader_py,
    utf8_c, utf8_py,
)

IMPLS = {
    "cython": types.SimpleNamespace(bucket=bucket_c, codes=codes_c, fanout=fanout_c, framer=framer_c,
                                    hot=hotheader_c, utf8=utf8_c),
    "python": types.SimpleNamespace(bucket=bucket_py, codes=codes_py, fanout=fanout_py, framer=framer_py,
                                    hot=hotheader_py, utf8=utf8_py),
}


@pytest.fixture(params=["cython", "python"])
def impl(request):
    return request.param, IMPLS[request.param]


def make_session(ns, loop):
    lane = ns.framer.LanePolicy()
    lane.configure(65536, True, True, ns.hot.HotAllowlist(["1:*"]), None)
    hot = [None] * 256
    hot[1] = ns.framer.RELAY
    lane.set_hot_handlers(hot)
    lane.hist_hot = types.SimpleNamespace(observe=lambda s: None)
    host = types.SimpleNamespace(corker=ns.fanout.Corker(loop))
    s = ns.framer.Conn(host, lane)
    s.state = 1                                   # OPEN
    s.bucket = ns.bucket.TokenBucket(1e12, 1e12)
    s.paused = True                               # over the mark: lossy frames are dropped
    s.room_members = {s: None}
    return s


HOT_FRAME = bytes([1, 1, 0x01, 1, 0, 0, 0]) + b"p" * 64


@pytest.mark.parametrize("group,in_room,counter", [
    ("hot_frame", True, "C_HOT_ALLOW_OK"),                     # relayed
    ("hot_checks_inline", False, "C_HOT_DROP_NO_ACTIVE_ROOM"),  # all checks, then dropped silently
])
def test_hot_session(benchmark, impl, group, in_room, counter):
    name, ns = impl
    benchmark.group = group
    benchmark.name = name
    loop = asyncio.new_event_loop()
    s = make_session(ns, loop)
    if not in_room:
        s.room_members = None
    benchmark(s.on_binary, HOT_FRAME)
    assert s.lane.snapshot()[getattr(ns.codes.Counter, counter)] > 0
    loop.close()


def test_hot_checks(benchmark, impl):
    name, ns = impl
    benchmark.group = "hot_checks"
    benchmark.name = name
    allow = ns.hot.HotAllowlist(["1:*", "2:10"])
    bucket = ns.bucket.TokenBucket(1e12, 1e12)
    parse = ns.hot.parse_header
    frame = bytes([2, 10, 0x01, 1, 0, 0, 0]) + b"p" * 64

    def checks():
        status, svc, op, flags, seq = parse(frame)
        return status == 0 and allow.allows(svc, op) and bucket.allow()

    assert benchmark(checks)


def test_ext_policy(benchmark, impl):
    name, ns = impl
    from wsprism.core.envelope import decode_envelope
    from wsprism.policy.allowlist import ExtAllowlist

    benchmark.group = "ext_policy"
    benchmark.name = name
    allow = ExtAllowlist(["room:join", "room:leave", "chat:*"])
    utf8 = ns.utf8.utf8_valid
    head = b'{"v":1,"svc":"chat","type":"send","seq":42,"room":"match:1","data":{"msg":"'
    payload = head + b"x" * (100 - len(head) - 3) + b'"}}'
    assert len(payload) == 100

    def path():
        if not utf8(payload):
            return False
        env = decode_envelope(payload)
        return env.v == 1 and allow.allows(env.svc, env.type)

    assert benchmark(path)


def test_bucket(benchmark, impl):
    name, ns = impl
    benchmark.group = "bucket"
    benchmark.name = name
    b = ns.bucket.TokenBucket(1e12, 1e12)
    assert benchmark(b.allow)


def test_utf8(benchmark, impl):
    name, ns = impl
    benchmark.group = "utf8_1KiB"
    benchmark.name = name
    data = ("chat message with ünïcödé ✓ " * 40).encode()[:1024]
    assert benchmark(ns.utf8.utf8_valid, data)


def test_fanout_reliable_1000(benchmark, impl):
    name, ns = impl
    benchmark.group = "fanout_1000_members"
    benchmark.name = name
    loop = asyncio.new_event_loop()
    corker = ns.fanout.Corker(loop)
    members = {}
    for _ in range(1000):
        ep = ns.fanout.Endpoint(corker)
        ep.state = 1
        members[ep] = None
    frame = ns.fanout.build_frame(1, b'{"v":1,"svc":"chat","type":"msg","room":"r","data":{"msg":"hi"}}')

    def fan():
        ns.fanout.broadcast(members, frame, False)
        corker.flush_all()            # no transport: bookkeeping only, no syscalls

    benchmark(fan)
    loop.close()
