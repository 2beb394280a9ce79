"""Fuzz suite: hypothesis-built frame sequences and envelopes against a live gateway.

Each example opens a raw WebSocket, sends a stream of frames (lengths in every
encoding, opcodes, RSV bits, masks, fragments with control frames between them) or of
envelopes (every field's type and range, nesting depth, sizes, unicode), and compares
what comes back with the answer SPEC 3, 5 and 14 document: the responses in order,
then the error and close code of the first fatal frame. After every batch the gateway
still answers /healthz, a canary session still answers ping, and no traceback was
logged. The default run spends well under a minute here; `-m slow` runs the same
properties with twenty times the examples.

Where picows itself refuses a frame (bad opcode, unmasked, non-minimal length, a
1-byte close), it sends its close before it hands the frame before it to the
gateway, so the answers to the frames just before can be lost: for those cases the
responses only have to be a prefix of the documented ones.
"""
import json
import logging
import socket
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tests.client import (  # noqa: E402
    PING, PONG, connect_authed, http_get, parse_frames, raw_upgrade, request, run,
)

LIMIT = 2048
YAML = f"""
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: fz
    limits: {{max_frame_bytes: {LIMIT}}}
    policy:
      ext_allowlist: ["room:*", "sys:*", "chat:send"]
      hot_allowlist: ["1:*"]
      rate_limit_rps: 1000000
      rate_limit_burst: 1000000
"""
BATCH = 40                 # examples between two health checks
FRAME_EXAMPLES = 300       # default run; x20 under -m slow
ENVELOPE_EXAMPLES = 400

PING_TEXT = json.dumps(PING).encode()
MASK = b"\x37\xfa\x21\x3d"


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


# -- a raw client ----------------------------------------------------------------------------

def masked(payload: bytes, mask: bytes = MASK) -> bytes:
    return bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
          form: int | None = None, announce: int | None = None) -> bytes:
    """A client frame. `form` forces the length encoding (0: 7-bit, 1: 16-bit, 2: 64-bit);
    `announce` puts another length in the header than the payload's (the rest is not sent)."""
    n = len(payload) if announce is None else announce
    if form is None:
        form = 0 if n < 126 else 1 if n < 65536 else 2
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    if form == 0:
        head = bytes([b0, m | n])
    elif form == 1:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if mask:
        return head + MASK + masked(payload)
    return head + payload


def exchange(port: int, stream: bytes, timeout: float = 3.0, after_authed: bool = False) -> tuple[list, int | None]:
    """Upgrade, send `stream`, read until the server's close frame (or EOF): the data
    frames received (text as JSON without trace_id, binary as bytes) and the close code.
    `after_authed`: send only once `authed` came (with a broker, what a session sends
    before its admission is answered is dropped: docs/scaling.md)."""
    s = raw_upgrade(port, "tenant=fz&ticket=dev:fuzz")
    try:
        buf = b""
        if after_authed:
            s.settimeout(timeout)
            while not parse_frames(buf)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        try:
            s.sendall(stream)
        except OSError:
            pass                          # refused mid-stream: the gateway stopped reading
        out, code = [], None
        deadline = time.monotonic() + timeout
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            frames, buf = parse_frames(buf)
            for op, payload in frames:
                if op == 8:
                    return out[1:], (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None)
                if op == 1:
                    msg = json.loads(payload)
                    msg.pop("trace_id", None)
                    out.append(("error", msg["data"]["code"]) if msg.get("type") == "error" else msg)
                elif op == 2:
                    out.append(payload)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        return out[1:], code              # out[0] is `authed`
    finally:
        s.close()


# -- health between batches ----------------------------------------------------------------------

class Health:
    def __init__(self, g, caplog) -> None:
        self.g = g
        self.caplog = caplog
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.n % BATCH == 0:
            self.check()

    def check(self) -> None:
        g = self.g
        assert g._thread.is_alive()
        status, _, body = http_get(g.port, "/healthz")
        assert (status, body) == (200, b"ok\n")

        async def canary():
            ws, _ = await connect_authed(g.url("fz", "dev:canary"))
            assert await request(ws, PING) == PONG
            await ws.close()
        run(canary())
        tracebacks = [r for r in self.caplog.records if r.exc_info and r.name.startswith("wsprism")]
        assert not tracebacks, tracebacks[0].getMessage()


