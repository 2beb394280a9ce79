"""Client processes for the soak tests (run by tests/soak/test_soak.py, one per core's worth
of load): `churn` opens and closes sessions as fast as its slots allow, `mixed` keeps a
population of sessions busy with realistic traffic. Both use the picows client on uvloop
and only the standard library besides, so they start fast and stay cheap.

Protocol with the test (line based): `mixed` prints `ready` once its sessions are up,
starts traffic on a `go` line on stdin, prints one JSON line of results at the end, and
keeps its stuck and silent sockets open until an `exit` line (or EOF) so the test can
check that the gateway reclaimed them on its own. `churn` prints its JSON line and exits.
Every wait is bounded.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import socket
import sys
import time

from picows import WSCloseCode, WSHandshakeError, WSListener, WSMsgType, ws_connect

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE
PONG = WSMsgType.PONG

STEP_TIMEOUT = 10.0          # any single wait (handshake, reply, close) in seconds


def describe(exc: BaseException) -> str:
    if isinstance(exc, WSHandshakeError):
        resp = getattr(exc, "response", None)
        if resp is not None:
            return f"HTTP {int(resp.status)}"
        return "handshake failed"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


def bump(d: dict, key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class Conn(WSListener):
    """One client session. Counts what it receives; `expect(type)` waits for a text
    message of that type (the ones we wait on are never chat traffic)."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.from_tag = b'"from":"%s"' % user.encode()
        self.transport = None
        self.loop = asyncio.get_running_loop()
        self.gone = self.loop.create_future()
        self.waiting: dict[str, asyncio.Future] = {}
        self.close_code: int | None = None
        self.authed: dict | None = None
        # sent
        self.n_chat = self.n_hot = self.n_sysping = self.n_wsping = self.n_join = self.n_leave = 0
        # received
        self.r_own_chat = self.r_other_chat = self.r_hot = self.r_pong = self.r_wspong = 0
        self.r_joined = self.r_left = self.r_presence_ev = 0
        self.errors: dict[str, int] = {}
        self.last: dict | None = None

    # -- picows callbacks --------------------------------------------------------------
    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport) -> None:
        if not self.gone.done():
            self.gone.set_result(self.close_code)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("disconnected"))

    def on_ws_frame(self, transport, frame) -> None:
        mt = frame.msg_type
        if mt == TEXT:
            data = frame.get_payload_as_bytes()
            if b'"type":"msg"' in data:
                if self.from_tag in data:
                    self.r_own_chat += 1
                else:
                    self.r_other_chat += 1
                return
            msg = json.loads(data)
            typ = msg.get("type")
            if typ == "joined":
                self.r_joined += 1
            elif typ == "left":
                self.r_left += 1
            elif typ == "pong":
                self.r_pong += 1
            elif typ in ("user_joined", "user_left"):
                self.r_presence_ev += 1
            elif typ == "error":
                bump(self.errors, msg["data"]["code"])
            elif typ == "authed":
                self.authed = msg["data"]
            fut = self.waiting.pop(typ, None)
            if fut is not None and not fut.done():
                self.last = msg
                fut.set_result(msg)
        elif mt == BINARY:
            self.r_hot += 1
        elif mt == PONG:
            self.r_wspong += 1
        elif mt == CLOSE:
            self.close_code = frame.get_close_code()
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    # -- helpers ----------------------------------------------------------------------
    async def expect(self, typ: str, timeout: float = STEP_TIMEOUT) -> dict:
        fut = self.loop.create_future()
        self.waiting[typ] = fut
        if self.gone.done():
            raise ConnectionError("disconnected")
        return await asyncio.wait_for(fut, timeout)

    def send_text(self, obj) -> None:
        self.transport.send(TEXT, json.dumps(obj, separators=(",", ":")).encode())

    def join(self, room: str) -> None:
        self.n_join += 1
        self.send_text({"v": 1, "svc": "room", "type": "join", "room": room})

    def leave(self, room: str) -> None:
        self.n_leave += 1
        self.send_text({"v": 1, "svc": "room", "type": "leave", "room": room})

    def chat(self, room: str, text: str) -> None:
        self.n_chat += 1
        self.send_text({"v": 1, "svc": "chat", "type": "send", "room": room, "data": {"msg": text}})

    def hot(self, payload: bytes) -> None:
        self.n_hot += 1
        self.transport.send(BINARY, b"\x01\x01\x00" + payload)

    def sys_ping(self) -> None:
        self.n_sysping += 1
        self.transport.send(TEXT, b'{"v":1,"svc":"sys","type":"ping"}')

    def ws_ping(self) -> None:
        self.n_wsping += 1
        self.transport.send_ping()

    async def close(self, timeout: float = STEP_TIMEOUT) -> int | None:
        if not self.gone.done():
            self.transport.send_close(WSCloseCode.OK)
            await asyncio.wait_for(asyncio.shield(self.gone), timeout)
        return self.close_code

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.disconnect(False)

    def pause(self) -> None:
        self.transport.underlying_transport.pause_reading()

    def resume(self) -> None:
        self.transport.underlying_transport.resume_reading()


