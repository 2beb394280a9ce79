"""Soak (slow): recovery under churn, issue 12's Measured list.

A real gateway process with `policy.history`; a publisher sends 10,000 chat messages at
500/s into four rooms; twenty receivers (five per room) follow them; fifty times a random
receiver's connection is cut (abruptly, or with a clean close), and it comes back after a
random pause and re-joins with `since`; once, half way, the gateway is restarted (drain,
new process, same port: a new epoch). Every receiver checks, per room, everything it is
sent against its own position:

- within an epoch, room messages come one offset after the other: no gap, no duplicate;
- a re-join that says `recovered: true` replays exactly since+1 .. `joined.offset`;
- a gap or another epoch is only ever seen in a replay that said `recovered: false`:
  every real loss is reported;

and all receivers agree on what each (room, epoch, offset) holds. Sizes come from the
environment: WSPRISM_HSOAK_MESSAGES (10000), WSPRISM_HSOAK_RATE (500),
WSPRISM_HSOAK_DROPS (50). Prints one `SOAK history ...` line.
"""
import asyncio
import json
import os
import random
import time

import pytest
import websockets

from tests.client import connect, recv_json, send_json
from tests.soak.test_soak import GatewayProcess

MESSAGES = int(os.environ.get("WSPRISM_HSOAK_MESSAGES", "10000"))
RATE = float(os.environ.get("WSPRISM_HSOAK_RATE", "500"))
DROPS = int(os.environ.get("WSPRISM_HSOAK_DROPS", "50"))
ROOMS = [f"h{i}" for i in range(4)]
PER_ROOM = 5

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:PORT"
  drain_grace_ms: 200
tenants:
  - id: soak
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      rate_limit_rps: 100000
      rate_limit_burst: 100000
      history: {size: 200, ttl_ms: 60000}