def watch(g, caplog):
    """A fixture's body: the Health of `g`, checked once more at the end of the test."""
    caplog.set_level(logging.WARNING)
    h = Health(g, caplog)
    yield h
    h.check()


@pytest.fixture
def health(g, caplog):
    yield from watch(g, caplog)


# -- frame sequences -------------------------------------------------------------------------------

ERR = lambda code: ("error", code)  # noqa: E731


def hot_answer(data: bytes):
    """The Hot Lane's answer on tenant fz (hot_allowlist 1:*, no active room)."""
    if len(data) < 3 or data[2] & ~0x03 or (data[2] & 0x01 and len(data) < 7):
        return ERR("BAD_REQUEST")
    return ERR("NOT_ALLOWED")         # 1:* needs an active room; other svc_ids are not allowed


@st.composite
def ok_item(draw):
    """A frame (or fragmented message) the gateway answers and survives: (bytes, answers)."""
    kind = draw(st.sampled_from(["ping", "ping", "hot", "control", "empty_pong"]))
    if kind == "ping":
        pieces = draw(st.integers(1, 4))
        cuts = sorted(draw(st.lists(st.integers(0, len(PING_TEXT)), min_size=pieces - 1, max_size=pieces - 1)))
        parts = [PING_TEXT[a:b] for a, b in zip([0] + cuts, cuts + [len(PING_TEXT)])]
        out = b""
        for i, part in enumerate(parts):
            out += frame(1 if i == 0 else 0, part, fin=i == len(parts) - 1)
            if i < len(parts) - 1 and draw(st.booleans()):
                out += frame(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=125)))
        return out, [PONG]
    if kind == "hot":
        data = draw(st.one_of(st.binary(max_size=12), st.binary(min_size=3, max_size=300)))
        return frame(2, data), [hot_answer(data)]
    if kind == "control":
        return frame(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=125))), []
    return frame(10), []


@st.composite
def terminal(draw):
    """The last item: (bytes, answers before the close, close code, exact)."""
    kind = draw(st.sampled_from([
        "none", "rsv", "unmasked", "opcode", "control_long", "control_fragmented", "short_16bit",
        "oversize", "fragment_sum", "utf8", "envelope", "version", "close_bad_ours", "close_bad_picows",
        "close_one_byte", "close_ok", "continuation", "new_in_fragmented",
    ]))
    if kind == "none":
        return frame(8, (1000).to_bytes(2, "big")), [], 1000, True
    if kind == "rsv":
        op = draw(st.sampled_from([1, 2, 9, 10]))
        payload = PING_TEXT if op == 1 else b"\x01\x01\x00" if op == 2 else b"x"
        return frame(op, payload, rsv=draw(st.integers(1, 7))), [], 1002, True
    if kind == "unmasked":
        return frame(draw(st.sampled_from([1, 2, 9])), b"abc", mask=False), [], 1002, False
    if kind == "opcode":
        return frame(draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])), b"abc"), [], 1002, False
    if kind == "control_long":
        return frame(draw(st.sampled_from([8, 9, 10])), b"x" * 126), [], 1002, False
    if kind == "control_fragmented":
        return frame(draw(st.sampled_from([9, 10])), b"x", fin=False), [], 1002, False
    if kind == "short_16bit":           # a 16-bit length under 126: not the minimal encoding
        return frame(2, b"\x01\x01\x00", form=1), [], 1002, False
    if kind == "oversize":
        op = draw(st.sampled_from([1, 2]))
        n = draw(st.one_of(st.integers(LIMIT + 1, 65535), st.integers(65536, 2**63 - 1)))
        sent = draw(st.integers(0, 64))
        return frame(op, b"z" * sent, announce=n)[:14 + sent], [ERR("PAYLOAD_TOO_LARGE")], 1009, True
    if kind == "fragment_sum":
        first = draw(st.integers(1, LIMIT))
        rest = draw(st.integers(LIMIT - first + 1, LIMIT + 70_000))
        op = draw(st.sampled_from([1, 2]))
        return (frame(op, b"q" * first, fin=False) + frame(0, b"", announce=rest)[:14],
                [ERR("PAYLOAD_TOO_LARGE")], 1009, True)
    if kind == "utf8":
        return frame(1, draw(st.sampled_from([b"\xff", b'{"v":1,"svc":"sys","type":"ping","data":"\xed\xa0\x80"}',
                                              b"\xc0\xaf", b"ok\xe2\x82"]))), [], 1007, True
    if kind == "envelope":
        text = draw(st.sampled_from([b"{bad", b"[]", b'{"v":1}', b"null", b'{"v":1,"svc":"sys","type":"ping","x":1}',
                                     b'{"v":1,"svc":"sys","type":"ping","data":' + b"[" * 65 + b"]" * 65 + b"}",
                                     b'{"v":1,"svc":"sys","type":"ping","data":"\\ud800"}']))
        return frame(1, text), [ERR("BAD_REQUEST")], 1008, True
    if kind == "version":
        return frame(1, b'{"v":2,"svc":"sys","type":"ping"}'), [ERR("UNSUPPORTED_VERSION")], 1008, True
    if kind == "close_bad_ours":       # codes picows lets through and the gateway refuses
        code = draw(st.sampled_from([0, 1006, 5000, 65535]))
        return frame(8, code.to_bytes(2, "big")), [], 1002, True
    if kind == "close_bad_picows":
        code = draw(st.sampled_from([999, 1004, 1005, 1015, 1016, 2999]))
        return frame(8, code.to_bytes(2, "big")), [], 1002, False
    if kind == "close_one_byte":
        return frame(8, b"\x03"), [], 1002, False
    if kind == "close_ok":
        code = draw(st.sampled_from([1000, 1001, 1003, 1008, 1011, 3000, 4000, 4999]))
        return frame(8, code.to_bytes(2, "big") + draw(st.sampled_from([b"", b"bye"]))), [], code, True
    if kind == "continuation":
        return frame(0, b"abc"), [], 1002, True
    return frame(1, PING_TEXT[:4], fin=False) + frame(1, PING_TEXT), [], 1002, True


