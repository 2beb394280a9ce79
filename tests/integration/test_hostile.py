"""Hostile input on the Ext Lane (SPEC sections 3, 7, 14): every bad frame gets its exact
answer (error envelope, close code, or the session survives), a well-behaved client
connected meanwhile is untouched, and the gateway stays healthy."""
import asyncio
import json

import pytest

from tests.client import (
    PING, PONG,
    mask_frame,
    TIMEOUT, UPGRADE_HEADERS, connect_authed, error_of, expect_close, http_get, recv_json, request, run, send_json,
)

BIG = 16 * 1024 * 1024
SMALL = 1024

YAML = f"""
version: 1
gateway:
  listen: "127.0.0.1:0"
  writer_send_timeout_ms: 10000
  outbound_max_bytes: 67108864      # the 16 MiB tenant's messages must fit (twice)
tenants:
  - id: big
    limits: {{max_frame_bytes: {BIG}}}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 10000
      rate_limit_burst: 10000
  - id: small
    limits: {{max_frame_bytes: {SMALL}}}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 10000
      rate_limit_burst: 10000
"""

PING_TEXT = json.dumps(PING)
ARENA = "arena"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


# -- a client that speaks raw frames -----------------------------------------------------

class Raw:
    """A WebSocket client over a bare stream: sends any frame (bad UTF-8, fragments),
    reads server frames as they are."""

    def __init__(self, reader, writer) -> None:
        self.r = reader
        self.w = writer

    @classmethod
    async def open(cls, port: int, tenant: str, ticket: str) -> "Raw":
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        lines = [f"GET /v1/ws?tenant={tenant}&ticket={ticket} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in UPGRADE_HEADERS.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        raw = cls(reader, writer)
        authed = await raw.recv_json()
        assert authed["type"] == "authed", authed
        return raw

    async def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.w.write(mask_frame(opcode, payload, fin))
        await self.w.drain()

    async def send_text(self, data, fin: bool = True) -> None:
        await self.send(OP_TEXT, data.encode() if isinstance(data, str) else data, fin)

    async def frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        async def read():
            b0, b1 = await self.r.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.r.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.r.readexactly(8), "big")
            return b0 & 0x0F, await self.r.readexactly(n)
        return await asyncio.wait_for(read(), timeout)

    async def recv_json(self, timeout: float = TIMEOUT) -> dict:
        """The next text message (WS pings/pongs from the server are skipped)."""
        while True:
            op, payload = await self.frame(timeout)
            if op in (OP_PING, OP_PONG):
                continue
            assert op == OP_TEXT, (op, payload)
            return json.loads(payload)

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server's close frame; return its code (None if the socket just ends)."""
        try:
            while True:
                op, payload = await self.frame(timeout)
                if op == OP_CLOSE:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                assert op in (OP_PING, OP_PONG), (op, payload[:200])
        except asyncio.IncompleteReadError:
            return None

    async def close(self) -> None:
        self.w.close()
        try:
            await self.w.wait_closed()
        except OSError:
            pass


# -- helpers -----------------------------------------------------------------------------

async def ping(ws) -> dict:
    return await request(ws, PING)


