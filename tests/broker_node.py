"""A broker node in its own process, for the tests: `python -m tests.broker_node URL PREFIX MODE ...`.

Modes (each prints one JSON line on stdout when done, then exits or waits):
Every mode stays registered (its lease renewed) until stdin closes.

- `joins ROOM N MAX START`: N concurrent joins of distinct users into ROOM (max_users_per_room MAX),
  all written at once after wall-clock START; prints {"ok": [...], "refused": [...]}.
- `admits USER N LIMIT START`: N concurrent admissions of USER (limit LIMIT, kick_oldest);
  prints {"ok": [[sid, seq, kicks]...], "refused": n}.
- `member ROOM USER...`: registers sessions and memberships, prints {"node": id}, then
  stays up renewing its lease until killed.
"""
import asyncio
import json
import sys
import time

from wsprism.config.schema import BrokerConfig
from wsprism.broker import RedisBroker


class Limits:
    def __init__(self, max_users: int = 0) -> None:
        self.max_users_per_room = max_users
        self.max_rooms_total = 0
        self.max_rooms_per_user = 0


class Host:
    def broker_tenants(self):
        return ["acme"]

    def presence_events(self, tenant_id):
        return True

    def on_room_frames(self, *a):
        pass

    def on_presence(self, *a):
        pass

    def on_kick(self, *a):
        pass

    def on_user_frame(self, *a):
        pass

    def on_disconnect_user(self, *a):
        pass

    async def resync(self, broker, fresh):
        pass


async def until_up(broker) -> None:
    for _ in range(500):
        if broker.up:
            return
        await asyncio.sleep(0.01)
    raise SystemExit("broker did not come up")


async def wait_start(start: float) -> None:
    await asyncio.sleep(max(0.0, start - time.time()))


async def main(argv) -> None:
    url, prefix, mode, *rest = argv
    broker = RedisBroker(BrokerConfig(url=url, prefix=prefix, lease_ms=1000), Host(), command_timeout=5.0)
    broker.start()
    await until_up(broker)
    if mode == "joins":
        room, n, cap, start = rest[0], int(rest[1]), int(rest[2]), float(rest[3])
        tag = broker.node
        await wait_start(start)
        answers = []
        for k in range(0, n, 10):          # in small bursts, so the two processes interleave
            answers += await asyncio.gather(*(broker.join("acme", f"{tag}-{i}", room, Limits(cap), False)
                                              for i in range(k, min(n, k + 10))))
        ok = [f"{tag}-{i}" for i, (good, _) in enumerate(answers) if good]
        refused = [why for good, why in answers if not good]
        print(json.dumps({"ok": ok, "refused": refused}), flush=True)
    elif mode == "admits":
        user, n, limit, start = rest[0], int(rest[1]), int(rest[2]), float(rest[3])
        tag = broker.node
        await wait_start(start)
        answers = []
        for k in range(0, n, 10):
            answers += await asyncio.gather(*(broker.admit("acme", user, f"{tag}-{i}", limit, True, 0)
                                              for i in range(k, min(n, k + 10))))
        ok = [[f"{tag}-{i}", r.seq, r.kicks] for i, r in enumerate(answers) if r.status == "ok"]
        print(json.dumps({"ok": ok, "refused": sum(r.status != "ok" for r in answers), "node": tag}), flush=True)
    if mode in ("joins", "admits"):        # stay registered until the test has read everyone
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    elif mode == "member":
        room, users = rest[0], rest[1:]
        for i, user in enumerate(users):
            await broker.admit("acme", user, f"s{i}", 10, False, 0)
            await broker.join("acme", user, room, Limits(), True)
        print(json.dumps({"node": broker.node}), flush=True)
        await asyncio.Event().wait()
    await broker.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1:]))