@settings(max_examples=FRAME_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(ok_item(), max_size=6), terminal())
def test_frame_sequences_get_their_documented_answer(g, health, items, last):
    check_frames(g, health, items, last)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@settings(max_examples=FRAME_EXAMPLES * 20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(ok_item(), max_size=12), terminal())
def test_frame_sequences_get_their_documented_answer_long(g, health, items, last):
    check_frames(g, health, items, last)


def check_frames(g, health, items, last) -> None:
    stream = b"".join(data for data, _ in items)
    expected = [a for _, answers in items for a in answers]
    tail, fatal_answers, code, exact = last
    got, got_code = exchange(g.port, stream + tail)
    assert got_code == code, (got, got_code)
    if exact:
        assert got == expected + fatal_answers
    else:
        assert got == expected[:len(got)], got
    health.tick()


# -- envelopes ----------------------------------------------------------------------------------

U64 = 2**64 - 1
ROOM_RE = __import__("re").compile(r"[A-Za-z0-9_.:@-]{1,128}")
ABSENT = object()

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                             st.dictionaries(st.text(max_size=5), kids, max_size=4)),
                          max_leaves=12)


def nested(depth: int):
    out = 0
    for i in range(depth):
        out = [out] if i % 2 else {"k": out}
    return out


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


word = st.one_of(st.sampled_from(["sys", "room", "chat", "nope", "", "ping", "join", "x", "send"]), st.text(max_size=8))
GOOD_ROUTES = [("sys", "ping"), ("sys", "ping"), ("room", "join"), ("room", "join"), ("room", "nope"), ("sys", "nope"),
               ("nope", "x"), ("chat", "send")]
BAD_VALUES = {
    "v": [2, 0, -1, 10**30, -(10**30), "1", 1.0, True, None, [1]],
    "svc": [None, 5, ["sys"], "", {"a": 1}],
    "type": [None, 5, "", True],
    "flags": [-1, 2**32, "4", 1.5, None, True],
    "seq": [-1, U64 + 1, 10**40, "1", 2.5, None, True],
    "room": [7, None, ["a"], False],
}