async def guarded(g, tenant: str, attack) -> None:
    """Run `attack(attacker_url)` while a well-behaved client of the same tenant sits in the
    same room; afterwards that client's next frame is the answer to its own ping (nothing
    leaked to it, nothing delayed) and the process still answers /healthz."""
    by, _ = await connect_authed(g.url(tenant, "dev:bystander"))
    assert await request(by, {"v": 1, "svc": "room", "type": "join", "room": ARENA}) == \
        {"v": 1, "svc": "sys", "type": "joined", "room": ARENA}
    await attack()
    assert await ping(by) == PONG
    status, _, body = http_get(g.port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    await by.close()


async def attacker(g, tenant: str, user: str = "mallory"):
    """A websockets client already in the bystander's room."""
    ws, _ = await connect_authed(g.url(tenant, f"dev:{user}"))
    assert (await request(ws, {"v": 1, "svc": "room", "type": "join", "room": ARENA}))["type"] == "joined"
    return ws


async def raw_attacker(g, tenant: str) -> Raw:
    raw = await Raw.open(g.port, tenant, "dev:mallory")
    await raw.send_text(json.dumps({"v": 1, "svc": "room", "type": "join", "room": ARENA}))
    assert (await raw.recv_json())["type"] == "joined"
    return raw


def expect_refused(g, text, code: str, close: int, seq=None, tenant: str = "big") -> None:
    """Send `text`; expect exactly one sys.error `code` (with `seq` if given, else none), then `close`."""
    async def attack():
        ws = await attacker(g, tenant)
        await ws.send(text)
        err = await recv_json(ws)
        assert error_of(err) == code, err
        if seq is None:
            assert "seq" not in err, err
        else:
            assert err["seq"] == seq, err
        assert await expect_close(ws) == close
    run(guarded(g, tenant, attack))


def expect_survives(g, text, answer=None, tenant: str = "big") -> None:
    """Send `text`; expect `answer` (a dict) if given; the session then still answers ping."""
    async def attack():
        ws = await attacker(g, tenant)
        await ws.send(text)
        if answer is not None:
            assert await recv_json(ws) == answer
        assert await ping(ws) == PONG
        await ws.close()
    run(guarded(g, tenant, attack))


def expect_refused_but_open(g, text, code: str, seq, tenant: str = "big") -> None:
    """Send `text`; expect one sys.error `code` (seq echoed when given) and an open session."""
    async def attack():
        ws = await attacker(g, tenant)
        await ws.send(text)
        err = await recv_json(ws)
        assert error_of(err) == code, err
        assert err.get("seq") == seq, err
        assert await ping(ws) == PONG
        await ws.close()
    run(guarded(g, tenant, attack))


def env(**fields) -> str:
    base = {"v": 1, "svc": "sys", "type": "ping"}
    base.update(fields)
    return json.dumps(base)


# -- nesting and size --------------------------------------------------------------------

def test_deep_nesting_at_top_level(g):
    expect_refused(g, "[" * 100_000, "BAD_REQUEST", 1008)
    expect_refused(g, '{"a":' * 100_000, "BAD_REQUEST", 1008)


def test_deep_nesting_inside_data(g):
    expect_refused(g, '{"v":1,"svc":"sys","type":"ping","seq":3,"data":' + "[" * 100_000 + "]" * 100_000 + "}",
                   "BAD_REQUEST", 1008)
    expect_refused(g, '{"v":1,"svc":"sys","type":"ping","data":' + "[" * 100_000, "BAD_REQUEST", 1008)
    # up to 64 levels inside data is just data (SPEC 14)
    expect_survives(g, '{"v":1,"svc":"sys","type":"ping","data":' + "[" * 64 + "]" * 64 + "}", PONG)
    expect_survives(g, '{"v":1,"svc":"sys","type":"ping","data":' + '{"a":' * 63 + "[]" + "}" * 63 + "}", PONG)
    # brackets inside strings are not nesting
    expect_survives(g, env(data={"s": "[" * 500 + '\\"{' * 100}), PONG)


@pytest.mark.parametrize("depth", [65, 66, 200, 991, 992, 5000])
def test_more_than_64_levels_in_data_is_too_deep(g, depth):
    """One answer from 65 levels on, whatever the interpreter's recursion limit would say."""
    async def attack():
        ws = await attacker(g, "big")
        await ws.send('{"v":1,"svc":"sys","type":"ping","seq":4,"data":' + "[" * depth + "]" * depth + "}")
        err = await recv_json(ws)
        assert error_of(err) == "BAD_REQUEST" and "seq" not in err, err
        assert "too deep" in err["data"]["msg"], err
        assert await expect_close(ws) == 1008
    run(guarded(g, "big", attack))


def test_ten_megabyte_string_within_a_16_mib_tenant(g):
    text = "x" * (10 * 1024 * 1024)

    async def attack():
        ws = await attacker(g, "big")
        by2, _ = await connect_authed(g.url("big", "dev:listener"))
        assert (await request(by2, {"v": 1, "svc": "room", "type": "join", "room": "ten"}))["type"] == "joined"
        assert (await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "ten"}))["type"] == "joined"
        await send_json(ws, {"v": 1, "svc": "sys", "type": "ping", "data": {"blob": text}})
        assert await recv_json(ws) == PONG
        await send_json(ws, {"v": 1, "svc": "chat", "type": "send", "room": "ten", "data": {"msg": text},
                             "flags": 4, "seq": 10})
        for who in (ws, by2):
            msg = await recv_json(who, timeout=10)
            assert msg["type"] == "msg" and msg["data"]["from"] == "mallory"
            assert msg["data"]["msg"] == text
        assert await recv_json(ws) == {"v": 1, "svc": "sys", "type": "ack", "seq": 10}
        assert await ping(ws) == PONG
        await ws.close()
        await by2.close()
    run(guarded(g, "big", attack))


