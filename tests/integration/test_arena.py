"""examples/arena end to end: the gateway started as its own process from
examples/arena/arena.yaml (as its README says), players over real sockets."""
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.client import connect_authed, error_of, joined, recv, recv_json, request, run, send_json

ARENA = Path(__file__).resolve().parents[2] / "examples" / "arena"
sys.path.insert(0, str(ARENA))
from arena import decode_state  # noqa: E402

sys.path.remove(str(ARENA))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    port = free_port()
    cfg = tmp_path_factory.mktemp("arena") / "arena.yaml"
    cfg.write_text((ARENA / "arena.yaml").read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", str(cfg)], cwd=ARENA, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"arena gateway did not start: {proc.stderr.read()}")
            time.sleep(0.05)
    yield port
    proc.terminate()
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def url(port: int, name: str) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws?tenant=arena&ticket=dev:{name}"


def steer(dx: int, dy: int, ack_seq: int | None = None) -> bytes:
    if ack_seq is None:
        return bytes([7, 1, 0]) + struct.pack("bb", dx, dy)
    return bytes([7, 1, 0x03]) + struct.pack("<Ibb", ack_seq, dx, dy)     # SEQ_PRESENT | ACK_REQUESTED


async def next_state(ws, timeout: float = 2.0):
    """The next state frame (skipping text messages)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv(ws, max(0.01, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            assert msg[:3] == bytes([7, 2, 0])
            return decode_state(msg)


async def next_text(ws, **match) -> dict:
    """The next text message whose fields include `match` (skipping state frames and others)."""
    while True:
        raw = await recv(ws)
        if isinstance(raw, str):
            m = json.loads(raw)
            if all(m.get(k) == v for k, v in match.items()):
                return m


async def until_roster(ws, users: set[str]) -> dict:
    while True:
        m = await next_text(ws, type="roster")
        if set(m["data"]["players"].values()) == users:
            return m


def test_players_steer_tick_and_chat(port):
    async def main():
        alice, _ = await connect_authed(url(port, "alice"))
        assert await request(alice, {"v": 1, "svc": "room", "type": "join", "room": "arena:1"}) == joined("arena:1")
        roster_a = await until_roster(alice, {"alice"})
        bob, _ = await connect_authed(url(port, "bob"))
        assert await request(bob, {"v": 1, "svc": "room", "type": "join", "room": "arena:1"}) == joined("arena:1")
        roster = await until_roster(alice, {"alice", "bob"})
        await until_roster(bob, {"alice", "bob"})
        slots = {user: int(slot) for slot, user in roster["data"]["players"].items()}
        # ticks arrive at ~20 Hz, with both players, the tick number going up
        t0 = time.monotonic()
        first = await next_state(bob)
        states = [first] + [await next_state(bob) for _ in range(5)]
        rate = 5 / (time.monotonic() - t0)
        ticks = [t for t, _ in states]
        assert ticks == sorted(ticks) and len(set(ticks)) == 6
        assert set(states[-1][1]) == set(slots.values())
        # alice steers right and down (asking for more than one step): one step per tick
        start = states[-1][1][slots["alice"]]
        await alice.send(steer(100, 100, ack_seq=9))
        acked, tick_a, pos = False, None, None
        for _ in range(400):
            raw = await recv(alice)
            if not isinstance(raw, bytes):
                continue
            if raw[:3] == bytes([7, 1, 0x05]):
                assert raw == bytes([7, 1, 0x05, 9, 0, 0, 0])          # the steer's ack
                acked = True                # state frames from here on are after the steer
                continue
            if not acked:
                continue
            tick, players = decode_state(raw)
            if tick_a is None:
                tick_a, pos = tick, players[slots["alice"]]
            elif tick >= tick_a + 3:
                moved = players[slots["alice"]]
                assert moved[0] - pos[0] == tick - tick_a and moved[1] - pos[1] == tick - tick_a
                break
        else:
            raise AssertionError("no state frames after the steer")
        assert pos[0] >= start[0]
        # chat on the Ext Lane reaches both
        await send_json(bob, {"v": 1, "svc": "chat", "type": "send", "room": "arena:1", "data": {"msg": "gg"}})
        chat = await next_text(alice, svc="chat")
        # a late joiner's query over the Ext Lane
        await send_json(bob, {"v": 1, "svc": "arena", "type": "state", "room": "arena:1", "seq": 3})
        reply = await next_text(bob, type="reply")
        # a bad steer frame: sys.error, the session stays
        await bob.send(bytes([7, 1, 0]) + b"\x01")
        err = await next_text(bob, type="error")
        await bob.close()
        left = await until_roster(alice, {"alice"})
        await alice.close()
        return roster_a, rate, chat, reply, err, left
    roster_a, rate, chat, reply, err, left = run(main())
    assert roster_a["room"] == "arena:1" and roster_a["svc"] == "arena"
    assert 8 < rate < 60                                  # 20 Hz, loosely (a shared machine)
    assert chat["data"] == {"from": "bob", "msg": "gg"}
    assert reply["seq"] == 3 and set(reply["data"]) == {"tick", "players"} and len(reply["data"]["players"]) == 2
    assert error_of(err) == "BAD_REQUEST" and "2 bytes" in err["data"]["msg"]
    assert list(left["data"]["players"].values()) == ["alice"]


def test_steering_needs_a_room_and_only_op_1_passes(port):
    async def main():
        ws, _ = await connect_authed(url(port, "carol"))
        await ws.send(steer(1, 0))                          # no active room
        no_room = await recv_json(ws)
        await request(ws, {"v": 1, "svc": "room", "type": "join", "room": "arena:2"})
        await ws.send(bytes([7, 2, 0, 0, 0]))                # op 2 is the server's: not allowed
        wrong_op = await next_text(ws, type="error")
        await ws.close()
        return no_room, wrong_op
    no_room, wrong_op = run(main())
    assert error_of(no_room) == "NOT_ALLOWED" and no_room["data"]["msg"] == "join a room first"
    assert error_of(wrong_op) == "NOT_ALLOWED" and "hot_allowlist" in wrong_op["data"]["msg"]