@st.composite
def envelope(draw):
    """A valid envelope (routes the oracle models, optional fields in range), then, four
    times in ten, one thing wrong with it: a field of the wrong type or out of range, a
    required field missing, an unknown field, a lone surrogate."""
    svc, typ = draw(st.sampled_from(GOOD_ROUTES))
    fields = {"v": 1, "svc": svc, "type": typ}
    if draw(st.booleans()):
        fields["flags"] = draw(st.one_of(st.just(4), st.just(4), st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        fields["seq"] = draw(st.one_of(st.integers(0, 1000), st.just(U64), st.integers(0, U64)))
    if draw(st.booleans()):
        fields["room"] = draw(st.one_of(st.sampled_from(["lobby", "a:b@c.d-e_f", "", "bad room", "x" * 129, "x" * 128]),
                                        st.text(max_size=10)))
    if draw(st.booleans()):
        fields["data"] = draw(st.one_of(json_value, st.builds(nested, st.integers(60, 70)), st.text(max_size=3000)))
    mutation = draw(st.sampled_from(["none"] * 10 + ["value", "value", "missing", "unknown", "word", "word",
                                                     "escape", "surrogate"]))
    if mutation == "value":
        name = draw(st.sampled_from(sorted(BAD_VALUES)))
        fields[name] = draw(st.sampled_from(BAD_VALUES[name]))
    elif mutation == "missing":
        del fields[draw(st.sampled_from(["v", "svc", "type"]))]
    elif mutation == "unknown":
        fields[draw(st.sampled_from(["extra", "V", "trace_id", "Svc", ""]))] = draw(json_leaf)
    elif mutation == "word":
        fields[draw(st.sampled_from(["svc", "type"]))] = draw(word)
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()))
    if mutation == "escape":            # a lone surrogate escape in a string
        text = text.replace('"svc": "', '"svc": "\\ud800', 1)
    elif mutation == "surrogate":       # a lone surrogate itself: not UTF-8 once encoded
        text = text.replace('"svc": "', '"svc": "\ud800', 1)
    return text


def has_lone_surrogate(value) -> bool:
    """A string (key or value) that decoded to a lone surrogate: a pair decodes to one
    code point above U+FFFF, so only an unpaired escape leaves U+D800-U+DFFF behind."""
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    return False


def is_int(v) -> bool:
    return type(v) is int


def expect_envelope(text: str, rooms: set):
    """(answers, fatal close code or None) for one envelope, SPEC 3 and 14."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) > LIMIT:
        return [ERR("PAYLOAD_TOO_LARGE")], 1009
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return [], 1007
    try:
        obj = json.loads(text)
    except ValueError:
        return [ERR("BAD_REQUEST")], 1008
    lone = has_lone_surrogate(obj)
    if depth_of(obj) > 65:
        return [ERR("BAD_REQUEST")], 1008
    if not isinstance(obj, dict) or "v" not in obj:
        return [ERR("BAD_REQUEST")], 1008
    v, seq = obj["v"], obj.get("seq", ABSENT)
    valid_seq = is_int(seq) and 0 <= seq <= U64
    if lone:                            # no JSON decoder takes it: not even the version is read
        return [ERR("BAD_REQUEST")], 1008
    bad = (not is_int(v)
           or not (isinstance(obj.get("svc"), str) and obj["svc"])
           or not (isinstance(obj.get("type"), str) and obj["type"])
           or ("flags" in obj and not (is_int(obj["flags"]) and 0 <= obj["flags"] < 2**32))
           or ("seq" in obj and not valid_seq)
           or ("room" in obj and not isinstance(obj["room"], str))
           or set(obj) - {"v", "svc", "type", "flags", "seq", "room", "data"})
    if is_int(v) and v != 1:
        return [ERR("UNSUPPORTED_VERSION")], 1008
    if bad:
        return [ERR("BAD_REQUEST")], 1008
    svc, typ, flags = obj["svc"], obj["type"], obj.get("flags", 0)
    allowed = svc in ("room", "sys") or (svc, typ) == ("chat", "send")
    if not allowed:
        return [ERR("NOT_ALLOWED")], None
    if (svc, typ) == ("sys", "ping"):
        answers = [PONG]
    elif (svc, typ) == ("room", "join"):
        room = obj.get("room", ABSENT)
        if room is ABSENT or not ROOM_RE.fullmatch(room):
            return [ERR("BAD_REQUEST")], None
        if not join_data_ok(obj.get("data")):          # SPEC 13: data null, or an object whose since is
            return [ERR("BAD_REQUEST")], None          # null or exactly {offset: u64, epoch: string}
        rooms.add(room)
        answers = [{"v": 1, "svc": "sys", "type": "joined", "room": room}]
    else:
        return [ERR("NOT_ALLOWED")], None           # unknown service (no built-in handles it)
    if flags & 4 and "seq" in obj:
        answers.append({"v": 1, "svc": "sys", "type": "ack", "seq": seq})
    return answers, None


def join_data_ok(data) -> bool:
    """A room:join's data as the gateway takes it (history off here: a valid since just joins)."""
    if data is None:
        return True
    if not isinstance(data, dict):
        return False
    since = data.get("since")
    if since is None:
        return True
    return (isinstance(since, dict) and set(since) == {"offset", "epoch"}
            and type(since["offset"]) is int and 0 <= since["offset"] < 2**64 and isinstance(since["epoch"], str))