def test_frame_over_max_frame_bytes_is_payload_too_large_then_1009(g):
    head = '{"v":1,"svc":"sys","type":"ping","seq":5,"data":"'
    exact = head + "x" * (SMALL - len(head) - 2) + '"}'
    assert len(exact) == SMALL
    expect_survives(g, exact, PONG, tenant="small")
    over = head + "x" * (SMALL - len(head) - 1) + '"}'
    # the message was not decoded: the error carries no seq
    expect_refused(g, over, "PAYLOAD_TOO_LARGE", 1009, tenant="small")
    # far over the limit (and not even JSON): same answer
    expect_refused(g, "z" * (SMALL * 50), "PAYLOAD_TOO_LARGE", 1009, tenant="small")


# -- integers --------------------------------------------------------------------------------

def test_huge_integers(g):
    # seq is a u64
    expect_survives(g, env(seq=2**64 - 1), PONG)
    expect_refused(g, env(seq=2**64), "BAD_REQUEST", 1008)
    expect_refused(g, env(seq=10**40), "BAD_REQUEST", 1008)
    expect_refused(g, env(seq=-1), "BAD_REQUEST", 1008)
    # flags is a u32
    expect_survives(g, env(flags=2**32 - 1), PONG)
    expect_refused(g, env(flags=2**32), "BAD_REQUEST", 1008)
    expect_refused(g, env(flags=-1), "BAD_REQUEST", 1008)
    # data is any JSON: big numbers there are not the gateway's business
    expect_survives(g, env(data={"n": 10**400, "m": -(10**400), "f": 1.5e308}), PONG)
    expect_survives(g, '{"v":1,"svc":"sys","type":"ping","data":[1e999,-1e999,123456789012345678901234567890]}',
                    PONG)


def test_ack_echoes_the_largest_seq(g):
    async def attack():
        ws = await attacker(g, "big")
        await send_json(ws, {"v": 1, "svc": "sys", "type": "ping", "flags": 4, "seq": 2**64 - 1})
        assert await recv_json(ws) == PONG
        raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert raw == '{"v":1,"svc":"sys","type":"ack","seq":18446744073709551615}'
        await ws.close()
    run(guarded(g, "big", attack))


# -- shapes and types ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "[]", "[1,2]", '"hello"', "1", "-0.5", "null", "true", "false",
    "", " ", "\n", "{}", "{", "}", '{"v":1', "{'v':1}",
    '{"v":1,"svc":"sys","type":"ping"} trailing',
    '{"v":1,"svc":"sys","type":"ping"}{"v":1,"svc":"sys","type":"ping"}',
    '{"v":1,"svc":"sys","type":"ping",}',
    '{v:1,svc:"sys",type:"ping"}',
    '/* c */{"v":1,"svc":"sys","type":"ping"}',
])
def test_not_an_envelope_is_bad_request_then_1008(g, text):
    expect_refused(g, text, "BAD_REQUEST", 1008)


@pytest.mark.parametrize("fields", [
    {"svc": None}, {"svc": 1}, {"svc": ""}, {"svc": ["sys"]}, {"svc": {"a": 1}}, {"svc": True},
    {"type": None}, {"type": 2}, {"type": ""}, {"type": ["ping"]},
    {"flags": "4"}, {"flags": 4.0}, {"flags": None}, {"flags": True}, {"flags": [4]},
    {"seq": "1"}, {"seq": 1.5}, {"seq": 1.0}, {"seq": None}, {"seq": True}, {"seq": {"n": 1}},
    {"room": 5}, {"room": None}, {"room": ["a"]}, {"room": {"name": "a"}}, {"room": False},
])
def test_wrong_field_types_are_bad_request_then_1008(g, fields):
    expect_refused(g, env(**fields), "BAD_REQUEST", 1008)


@pytest.mark.parametrize("missing", ["v", "svc", "type"])
def test_missing_required_field_is_bad_request_then_1008(g, missing):
    msg = {"v": 1, "svc": "sys", "type": "ping", "seq": 1}
    del msg[missing]
    expect_refused(g, json.dumps(msg), "BAD_REQUEST", 1008)


@pytest.mark.parametrize("v", ['"1"', "1.0", "true", "null", "[1]", '{"major":1}', "1e0"])
def test_v_not_an_integer_is_bad_request(g, v):
    expect_refused(g, '{"v":%s,"svc":"sys","type":"ping","seq":9}' % v, "BAD_REQUEST", 1008)


@pytest.mark.parametrize("v", [2, 0, -1, 10**30, -(10**30), 10**4000])
def test_other_integer_version_is_unsupported_with_seq(g, v):
    expect_refused(g, env(v=v, seq=9), "UNSUPPORTED_VERSION", 1008, seq=9)
    expect_refused(g, env(v=v), "UNSUPPORTED_VERSION", 1008)


