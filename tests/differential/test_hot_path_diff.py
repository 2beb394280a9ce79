"""Hypothesis: the compiled hot-path modules and their twins agree.

Pure functions are compared directly (header parse, allowlist, frame building). The
per-connection framer and fan-out are compared end to end: the same random frame
sequences go to a gateway running the compiled path (in this process) and to one
running the twins (a subprocess with WSPRISM_NO_EXTENSIONS=1), over real sockets, and
what each client receives must be identical (trace ids aside).
"""
import asyncio
import inspect
import json
from enum import IntEnum
import os
import re
import socket
import subprocess
import sys
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

if os.environ.get("WSPRISM_NO_EXTENSIONS"):
    pytest.fail("differential tests compare the compiled modules: build them", pytrace=False)

from wsprism._fast import (  # noqa: E402
    bucket_c, bucket_py, codes_c, codes_py, fanout_c, fanout_py, framer_c, framer_py, hotheader_c, hotheader_py,
    reader_c, reader_py, utf8_c, utf8_py,
)

PAIRS = [(codes_c, codes_py), (bucket_c, bucket_py), (utf8_c, utf8_py), (hotheader_c, hotheader_py),
         (fanout_c, fanout_py), (framer_c, framer_py), (reader_c, reader_py)]
ENUMS = [name for name, obj in vars(codes_py).items() if isinstance(obj, type) and issubclass(obj, IntEnum)
         and obj is not IntEnum]
# the twins' module-level aliases of codes_py members (C constants in the compiled build)
ENUM_MEMBERS = {m.name for e in ENUMS for m in getattr(codes_py, e)}
# functions of a twin compiled from its own source that the .pxd makes C-only (cdef: they
# take pointers); Python reaches them through parse_header and HotAllowlist.allows
C_ONLY = {"hot_parse", "allowed"}


def public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


@pytest.mark.parametrize("name", ENUMS)
def test_codes_enums_equal(name):
    """codes_c.pxd (as the compiled build sees it) and codes_py.py declare the same numbers."""
    compiled, twin = getattr(codes_c, name), getattr(codes_py, name)
    assert {m.name: int(m) for m in compiled} == {m.name: int(m) for m in twin}


def test_codes_enum_names_unique():
    """The C side sees enum members unscoped: no name twice, across all enums."""
    names = [m.name for e in ENUMS for m in getattr(codes_py, e)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("c,py", PAIRS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_api_parity(c, py):
    """Every public name of a twin exists in its compiled module, classes alike."""
    skip = {"annotations", "asyncio", "secrets", "monotonic", "perf_counter", "msgspec", "WSMsgType",
            "WSListener", "TYPE_CHECKING"}
    borrowed = set().union(*(public(other) for _, other in PAIRS if other is not py)) | ENUM_MEMBERS | C_ONLY
    for name in public(py) - skip - borrowed:
        obj = getattr(py, name)
        if inspect.ismodule(obj) or (callable(obj) and getattr(obj, "__module__", py.__name__) != py.__name__):
            continue
        assert hasattr(c, name), f"{c.__name__} lacks {name}"
        if inspect.isclass(obj):
            missing = public(obj) - public(getattr(c, name))
            assert not missing, f"{c.__name__}.{name} lacks {missing}"
        elif isinstance(obj, (int, float, str, bytes, tuple)):
            assert getattr(c, name) == obj, name
        elif not callable(obj):                 # a marker object (RELAY): the same kind
            assert repr(getattr(c, name)) == repr(obj), name


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=12))
def test_hot_header_twins_agree(data):
    assert hotheader_c.parse_header(data) == hotheader_py.parse_header(data)


def test_hot_header_boundary_sweep():
    """Lengths 0..8, every flag byte, seq bytes at the end of the buffer."""
    for n in range(0, 9):
        for flags in range(256):
            data = bytes([1, 2, flags, 0xFF, 0x01, 0x80, 0x7F, 0xAA])[:n] if n >= 3 else bytes([1, 2])[:n]
            assert hotheader_c.parse_header(data) == hotheader_py.parse_header(data), (n, flags)


entries = st.lists(st.tuples(st.integers(0, 255), st.one_of(st.integers(0, 255), st.just("*"))), max_size=6)