def remap(text: str) -> str:
    """Keep the services the oracle models: no chat:send, leave, presence or refresh."""
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if isinstance(obj, dict) and (obj.get("svc"), obj.get("type")) in (
            ("chat", "send"), ("room", "leave"), ("room", "presence"), ("sys", "refresh")):
        return text.replace(json.dumps(obj["type"]), '"zz"', 1)
    return text


@settings(max_examples=ENVELOPE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(envelope(), min_size=1, max_size=5))
def test_envelopes_get_their_documented_answer(g, health, texts):
    check_envelopes(g, health, texts)


@pytest.fixture(scope="module")
def g_broker(gateway_factory, redis_server):
    """The same tenant on a gateway with a broker: joins are admitted by Redis (answered
    later, the session's next messages held meanwhile), with the same answers in order."""
    yaml = YAML.replace("tenants:", f'broker: {{url: "{redis_server.url}", prefix: "fuzz"}}\ntenants:')
    g = gateway_factory(yaml)
    deadline = time.monotonic() + 5
    while not g.gw.cluster.up:
        assert time.monotonic() < deadline, "broker not up"
        time.sleep(0.02)
    return g


@pytest.fixture
def health_broker(g_broker, caplog):
    yield from watch(g_broker, caplog)


@settings(max_examples=ENVELOPE_EXAMPLES // 2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(envelope(), min_size=1, max_size=5))
def test_envelopes_get_their_documented_answer_with_a_broker(g_broker, health_broker, texts):
    check_envelopes(g_broker, health_broker, texts, broker=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@settings(max_examples=ENVELOPE_EXAMPLES * 20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(envelope(), min_size=1, max_size=8))
def test_envelopes_get_their_documented_answer_long(g, health, texts):
    check_envelopes(g, health, texts)


def check_envelopes(g, health, texts, broker: bool = False) -> None:
    """`broker`: the gateway has one, so a join is answered once Redis admitted it, and
    the session's messages after it wait for that. If the session closes meanwhile (the
    stream's own close frame, or a fatal frame), whatever waited behind the join is not
    answered: then the answers may stop anywhere from that join on (before the fatal
    frame's own), but nothing else may differ."""
    texts = [remap(t) for t in texts]
    rooms: set = set()
    expected, code = [], 1000
    stream = b""
    waits_from = None               # where the answers of the first join start
    last = []                       # the fatal frame's answers
    for text in texts:
        answers, fatal = expect_envelope(text, rooms)
        if waits_from is None and answers and isinstance(answers[0], dict) and answers[0]["type"] == "joined":
            waits_from = len(expected)
        expected += answers
        stream += frame(1, text.encode("utf-8", "surrogatepass"))
        if fatal is not None:
            code = fatal
            last = answers
            break
    else:
        stream += frame(8, (1000).to_bytes(2, "big"))
    got, got_code = exchange(g.port, stream, after_authed=broker)
    if broker and waits_from is not None and got_code == code and got != expected:
        body = expected[:len(expected) - len(last)]
        assert any(got == body[:k] + last for k in range(waits_from, len(body) + 1)), (texts, got, expected)
    else:
        assert (got, got_code) == (expected, code), texts
    health.tick()