def test_a_version_of_5000_digits_is_unsupported(g):
    # more digits than Python turns into an int by default: still an integer other than 1
    expect_refused(g, '{"v":%s,"svc":"sys","type":"ping","seq":9}' % ("7" * 5000), "UNSUPPORTED_VERSION", 1008,
                   seq=9)
    expect_refused(g, '{"v":-%s,"svc":"sys","type":"ping"}' % ("1" * 5000), "UNSUPPORTED_VERSION", 1008)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "nan", "inf", "undefined"])
def test_non_json_numbers_are_bad_request(g, literal):
    expect_refused(g, '{"v":1,"svc":"sys","type":"ping","data":%s}' % literal, "BAD_REQUEST", 1008)
    expect_refused(g, '{"v":1,"svc":"sys","type":"ping","seq":%s}' % literal, "BAD_REQUEST", 1008)


@pytest.mark.parametrize("field", ['"extra":1', '"V":1', '"trace_id":"x"', '"Svc":"sys"', '"":0'])
def test_unknown_top_level_field_is_bad_request(g, field):
    expect_refused(g, '{"v":1,"svc":"sys","type":"ping","seq":2,%s}' % field, "BAD_REQUEST", 1008)


def test_flag_bits_do_not_stand_in_for_fields(g):
    # SEQ_PRESENT and ROOM_PRESENT without the fields: informational only
    expect_survives(g, env(flags=0x03), PONG)
    expect_refused_but_open(g, json.dumps({"v": 1, "svc": "room", "type": "join", "flags": 0x07, "seq": 4}),
                            "BAD_REQUEST", 4)
    expect_refused_but_open(g, json.dumps({"v": 1, "svc": "chat", "type": "send", "flags": 0x03,
                                           "data": {"msg": "x"}}), "BAD_REQUEST", None)


def test_strings_with_escapes_and_odd_unicode_survive(g):
    expect_survives(g, env(data={"s": "\u0000\u001f\ud7ff\ue000\uffff\U0010ffff"}), PONG)
    expect_survives(g, '{"v":1,"svc":"sys","type":"ping","data":"\\u00e9\\n\\t\\"\\\\"}', PONG)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "\\udc00\\ud800", "\\ud800x", "\\uDBFF\\u0041"])
def test_lone_surrogate_escapes_are_bad_request(g, escape):
    # grammatical JSON, but no Unicode string: refused like any other undecodable envelope,
    # with a message that names the problem
    for text in ('{"v":1,"svc":"sys","type":"ping","data":"%s"}' % escape,
                 '{"v":1,"svc":"room","type":"join","room":"%s"}' % escape):
        async def attack():
            ws = await attacker(g, "big")
            await ws.send(text)
            err = await recv_json(ws)
            assert error_of(err) == "BAD_REQUEST", err
            assert "surrogate" in err["data"]["msg"] and "truncated" not in err["data"]["msg"], err
            assert await expect_close(ws) == 1008
        run(guarded(g, "big", attack))


# -- invalid UTF-8 (raw frames: client libraries refuse to send them) ----------------------

@pytest.mark.parametrize("payload", [
    b"\xff",
    b"\xc0\xaf",                                                  # overlong
    b"\xed\xa0\x80",                                              # UTF-16 surrogate
    b"\xf4\x90\x80\x80",                                          # above U+10FFFF
    b'{"v":1,"svc":"sys","type":"ping","data":"\xe2\x82"}',       # truncated sequence inside a string
    b'{"v":1,"svc":"sys","type":"ping"}\xe2',                     # truncated at the very end
])
def test_invalid_utf8_closes_1007(g, payload):
    async def attack():
        raw = await raw_attacker(g, "big")
        await raw.send_text(payload)
        assert await raw.close_code() == 1007
        await raw.close()
    run(guarded(g, "big", attack))


def test_invalid_utf8_split_over_fragments_closes_1007(g):
    async def attack():
        raw = await raw_attacker(g, "big")
        await raw.send_text(b'{"v":1,"svc":"sys","type":"ping","data":"\xe2', fin=False)
        await raw.send(OP_CONT, b'\x28"}')          # 0xE2 0x28: not a continuation byte
        assert await raw.close_code() == 1007
        await raw.close()
    run(guarded(g, "big", attack))