@settings(max_examples=200, deadline=None)
@given(entries, st.lists(st.tuples(st.integers(-2**70, 2**70) | st.integers(-2, 300),
                                    st.integers(-2**70, 2**70) | st.integers(-2, 300)), max_size=30))
def test_hot_allowlist_twins_agree(ents, probes):
    texts = [f"{s}:{o}" for s, o in ents]
    c, p = hotheader_c.HotAllowlist(texts), hotheader_py.HotAllowlist(texts)
    assert c.bits == p.bits
    for svc, op in probes:
        assert c.allows(svc, op) == p.allows(svc, op)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 8, 9, 10]), st.one_of(st.binary(max_size=300), st.integers(120, 70000).map(lambda n: b"x" * n)))
def test_build_frame_twins_agree(opcode, payload):
    assert fanout_c.build_frame(opcode, payload) == fanout_py.build_frame(opcode, payload)


def test_hot_parse_pointer_build_agrees_on_bytearray():
    """The compiled parse takes any bytes-like object it can point into, as the twin does."""
    for data in (b"", b"\x01\x02\x03", bytes([1, 2, 1, 9, 8, 7, 6, 5])):
        assert hotheader_c.parse_header(bytearray(data)) == hotheader_py.parse_header(bytearray(data))


# --- end to end: compiled gateway (in process) vs twins (subprocess) ----------------

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
tenants:
  - id: acme
    limits: {{max_frame_bytes: 64}}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*", "2:10"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
"""


@pytest.fixture(scope="module")
def pair(gateway_factory, tmp_path_factory):
    compiled = gateway_factory(YAML.format(port=0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path_factory.mktemp("pure") / "wsprism.yaml"
    cfg.write_text(YAML.format(port=port))
    env = dict(os.environ, WSPRISM_NO_EXTENSIONS="1")
    proc = subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    yield compiled.port, port
    proc.terminate()
    proc.wait(5)


TRACE = re.compile(r'"trace_id":"[0-9a-f]+(-\d+)?"')

text_frames = st.sampled_from([
    '{"v":1,"svc":"room","type":"join","room":"r1"}',
    '{"v":1,"svc":"room","type":"join","room":"r2"}',
    '{"v":1,"svc":"room","type":"leave"}',
    '{"v":1,"svc":"sys","type":"ping","seq":7,"flags":4}',
    '{"v":1,"svc":"chat","type":"send","room":"r1","data":{"msg":"hi"}}',
    '{"v":1,"svc":"nope","type":"x","seq":1}',
    '{"v":1,"svc":"room","type":"presence","room":"r1"}',
    '{"v":1,"svc":"room","type":"join","room":"bad room"}',
])
binary_frames = st.one_of(
    st.binary(max_size=9),
    st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 12), st.integers(0, 7), st.binary(max_size=8))
      .map(lambda t: bytes([t[0], t[1], t[2]]) + t[3]),
)
frames = st.lists(st.one_of(text_frames, binary_frames), min_size=1, max_size=12)
fatal = st.sampled_from([None, "{bad", '{"v":2,"svc":"sys","type":"ping","seq":3}', b"\x01\x01\x00" + b"x" * 80])


async def play(port, seq, last):
    import websockets

    out = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?tenant=acme&ticket=dev:p&sid=s") as ws:
        out.append(TRACE.sub("\"trace_id\":\"T\"", await ws.recv()))
        for f in seq + ([last] if last is not None else []):
            await ws.send(f)
        await ws.send('{"v":1,"svc":"sys","type":"ping","seq":424242,"flags":4}')
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), 2)
                if isinstance(m, str):
                    m = TRACE.sub("\"trace_id\":\"T\"", m)
                    if '"seq":424242' in m and '"ack"' in m:
                        break
                out.append(m)
        except websockets.ConnectionClosed as exc:
            out.append(("closed", exc.rcvd.code if exc.rcvd else None))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=frames, last=fatal)
def test_gateways_in_both_modes_answer_the_same(pair, seq, last):
    compiled_port, pure_port = pair

    async def both():
        return await play(compiled_port, seq, last), await play(pure_port, seq, last)

    a, b = asyncio.run(both())
    a[0] = json.loads(a[0]); b[0] = json.loads(b[0])
    assert a[0]["data"]["user"] == b[0]["data"]["user"] == "p"
    assert a[1:] == b[1:]
