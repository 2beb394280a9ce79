"""Memory is bounded, not only time (SPEC 5): the outbound caps per session and per
process, the refusal of oversized frames from their header, and the read buffer back to
its idle size. Over real sockets; a client that "never reads" is a raw socket with a
small receive buffer, and the gateway's side of it gets a small send buffer (set on the
real socket through gw.call) so the kernel cannot hide megabytes of it."""
import asyncio
import json
import socket
import time

import pytest

from tests.client import (
    PING, PONG, close_code_of, connect_authed, error_of, http_get, mask_frame, parse_frames, raw_upgrade,
    read_frames, recv, recv_json, request, run,
)
from wsprism import _fast
from wsprism.transport.server import READ_BUFFER_INIT

MIB = 1024 * 1024

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  writer_send_timeout_ms: 60000        # the time rule never fires here: only the memory rules
  outbound_high_water_bytes: 65536
  outbound_max_bytes: 524288
  outbound_total_max_bytes: 1048576
tenants:
  - id: acme
    limits: {max_frame_bytes: 65536}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
  - id: small
    limits: {max_frame_bytes: 1024}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
  - id: big
    limits: {max_frame_bytes: 200000}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
"""


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory(YAML)


def session_of(g, tenant: str, user: str):
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        found = g.call(lambda: g.tenant(tenant).sessions.sessions_of(user))
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no session for {user}")


def stuck_member(g, tenant: str, user: str, room: str) -> socket.socket:
    """A member of `room` that never reads; the gateway's side of its socket has a small
    send buffer, so what it is sent piles up in the gateway's outbound buffer."""
    s = raw_upgrade(g.port, f"tenant={tenant}&ticket=dev:{user}", rcvbuf=4096)
    s.sendall(mask_frame(1, json.dumps({"v": 1, "svc": "room", "type": "join", "room": room}).encode()))
    session = session_of(g, tenant, user)
    deadline = time.monotonic() + 3
    while g.call(lambda: room not in session.rooms) and time.monotonic() < deadline:
        time.sleep(0.02)

    def small_sndbuf():
        sock = session.transport.underlying_transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    g.call(small_sndbuf)
    return s


def stats(g, tenant="acme"):
    return g.call(lambda: (g.tenant(tenant).stats.outbound_max_closes, g.tenant(tenant).stats.outbound_total_closes,
                           g.tenant(tenant).stats.writer_timeouts))


def chat(room: str, n: int) -> str:
    return json.dumps({"v": 1, "svc": "chat", "type": "send", "room": room, "data": {"msg": "x" * n}})


async def member(g, tenant, user, room):
    ws, _ = await connect_authed(g.url(tenant, f"dev:{user}"), max_queue=None)
    assert (await request(ws, {"v": 1, "svc": "room", "type": "join", "room": room}))["type"] == "joined"
    return ws


async def receive(ws, n: int, kind=str) -> int:
    got = 0
    while got < n:
        m = await recv(ws, timeout=5)
        if isinstance(m, kind) and (kind is bytes or '"msg"' in m):
            got += 1
    return got


# -- per session -----------------------------------------------------------------------------

def test_reliable_past_outbound_max_is_4005_at_once(g):
    before = stats(g)
    stuck = stuck_member(g, "acme", "stuck1", "rel")
    session = session_of(g, "acme", "stuck1")

    async def main():
        fast = await member(g, "acme", "fast1", "rel")
        sender = await member(g, "acme", "sender1", "rel")
        n = 300                                            # 300 x 4 KB = 1.2 MB > 512 KiB
        readers = [asyncio.create_task(receive(fast, n)), asyncio.create_task(receive(sender, n))]
        t0 = time.monotonic()
        for i in range(n):
            await sender.send(chat("rel", 4000))
            if i % 10 == 0:
                await asyncio.sleep(0.005)     # paced, so the readers (in this process) keep up
        assert await asyncio.gather(*readers) == [n, n]    # the others receive everything
        deadline = time.monotonic() + 2
        while g.call(lambda: session.state) < _fast.CLOSING and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 < 5                   # long before writer_send_timeout_ms (60 s)
        await fast.close(); await sender.close()
    run(main())
    assert stats(g) == (before[0] + 1, before[1], before[2])
    assert g.call(lambda: session.state) >= _fast.CLOSING
    # a session closed for memory stops counting at once
    assert g.call(lambda: (session.acct, session.out_bytes, session in g.gw.corker.holders)) == (0, 0, False)
    frames = read_frames(stuck, 2.0)                       # what it held, then its close (or 1006)
    stuck.close()
    assert close_code_of(frames) in (4005, None)
    assert g.call(lambda: g.tenant().sessions.sessions_of("stuck1")) == []
    assert http_get(g.port, "/healthz")[0] == 200


LOSSY_YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  writer_send_timeout_ms: 60000
  outbound_high_water_bytes: 65536
  outbound_max_bytes: 65536            # as low as allowed: the mark itself
