"""`wsprism start` freezes the collector's view after startup and after every liveness
sweep (wsprism/ops/gcfreeze.py). That is only safe if a closed session leaves no cyclic
garbage: a frozen cycle is never collected. These tests check that sessions (opened,
joined to rooms, talking, closed by either side) are freed by reference counting
alone, and that `gcfreeze` is off for a gateway embedded in another process."""
import gc
import json
import time

from tests.client import mask_frame, raw_upgrade, read_frames
from wsprism.ops import gcfreeze

N = 40
PING = mask_frame(1, b'{"v":1,"svc":"sys","type":"ping"}')


def join(room: str) -> bytes:
    return mask_frame(1, json.dumps({"v": 1, "svc": "room", "type": "join", "room": room}).encode())


def sessions_gone(gw, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.call(lambda: gw.tenant().sessions.count) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("sessions still open")


def churn(gw, n: int) -> None:
    socks = []
    for i in range(n):
        s = raw_upgrade(gw.port, f"tenant=acme&ticket=dev:gc{i}")
        s.sendall(join(f"gc:{i % 3}") + join(f"gc:x{i}") + PING)
        socks.append(s)
    for s in socks:
        read_frames(s, 0.05)
    for i, s in enumerate(socks):
        if i % 2:
            s.sendall(mask_frame(8, (1000).to_bytes(2, "big")))   # the client closes
            read_frames(s, 0.2)
        s.close()                                                 # or simply goes away
    sessions_gone(gw)


def test_closed_sessions_leave_no_cyclic_garbage(gw):
    churn(gw, 5)                             # warm: lazily created module state, caches
    gw.call(gc.collect)
    gc.collect()
    churn(gw, N)
    found = gw.call(gc.collect)              # the whole process: gateway and test client
    assert found < N, f"{found} unreachable objects after {N} sessions: a session's objects form a cycle"


def test_an_embedded_gateway_leaves_the_collector_alone(gw):
    assert gcfreeze.ENABLED is False
    before = gc.get_freeze_count()
    gcfreeze.startup()
    gcfreeze.after_sweep()
    assert gc.get_freeze_count() == before