async def open_conn(url: str, user: str, *, headers=None, rcvbuf: int | None = None) -> Conn:
    factory = None
    if rcvbuf is not None:
        def factory(_parsed):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setblocking(False)
            return s
    sep = "&" if "?" in url else "?"
    _, conn = await asyncio.wait_for(ws_connect(
        lambda: Conn(user), f"{url}{sep}ticket=dev:{user}", extra_headers=headers,
        websocket_handshake_timeout=STEP_TIMEOUT, socket_factory=factory,
        max_frame_size=1 << 20,
    ), STEP_TIMEOUT + 1)
    if conn.authed is None:
        await conn.expect("authed")
    if conn.authed is None or conn.authed.get("user") != user:
        raise RuntimeError(f"bad authed: {conn.authed}")
    return conn


# --- churn ---------------------------------------------------------------------------

async def churn(args) -> dict:
    """`cycles` connect/disconnect cycles over `concurrency` slots. Per ten cycles: six
    clean closes, two that join a room and chat first, one that joins then vanishes
    (TCP abort, no close frame), one that vanishes right after `authed`."""
    counter = itertools.count(args.first)
    end = args.first + args.cycles
    deadline = time.monotonic() + args.timeout
    out = {"ok": 0, "errors": {}, "first_error": "", "close_codes": {}}

    async def cycle(i: int, slot: int) -> None:
        user = f"c{args.worker}x{slot}"
        xff = {"X-Forwarded-For": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"}
        conn = await open_conn(args.url, user, headers=xff)
        kind = i % 10
        if kind in (6, 7, 8):
            room = f"churn{i % args.rooms}"
            conn.join(room)
            await conn.expect("joined")
            if kind != 8:
                conn.chat(room, f"hello {i}")
                deadline_chat = time.monotonic() + STEP_TIMEOUT
                while conn.r_own_chat < 1:
                    if time.monotonic() > deadline_chat or conn.gone.done():
                        raise RuntimeError("own chat message not echoed")
                    await asyncio.sleep(0.002)
        if kind >= 8:
            conn.abort()
            await asyncio.wait_for(asyncio.shield(conn.gone), STEP_TIMEOUT)
            return
        code = await conn.close()
        bump(out["close_codes"], str(code))
        if conn.errors:
            raise RuntimeError(f"sys.error {conn.errors}")

    async def slot_loop(slot: int) -> None:
        while True:
            i = next(counter)
            if i >= end or time.monotonic() > deadline:
                return
            try:
                await asyncio.wait_for(cycle(i, slot), 3 * STEP_TIMEOUT)
                out["ok"] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                why = describe(exc)
                bump(out["errors"], why)
                out["first_error"] = out["first_error"] or f"cycle {i}: {why}"
                await asyncio.sleep(0.05)

    t0 = time.monotonic()
    await asyncio.gather(*(slot_loop(k) for k in range(args.concurrency)))
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


# --- mixed ---------------------------------------------------------------------------

class Mixed:
    """A worker's share of the mixed-traffic soak.

    Roles, by index: 0 floods its worker's flood room with 1 KB chat messages; 1..stuck
    sit in that room and stop reading (they must be closed by the gateway: 4005, or
    4002 since they cannot answer pings either), then resume and reconnect; the next
    `vanish` sessions behave normally for a while and then vanish, half of them with a
    TCP abort and half by going silent (socket kept open, nothing read or sent); the rest
    join and leave rooms, chat, send hot frames, pings and WS pings, and reconnect
    cleanly from time to time. A session that closes cleanly first checks that every
    reliable reply came back: joined/left/pong counts and its own chat echoes."""

    def __init__(self, args) -> None:
        self.a = args
        self.rng = random.Random(args.worker * 7919 + 1)
        self.stop_at = 0.0
        self.stopping = False
        self.parked: list[Conn] = []          # silent or stuck sockets kept open to the end
        self.res = {
            "sessions_opened": 0, "clean_closes": 0, "aborts": 0, "silent": 0,
            "stuck_cycles": 0, "stuck_close_codes": {}, "stuck_survived": 0,
            "mismatch": {}, "errors": {}, "connect_errors": {}, "first_problem": "",
            "sent": {}, "received": {},
        }

    def problem(self, what: str, bucket: str = "mismatch") -> None:
        bump(self.res[bucket], what.split(":")[0])
        self.res["first_problem"] = self.res["first_problem"] or what

    def tally(self, c: Conn) -> None:
        s, r = self.res["sent"], self.res["received"]
        for k in ("n_chat", "n_hot", "n_sysping", "n_wsping", "n_join", "n_leave"):
            bump(s, k[2:], getattr(c, k))
        for k in ("r_own_chat", "r_other_chat", "r_hot", "r_pong", "r_wspong", "r_joined", "r_left",
                  "r_presence_ev"):
            bump(r, k[2:], getattr(c, k))

    async def connect(self, user: str, **kw) -> Conn | None:
        for attempt in range(5):
            if self.stopping:
                return None
            try:
                c = await open_conn(self.a.url, user, **kw)
                self.res["sessions_opened"] += 1
                return c
            except Exception as exc:  # noqa: BLE001
                self.problem(f"connect {user}: {describe(exc)}", "connect_errors")
                await asyncio.sleep(0.5 + attempt)
        return None

    async def sleep(self, s: float) -> bool:
        """Sleep up to s seconds; False when the run is over."""
        left = self.stop_at - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(s, left))
        return time.monotonic() < self.stop_at - 0.05     # timers may fire a little early

    async def verify_and_close(self, c: Conn) -> None:
        """Sync with a final sys:ping, check the reliable counts, close with 1000."""
        try:
            c.sys_ping()
            deadline = time.monotonic() + STEP_TIMEOUT
            while c.r_pong < c.n_sysping and time.monotonic() < deadline and not c.gone.done():
                await asyncio.sleep(0.02)
            checks = (("pong", c.r_pong, c.n_sysping), ("joined", c.r_joined, c.n_join),
                      ("left", c.r_left, c.n_leave), ("own_chat", c.r_own_chat, c.n_chat))
            for name, got, want in checks:
                if got != want:
                    self.problem(f"{name}: {c.user} got {got} of {want}")
            for code, n in c.errors.items():
                bump(self.res["errors"], code, n)
            code = await c.close()
            if code != 1000:
                self.problem(f"close: {c.user} close code {code}")
            self.res["clean_closes"] += 1
        except Exception as exc:  # noqa: BLE001
            self.problem(f"close: {c.user}: {describe(exc)}")
        self.tally(c)

    # -- roles -------------------------------------------------------------------------
    async def normal(self, idx: int, ready: asyncio.Event, vanisher: bool) -> None:
        rng = random.Random(self.a.worker * 100003 + idx)
        user = f"m{self.a.worker}x{idx}"
        first = True
        generation = 0
        while not self.stopping:
            if vanisher:
                # a new user each time: the vanished session of the previous one still
                # counts (its rooms against max_rooms_per_user) until the gateway reclaims it
                user = f"m{self.a.worker}x{idx}g{generation}"
                generation += 1
            c = await self.connect(user)
            if first:
                ready.set()
                first = False
            if c is None:
                return
            rooms: list[str] = []
            room = f"r{rng.randrange(self.a.rooms)}"
            c.join(room)
            rooms.append(room)
            await self.wait_go()
            life = rng.uniform(15, 60) if vanisher else rng.uniform(30, 240)
            end_life = time.monotonic() + life
            seq = 0
            while time.monotonic() < end_life and not c.gone.done():
                if not await self.sleep(rng.expovariate(1.0 / self.a.interval)):
                    break
                seq += 1
                r = rng.random()
                if r < 0.10 and len(rooms) < 3:
                    room = f"r{rng.randrange(self.a.rooms)}"
                    if room not in rooms:
                        c.join(room)
                        rooms.append(room)
                elif r < 0.20 and len(rooms) > 1:
                    room = rooms.pop(rng.randrange(len(rooms)))
                    c.leave(room)
                elif r < 0.55:
                    c.chat(rng.choice(rooms), f"{user} says {seq}")
                elif r < 0.80:
                    c.hot(seq.to_bytes(4, "little") + b"hot-payload")
                elif r < 0.90:
                    c.sys_ping()
                else:
                    c.ws_ping()
            if c.gone.done():
                self.problem(f"gone: {user} closed by the gateway ({c.close_code})")
                self.tally(c)
                continue
            if vanisher and not self.stopping and time.monotonic() < self.stop_at:
                self.tally(c)
                for code, n in c.errors.items():
                    bump(self.res["errors"], code, n)
                if rng.random() < 0.5:
                    c.abort()
                    self.res["aborts"] += 1
                else:
                    c.pause()              # silent: no reads, no writes, socket left open
                    self.parked.append(c)
                    self.res["silent"] += 1
                continue
            await self.verify_and_close(c)
            if time.monotonic() >= self.stop_at:
                return

    async def flooder(self, ready: asyncio.Event) -> None:
        user = f"f{self.a.worker}"
        c = await self.connect(user)
        ready.set()
        if c is None:
            return
        room = f"flood{self.a.worker}"
        c.join(room)
        await self.wait_go()
        blob = "x" * 1000
        period = 1.0 / self.a.flood_rate
        batch = max(1, int(self.a.flood_rate / 50))
        n = 0
        t_next = time.monotonic()
        while time.monotonic() < self.stop_at and not c.gone.done():
            for _ in range(batch):
                c.chat(room, blob)
                n += 1
            t_next += batch * period
            delay = t_next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
        if c.gone.done():
            self.problem(f"gone: flooder {user} closed ({c.close_code})")
            self.tally(c)
            return
        await self.verify_and_close(c)

    async def stuck(self, idx: int, ready: asyncio.Event) -> None:
        user = f"s{self.a.worker}x{idx}"
        room = f"flood{self.a.worker}"
        first = True
        while not self.stopping:
            c = await self.connect(user, rcvbuf=4096)
            if first:
                ready.set()
                first = False
            if c is None:
                return
            c.join(room)
            try:
                await c.expect("joined")
            except Exception as exc:  # noqa: BLE001
                self.problem(f"stuck join: {describe(exc)}")
                c.abort()
                return
            c.pause()
            await self.wait_go()
            self.res["stuck_cycles"] += 1
            if not await self.sleep(self.a.stuck_for):
                self.parked.append(c)             # left to the gateway at the end
                return
            # Resume, and write now and then: after a 1006 the client's event loop may only
            # notice the dead socket on a write (the gateway's side is long gone by then).
            c.resume()
            deadline = time.monotonic() + STEP_TIMEOUT
            while not c.gone.done() and time.monotonic() < deadline:
                await asyncio.wait([c.gone], timeout=0.5)
                if not c.gone.done():
                    c.transport.send_ping()
            if c.gone.done():
                code = c.gone.result()
                bump(self.res["stuck_close_codes"], str(code if code is not None else 1006))
            else:
                self.res["stuck_survived"] += 1
                self.problem(f"stuck: {user} still open after {self.a.stuck_for}s without reading")
                await c.close()

    # -- run ---------------------------------------------------------------------------
    async def wait_go(self) -> None:
        await self.go.wait()

    async def run(self) -> dict:
        self.go = asyncio.Event()
        a = self.a
        tasks, readies = [], []
        sem = asyncio.Semaphore(100)

        async def start(coro_fn, *xs):
            ev = asyncio.Event()
            readies.append(ev)

            async def wrapped():
                async with sem:
                    inner = asyncio.ensure_future(coro_fn(*xs, ev))
                    await ev.wait()
                await inner
            tasks.append(asyncio.ensure_future(wrapped()))

        await start(self.flooder)
        for i in range(1, 1 + a.stuck):
            await start(self.stuck, i)
        for i in range(1 + a.stuck, a.sessions):
            vanisher = i < 1 + a.stuck + a.vanish
            await start(lambda idx, ev, v=vanisher: self.normal(idx, ev, v), i)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 300)
        print("ready", flush=True)
        line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), 600)
        if line.strip() != "go":
            self.stopping = True
        t0 = time.monotonic()
        self.stop_at = t0 + a.duration
        self.go.set()
        await asyncio.sleep(0)
        done, pending = await asyncio.wait(tasks, timeout=a.duration + 120)
        self.stopping = True
        for t in pending:
            t.cancel()
            self.problem("task: did not finish in time")
        for t in done:
            if t.exception() is not None:
                self.problem(f"task: {describe(t.exception())}")
        self.res["seconds"] = round(time.monotonic() - t0, 1)
        self.res["parked_open"] = sum(1 for c in self.parked if not c.gone.done())
        return self.res


async def amain(args) -> None:
    if args.mode == "churn":
        print(json.dumps(await churn(args)), flush=True)
        return
    m = Mixed(args)
    res = await m.run()
    print(json.dumps(res), flush=True)
    # the parked sockets stay open (from our side) until the test says exit
    try:
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), 120)
    except asyncio.TimeoutError:
        pass
    for c in m.parked:
        c.abort()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["churn", "mixed"])
    ap.add_argument("--url", required=True, help="ws://host:port/v1/ws?tenant=...")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    # churn
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rooms", type=int, default=20)
    # mixed
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--interval", type=float, default=2.0, help="mean seconds between a session's actions")
    ap.add_argument("--stuck", type=int, default=5)
    ap.add_argument("--stuck-for", type=float, default=40)
    ap.add_argument("--vanish", type=int, default=50)
    ap.add_argument("--flood-rate", type=float, default=400)
    args = ap.parse_args()
    import uvloop

    uvloop.run(amain(args))


if __name__ == "__main__":
    main()