tenants:
  - id: acme
    limits: {max_frame_bytes: 16384}
    policy:
      ext_allowlist: ["room:*", "sys:*"]
      hot_allowlist: ["1:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
"""


def test_lossy_past_outbound_max_is_4005_too(gateway_factory):
    """A member under its high-water mark that is sent more than outbound_max_bytes of
    Hot Lane frames within one loop turn is closed, whatever the lane; a member over its
    mark only has them dropped (counted), as before."""
    g = gateway_factory(LOSSY_YAML)
    stuck = stuck_member(g, "acme", "stuck2", "hot")
    session = session_of(g, "acme", "stuck2")
    sender = raw_upgrade(g.port, "tenant=acme&ticket=dev:hotsender")
    sender.sendall(mask_frame(1, b'{"v":1,"svc":"room","type":"join","room":"hot"}'))
    time.sleep(0.2)
    # 200 frames of 4 KB in one write: the gateway relays many of them within one turn
    sender.sendall(b"".join(mask_frame(2, b"\x01\x01\x00" + bytes(4000)) for _ in range(200)))
    deadline = time.monotonic() + 3
    while g.call(lambda: session.state) < _fast.CLOSING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert g.call(lambda: session.state) >= _fast.CLOSING
    closes, total_closes, timeouts = stats(g)
    assert closes in (1, 2) and (total_closes, timeouts) == (0, 0)   # the sender reads nothing either
    stuck.close(); sender.close()
    assert http_get(g.port, "/healthz")[0] == 200


# -- per process -----------------------------------------------------------------------------

def test_past_outbound_total_the_largest_holders_go_first(g):
    """Four stuck members in one room, each under its own cap (512 KiB) but together
    over the process total (1 MiB): the largest holders are closed until the sum is
    back under the total; the rest stay, and so do the readers."""
    before = stats(g)
    stuck = [stuck_member(g, "acme", f"hold{i}", "tot") for i in range(4)]
    sessions = [session_of(g, "acme", f"hold{i}") for i in range(4)]

    async def main():
        sender = await member(g, "acme", "sender3", "tot")
        n = 100                                              # 400 KB to each member
        reader = asyncio.create_task(receive(sender, n))
        for i in range(n):
            await sender.send(chat("tot", 4000))
            if i % 10 == 0:
                await asyncio.sleep(0.005)
        assert await reader == n
        await asyncio.sleep(0.3)
        assert await request(sender, PING) == PONG
        await sender.close()
    run(main())
    states = g.call(lambda: [s.state for s in sessions])
    closed = sum(1 for st in states if st >= _fast.CLOSING)
    after = stats(g)
    assert after[0] == before[0]                           # no one passed its own cap
    assert after[1] - before[1] == closed >= 1             # ... the total made these go
    assert closed < 4                                      # and not everyone
    assert g.call(lambda: g.gw.corker.total) <= 1 * MIB
    for s in stuck:
        s.close()


def test_outbound_closes_are_in_the_metrics_by_reason(g):
    _, _, body = http_get(g.port, "/metrics")
    text = body.decode()
    for reason in ("send_timeout", "outbound_max", "outbound_total_max"):
        assert f'wsprism_writer_timeouts_total{{reason="{reason}",tenant="acme"}}' in text or \
               f'wsprism_writer_timeouts_total{{tenant="acme",reason="{reason}"}}' in text, reason


# -- inbound: refused from the header ----------------------------------------------------------

def header(opcode: int, n: int, fin: bool = True) -> bytes:
    """A masked client frame header announcing n payload bytes (the mask key included)."""
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes([b0, 0x80 | n]) + b"\x01\x02\x03\x04"
    if n < 65536:
        return bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big") + b"\x01\x02\x03\x04"
    return bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big") + b"\x01\x02\x03\x04"


def reader_capacity(g, session):
    return g.call(lambda: _fast.reader_of(session.transport.underlying_transport.get_protocol()).capacity)


def refused(s: socket.socket, timeout: float = 1.5) -> tuple[list, float]:
    t0 = time.monotonic()
    s.settimeout(timeout)
    data = b""
    while b"\x88" not in data[-200:] or close_code_of(parse_frames(data)[0]) is None:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        data += chunk
    return parse_frames(data)[0], time.monotonic() - t0


@pytest.mark.parametrize("opcode,counter", [(1, ("ext", "deny", "too_large")), (2, ("hot", "deny", "too_large"))])
def test_a_header_announcing_too_much_is_refused_before_the_payload(g, opcode, counter):
    """The issue's case: `82 ff 00 00 00 00 00 0f 42 40` + mask on a 1 KiB tenant, then
    990,000 of the 1,000,000 bytes: PAYLOAD_TOO_LARGE and 1009 at once, nothing buffered."""
    before = g.call(lambda: g.tenant("small").stats.policy[counter])
    s = raw_upgrade(g.port, "tenant=small&ticket=dev:announcer")
    session = session_of(g, "small", "announcer")
    idle = reader_capacity(g, session)
    s.sendall(header(opcode, 1_000_000))                   # the header alone
    frames, took = refused(s)
    texts = [json.loads(p) for op, p in frames if op == 1 and b"authed" not in p]
    assert [error_of(m) for m in texts] == ["PAYLOAD_TOO_LARGE"]
    assert close_code_of(frames) == 1009 and took < 1.0
    try:
        s.sendall(bytes(990_000))                          # the rest is never read
    except OSError:
        pass
    s.close()
    assert reader_capacity(g, session) == idle             # nothing of it was buffered
    assert g.call(lambda: g.tenant("small").stats.policy[counter]) == before + 1


def test_fragments_announcing_too_much_together_are_refused_from_the_header(g):
    s = raw_upgrade(g.port, "tenant=small&ticket=dev:fragger")
    s.sendall(mask_frame(1, b"a" * 600, fin=False) + header(0, 600))   # 600 + 600 > 1024
    frames, took = refused(s)
    texts = [json.loads(p) for op, p in frames if op == 1 and b"authed" not in p]
    assert [error_of(m) for m in texts] == ["PAYLOAD_TOO_LARGE"]
    assert close_code_of(frames) == 1009 and took < 1.0
    s.close()


def test_frames_before_the_refused_header_are_answered_first(g):
    s = raw_upgrade(g.port, "tenant=small&ticket=dev:mixed")
    ping = json.dumps(PING).encode()
    s.sendall(mask_frame(1, ping) + mask_frame(9, b"p") + mask_frame(1, ping) + header(1, 5000) + b"zz")
    frames, _ = refused(s)
    s.close()
    texts = [p for op, p in frames if op == 1 and b"authed" not in p]
    assert texts[:2] == [b'{"v":1,"svc":"sys","type":"pong"}'] * 2
    assert error_of(json.loads(texts[2])) == "PAYLOAD_TOO_LARGE"
    assert (0xA, b"p") in frames                            # control frames are not corked: any place
    assert close_code_of(frames) == 1009


def test_a_header_split_over_reads_is_still_refused(g):
    s = raw_upgrade(g.port, "tenant=small&ticket=dev:splitter")
    h = header(2, 70_000)
    for b in h:
        s.sendall(bytes([b]))
        time.sleep(0.01)
    frames, took = refused(s)
    assert close_code_of(frames) == 1009
    s.close()


def test_exactly_the_limit_passes_and_control_frames_interleave(g):
    async def main():
        ws, _ = await connect_authed(g.url("small", "dev:exact"))
        head = '{"v":1,"svc":"sys","type":"ping","data":"'
        exact = head + "y" * (1024 - len(head) - 2) + '"}'
        assert len(exact) == 1024
        await ws.send(exact)
        assert await recv_json(ws) == PONG
        await ws.send([exact[:500], exact[500:]])       # fragments adding up to exactly the limit
        assert await recv_json(ws) == PONG
        await ws.close()
    run(main())


# -- inbound: the read buffer back to idle -------------------------------------------------------

def test_the_handshake_is_not_kept_once_upgraded(g):
    """picows keeps the upgrade request and the 101 response on the transport; the
    session drops them (compiled) or empties their header dicts (twins) once connected,
    and picows' own frame buffer, shrunk to 256 bytes, still frames the largest pong."""
    s = raw_upgrade(g.port, "tenant=big&ticket=dev:trimmed")
    session = session_of(g, "big", "trimmed")
    request, response = g.call(lambda: (session.transport.request, session.transport.response))
    if _fast.USING_EXTENSIONS:
        assert request is None and response is None
    else:
        assert len(request.headers) == 0 and len(response.headers) == 0
    s.sendall(mask_frame(9, b"p" * 125))
    assert (0xA, b"p" * 125) in read_frames(s, 0.5)
    s.sendall(mask_frame(1, json.dumps(PING).encode()))
    assert (1, b'{"v":1,"svc":"sys","type":"pong"}') in read_frames(s, 0.5)
    s.close()


def test_the_read_buffer_returns_to_its_idle_size_after_a_large_message(g):
    s = raw_upgrade(g.port, "tenant=big&ticket=dev:bigsender")
    session = session_of(g, "big", "bigsender")
    idle = reader_capacity(g, session)
    msg = json.dumps({"v": 1, "svc": "sys", "type": "ping", "data": "q" * 190_000}).encode()
    frame = mask_frame(1, msg)
    s.sendall(frame[:150_000])                             # most of it: the buffer grows to hold it
    time.sleep(0.3)
    grown = reader_capacity(g, session)
    s.sendall(frame[150_000:])
    frames = read_frames(s, 0.5)
    assert (1, b'{"v":1,"svc":"sys","type":"pong"}') in frames
    after = reader_capacity(g, session)
    if _fast.USING_EXTENSIONS:
        assert idle == READ_BUFFER_INIT and grown > 150_000 and after == idle
    else:                                                  # the twins cannot reach picows' buffer
        assert idle is grown is after is None
    s.sendall(mask_frame(1, json.dumps(PING).encode()))   # and it still works
    assert (1, b'{"v":1,"svc":"sys","type":"pong"}') in read_frames(s, 0.5)
    s.close()