"""


class Gateway(GatewayProcess):
    """The soak's gateway process, restartable on the same port (a new process, a new log)."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path, YAML)
        self.tmp_path = tmp_path
        self.restarts = 0

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        where = self.tmp_path / f"restart{self.restarts}"
        where.mkdir()
        port = self.port
        GatewayProcess.__init__(self, where, (self.tmp_path / "wsprism.yaml").read_text())   # the same port
        self.port = port

    def url(self, user: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws?tenant=soak&ticket=dev:{user}&sid={user}"


class Failure(AssertionError):
    pass


class Receiver:
    """One client in one room that keeps its position and checks every message."""

    def __init__(self, gw: Gateway, name: str, room: str, truth: dict, stats: dict) -> None:
        self.gw, self.name, self.room, self.truth, self.stats = gw, name, room, truth, stats
        self.epoch = None
        self.offset = 0
        self.ws = None
        self.drop_now = asyncio.Event()
        self.done = False

    def check(self, m: dict) -> None:
        key = (self.room, m["epoch"], m["offset"])
        seen = self.truth.setdefault(key, m["data"]["msg"])
        if seen != m["data"]["msg"]:
            raise Failure(f"{self.name}: {key} holds {m['data']['msg']!r}, another receiver got {seen!r}")

    def live(self, m: dict) -> None:
        self.check(m)
        if m["epoch"] != self.epoch or m["offset"] != self.offset + 1:
            raise Failure(f"{self.name}: live {m['epoch']}/{m['offset']} after {self.epoch}/{self.offset}: unreported loss"
                          " or duplicate")
        self.offset = m["offset"]
        self.stats["live"] += 1

    async def join(self) -> None:
        since = None if self.epoch is None else {"offset": self.offset, "epoch": self.epoch}
        env = {"v": 1, "svc": "room", "type": "join", "room": self.room}
        if since is not None:
            env["data"] = {"since": since}
        await send_json(self.ws, env)
        replay = []
        while True:
            m = await recv_json(self.ws, 10)
            if m["type"] == "joined":
                break
            self.check(m)
            replay.append(m)
        d = m["data"]
        offsets = [x["offset"] for x in replay]
        if any(x["epoch"] != d["epoch"] for x in replay) or offsets != list(range(d["offset"] - len(replay) + 1, d["offset"] + 1)):
            raise Failure(f"{self.name}: replay {offsets[:3]}..{offsets[-3:]} does not end at joined {d}")
        if since is None:
            self.stats["first_joins"] += 1
        elif d.get("recovered"):
            if d["epoch"] != since["epoch"] or offsets != list(range(since["offset"] + 1, d["offset"] + 1)):
                raise Failure(f"{self.name}: recovered true but replay {offsets[:3]}.. from {since} to {d}")
            self.stats["recovered"] += 1
            self.stats["replayed"] += len(replay)
        else:
            # a loss, reported: something after `since` is not here (or another epoch)
            lost = d["epoch"] != since["epoch"] or (offsets[0] if offsets else d["offset"] + 1) > since["offset"] + 1
            self.stats["not_recovered"] += 1
            self.stats["not_recovered_with_loss"] += lost
            self.stats["replayed"] += len(replay)
        self.epoch, self.offset = d["epoch"], d["offset"]

    async def run(self) -> None:
        while not self.done:
            try:
                self.ws = await connect(self.gw.url(self.name), max_queue=None)
                m = await recv_json(self.ws, 10)
                assert m["type"] == "authed", m
                await self.join()
                reading = asyncio.ensure_future(self._read())
                dropping = asyncio.ensure_future(self.drop_now.wait())
                await asyncio.wait({reading, dropping}, return_when=asyncio.FIRST_COMPLETED)
                if dropping.done() and not reading.done():
                    self.drop_now.clear()
                    if random.random() < 0.5:
                        self.ws.transport.abort()           # the link just goes
                    else:
                        await self.ws.close()
                    reading.cancel()
                    self.stats["drops"] += 1
                    await asyncio.sleep(random.uniform(0.05, 2.0))
                else:
                    dropping.cancel()
                    reading.result()                          # raises Failure, or the server closed us
            except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
                self.stats["server_closes"] += 1
                await asyncio.sleep(random.uniform(0.05, 0.5))

    async def _read(self) -> None:
        while True:
            self.live(json.loads(await self.ws.recv()))


async def publisher(gw: Gateway, stats: dict) -> None:
    n = 0
    interval = 1.0 / RATE
    t0 = time.monotonic()
    ws = reader = None
    while n < MESSAGES:
        try:
            if ws is None:
                ws = await connect(gw.url("publisher"), max_queue=None)
                await recv_json(ws, 10)
                for room in ROOMS:
                    await send_json(ws, {"v": 1, "svc": "room", "type": "join", "room": room})
                reader = asyncio.ensure_future(_discard(ws))
            due = t0 + n * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await send_json(ws, {"v": 1, "svc": "chat", "type": "send", "room": ROOMS[n % len(ROOMS)],
                                 "data": {"msg": f"p{n}"}})
            n += 1
            stats["sent"] = n
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
            ws = None
            if reader is not None:
                reader.cancel()
            await asyncio.sleep(0.1)
    await ws.close()


async def _discard(ws) -> None:
    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_recovery_soak(tmp_path):
    gw = Gateway(tmp_path)
    stats = dict.fromkeys(("sent", "live", "first_joins", "recovered", "not_recovered", "not_recovered_with_loss",
                           "replayed", "drops", "server_closes"), 0)
    truth: dict = {}

    async def main():
        receivers = [Receiver(gw, f"r{i}", ROOMS[i % len(ROOMS)], truth, stats) for i in range(PER_ROOM * len(ROOMS))]
        tasks = [asyncio.ensure_future(r.run()) for r in receivers]
        await asyncio.sleep(1.0)
        pub = asyncio.ensure_future(publisher(gw, stats))
        duration = MESSAGES / RATE
        restart_at = duration / 2
        t0 = time.monotonic()
        restarted = False
        for i in range(DROPS):
            await asyncio.sleep(duration / (DROPS + 1))
            random.choice(receivers).drop_now.set()
            if not restarted and time.monotonic() - t0 >= restart_at:
                restarted = True
                await asyncio.to_thread(gw.restart)
            for t in tasks:
                if t.done():
                    t.result()
        await pub
        await asyncio.sleep(2.5)                  # the last ones back catch up
        for r in receivers:
            r.done = True
        for t in tasks:
            if t.done():
                t.result()                        # a Failure surfaces here
            t.cancel()
        for r in receivers:
            if r.ws is not None:
                await r.ws.close()
        return receivers

    try:
        receivers = asyncio.run(main())
    finally:
        code = gw.stop()
    print(f"SOAK history: {stats['sent']} sent, {stats['live']} live deliveries, {stats['drops']} drops,"
          f" {stats['server_closes']} server closes; re-joins: {stats['recovered']} recovered,"
          f" {stats['not_recovered']} not ({stats['not_recovered_with_loss']} with a loss), {stats['replayed']}"
          f" replayed; {len(truth)} positions")
    assert code == 0
    assert stats["sent"] == MESSAGES
    assert stats["drops"] >= DROPS * 0.8                     # a drop asked while one is away is skipped
    assert stats["recovered"] > stats["drops"] / 2           # most come back within size
    assert stats["not_recovered"] >= len(receivers)          # at least the restart's new epoch
    assert stats["not_recovered_with_loss"] == stats["not_recovered"]   # never "not recovered" for nothing
    # in the end every receiver of a room stands at the room's newest position
    for room in ROOMS:
        ends = {(r.epoch, r.offset) for r in receivers if r.room == room}
        assert len(ends) == 1, (room, ends)
        epoch, offset = ends.pop()
        assert offset == max(o for (rm, e, o) in truth if rm == room and e == epoch)