def test_valid_utf8_split_inside_a_character_is_reassembled(g):
    async def attack():
        raw = await raw_attacker(g, "big")
        await raw.send_text(json.dumps({"v": 1, "svc": "room", "type": "join", "room": "utf8"}))
        assert (await raw.recv_json())["type"] == "joined"
        text = '{"v":1,"svc":"chat","type":"send","room":"utf8","data":{"msg":"\u20ac\U0001F600"}}'
        data = text.encode()
        cut = data.index(b"\xe2") + 1                # inside the euro sign
        await raw.send_text(data[:cut], fin=False)
        await raw.send(OP_CONT, data[cut:])
        msg = await raw.recv_json()
        assert msg == {"v": 1, "svc": "chat", "type": "msg", "room": "utf8",
                       "data": {"from": "mallory", "msg": "\u20ac\U0001F600"}}
        await raw.close()
    run(guarded(g, "big", attack))


# -- fragments ---------------------------------------------------------------------------------

def test_fragments_under_the_limit_are_reassembled(g):
    async def attack():
        raw = await raw_attacker(g, "small")
        data = PING_TEXT.encode()
        await raw.send_text(data[:5], fin=False)
        await raw.send(OP_CONT, data[5:10], fin=False)
        await raw.send(OP_CONT, b"", fin=False)               # an empty fragment is fine
        await raw.send(OP_CONT, data[10:])
        assert await raw.recv_json() == PONG
        # a control frame between fragments is allowed (RFC 6455 5.4)
        await raw.send_text(data[:7], fin=False)
        await raw.send(OP_PING, b"hi")
        await raw.send(OP_CONT, data[7:])
        seen = []
        while len(seen) < 2:
            op, payload = await raw.frame()
            seen.append((op, payload))
        assert (OP_PONG, b"hi") in seen
        assert (OP_TEXT, b'{"v":1,"svc":"sys","type":"pong"}') in seen
        # exactly max_frame_bytes in total, over many fragments
        head = '{"v":1,"svc":"sys","type":"ping","data":"'
        exact = (head + "y" * (SMALL - len(head) - 2) + '"}').encode()
        assert len(exact) == SMALL
        chunks = [exact[i:i + 100] for i in range(0, SMALL, 100)]
        for c in chunks[:-1]:
            await raw.send(OP_CONT if c is not chunks[0] else OP_TEXT, c, fin=False)
        await raw.send(OP_CONT, chunks[-1])
        assert await raw.recv_json() == PONG
        await raw.close()
    run(guarded(g, "small", attack))


@pytest.mark.parametrize("sizes", [
    [400, 400, 400],          # the total crosses the limit on the third fragment
    [1000, 25],               # one byte over
    [SMALL + 1, 10],          # the first fragment alone is over
])
def test_fragmented_message_over_the_limit(g, sizes):
    async def attack():
        raw = await raw_attacker(g, "small")
        for i, n in enumerate(sizes):
            last = i == len(sizes) - 1
            try:
                await raw.send(OP_TEXT if i == 0 else OP_CONT, b"a" * n, fin=last)
            except (ConnectionError, OSError):
                break                        # the gateway may hang up before the rest is sent
        err = await raw.recv_json()
        assert error_of(err) == "PAYLOAD_TOO_LARGE" and "seq" not in err
        assert await raw.close_code() == 1009
        await raw.close()
    run(guarded(g, "small", attack))


def test_new_message_inside_a_fragmented_one_is_a_protocol_error(g):
    async def attack():
        raw = await raw_attacker(g, "big")
        await raw.send_text(PING_TEXT[:5], fin=False)
        await raw.send_text(PING_TEXT)
        assert await raw.close_code() == 1002
        await raw.close()
    run(guarded(g, "big", attack))


def test_continuation_without_a_start_is_a_protocol_error(g):
    async def attack():
        raw = await raw_attacker(g, "big")
        await raw.send(OP_CONT, PING_TEXT.encode())
        assert await raw.close_code() == 1002
        await raw.close()
    run(guarded(g, "big", attack))


# -- many bad clients at once ------------------------------------------------------------------

def test_a_crowd_of_bad_clients_leaves_the_good_one_alone(g):
    async def attack():
        bad = ["[" * 100_000, '{"v":"1"}', env(v=3, seq=1), "null", env(extra=True), env(seq=2**70)]
        clients = [await attacker(g, "big", f"mallory{i}") for i in range(len(bad))]
        await asyncio.gather(*(ws.send(t) for ws, t in zip(clients, bad)))
        codes = await asyncio.gather(*(expect_close(ws) for ws in clients))
        assert codes == [1008] * len(bad)
        # their rooms and sessions are gone
        await asyncio.sleep(0.05)
        names = [f"mallory{i}" for i in range(len(bad))]
        assert g.call(lambda: [g.tenant("big").sessions.sessions_of(u) for u in names]) == [[]] * len(bad)
        assert g.call(lambda: list(g.tenant("big").rooms.rooms[ARENA].users)) == ["bystander"]
    run(guarded(g, "big", attack))
