"""One client process of the load generator.

The coordinator (:mod:`wsprism.loadgen.runner`) forks ``--procs`` of these. Each one
runs its own uvloop, opens its share of the connections with the picows client, and
talks to the coordinator over a pipe in three steps:

1. it connects (and joins the room for chat/hot), then sends ``("ready", info)``;
2. it receives ``("go", times)`` with the shared monotonic instants ``t_start``
   (traffic starts) and ``m0``/``m1`` (the measurement window), or ``("stop", None)``;
3. it drives traffic until ``m1``, waits for stragglers, closes its connections and
   sends ``("result", stats)``.

Every message that matters carries its send time (``time.monotonic_ns()``, one
clock for every process on the machine). Latency and drops follow the messages sent
in ``[m0, m1)``, wherever and whenever they arrive; throughput counts what arrives in
``[m0, m1)``. Warm-up and drain never leak into the figures.

The per-frame handlers below are written for speed: they look at the first bytes
of the payload instead of ``frame.msg_type`` (an enum lookup costs more than the rest),
and index the latency histogram inline.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from picows import WSCloseCode, WSHandshakeError, WSListener, WSMsgType, ws_connect

from .hist import FINE_N, FINE_SHIFT, LatencyHist

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE

PING = b'{"v":1,"svc":"sys","type":"ping"}'
JOIN = '{"v":1,"svc":"room","type":"join","room":"%s"}'
CHAT = '{"v":1,"svc":"chat","type":"send","room":"%s","data":{"msg":"#%d#%d#%s"}}'
# Hot Lane frame: svc_id, opcode, flags, then our payload: send time and sender id.
HOT = struct.Struct("<BBBQI")
HASH = 0x23  # b"#"

NEVER = 1 << 62
SETUP_CONCURRENCY = 200
GIVE_UP_AFTER = 8  # failed attempts without a single success: the target is unusable


@dataclass
class WorkerSpec:
    scenario: str
    urls: str  # URL template with {i}, or a fixed URL
    first_id: int  # global index of this worker's first connection
    count: int  # connections (connect: concurrent slots) of this worker
    total: int  # connections over all workers
    senders: list[int] = field(default_factory=list)  # global ids of senders here
    rate: float = 0.0  # 0 = closed loop
    inflight: int = 1
    size: int = 32
    room: str = "bench"
    opcode: int = 1
    connect_timeout: float = 5.0
    drain: float = 2.0
    index: int = 0
    svc_id: int = 1  # hot: the svc_id sent, and the first byte of the frames counted back
    rooms: int = 1  # chat/hot: members spread over this many rooms (room<k>, k = id % rooms)
    nodes: int = 1  # gateway nodes in `urls` ("|"-separated): senders on node 0, the others spread
    all_senders: frozenset = frozenset()  # global ids of every sender (which node a connection is on)
    spread: bool = False  # senders spread over the nodes like everyone else

    def node_of(self, uid: int) -> int:
        """Senders on node 0 (unless `spread`); the other members of each room spread over
        the nodes."""
        if self.nodes == 1 or (uid in self.all_senders and not self.spread):
            return 0
        return (uid // self.rooms) % self.nodes

    def room_of(self, uid: int) -> str:
        return self.room if self.rooms == 1 else f"{self.room}{uid % self.rooms}"


class ServerError(Exception):
    """The server answered with a `sys.error` (the message is its code and text)."""


def describe(exc: BaseException) -> str:
    """One short line for an exception raised while connecting or talking."""
    if isinstance(exc, ServerError):
        return str(exc)
    if isinstance(exc, WSHandshakeError):
        resp = getattr(exc, "response", None)
        if resp is not None:
            # picows leaves the refusal's body in raw_body (what came after the headers)
            raw = resp.body or getattr(exc, "raw_body", None) or b""
            body = raw.decode("utf-8", "replace").strip().splitlines()
            tail = f" ({body[0][:80]})" if body else ""
            return f"HTTP {int(resp.status)}{tail}"
        return f"handshake failed: {exc}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """State shared by all connections of one process."""

    def __init__(self, spec: WorkerSpec, pipe) -> None:
        self.spec = spec
        self.pipe = pipe
        self.loop = asyncio.get_running_loop()
        self.hist = LatencyHist()
        self.fine = self.hist.fine
        self.t_start = NEVER
        self.m0 = NEVER
        self.m1 = 0
        self.sending = False  # traffic phase: senders may send
        self.phase = "setup"
        self.conns: list[BenchConn] = []
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self.lost = 0
        self.sent_win = 0
        self.sent_total = 0
        self.skipped = 0  # open-loop connect attempts not started (slot cap reached)
        self.sessions = 0  # connect scenario: sessions started in the window and completed
        self.sessions_arr = 0  # connect scenario: sessions completed (authed) in the window

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if not self.first_error:
            self.first_error = what

    def record(self, lat: int) -> None:
        self.hist.add(lat)

    # -- coordinator pipe ----------------------------------------------------------

    async def recv(self, timeout: float):
        """Next message from the coordinator, or ("stop", None) on timeout or EOF."""
        ready = asyncio.Event()
        fd = self.pipe.fileno()
        self.loop.add_reader(fd, ready.set)
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except asyncio.TimeoutError:
            return ("stop", None)
        finally:
            self.loop.remove_reader(fd)
            os.set_blocking(fd, True)  # the event loop made it non-blocking; results are big
        try:
            return self.pipe.recv()
        except (EOFError, OSError):
            return ("stop", None)

    # -- connections -----------------------------------------------------------------

    def url(self, i: int) -> str:
        spec = self.spec
        urls = spec.urls if spec.nodes == 1 else spec.urls.split("|")[spec.node_of(i)]
        return urls.replace("{i}", str(i))

    async def open(self, cls, gid: int, uid: int) -> "BenchConn":
        """Connect and wait for `authed`; raises on any failure (bounded by the timeout)."""
        spec = self.spec

        async def attempt():
            transport, conn = await ws_connect(
                lambda: cls(self, gid),
                self.url(uid),
                websocket_handshake_timeout=spec.connect_timeout,
                enable_auto_ping=False,
            )
            if conn is None:    # picows drops the listener of a connection closed at once
                transport.disconnect(False)
                raise ConnectionError("connection closed right after the upgrade")
            try:
                await conn.expect(b'"authed"', spec.connect_timeout)
            except BaseException:
                conn.closing = True
                transport.disconnect(False)
                raise
            return conn

        return await asyncio.wait_for(attempt(), spec.connect_timeout + 1.0)

    async def open_all(self, cls) -> None:
        """Open this worker's connections, a bounded number at a time."""
        spec = self.spec
        ids = iter(range(spec.first_id, spec.first_id + spec.count))
        failures = 0

        async def lane():
            nonlocal failures
            for gid in ids:
                if failures >= GIVE_UP_AFTER and not self.conns:
                    return
                try:
                    conn = await self.open(cls, gid, gid)
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    failures += 1
                    self.error(describe(exc))
                    continue
                self.conns.append(conn)

        await asyncio.gather(*(lane() for _ in range(min(SETUP_CONCURRENCY, spec.count))))

    async def join_all(self) -> int:
        spec = self.spec

        async def one(conn):
            try:
                conn.transport.send(TEXT, JOIN % spec.room_of(conn.gid))
                await conn.expect(b'"joined"', self.spec.connect_timeout)
                return True
            except Exception as exc:  # noqa: BLE001
                self.error("join: " + describe(exc))
                return False

        joined = await asyncio.gather(*(one(c) for c in self.conns))
        self.conns = [c for c, ok in zip(self.conns, joined) if ok]
        return len(self.conns)

    async def close_all(self, timeout: float = 1.5) -> None:
        live = [c for c in self.conns if not c.gone]
        for c in live:
            c.closing = True
            c.transport.send_close(WSCloseCode.OK)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(not c.gone for c in live):
            await asyncio.sleep(0.02)
        for c in live:
            if not c.gone:
                c.transport.disconnect(False)

    # -- helpers for the traffic phase ----------------------------------------------

    async def sleep_until(self, t_ns: int) -> None:
        while True:
            left = t_ns - time.monotonic_ns()
            if left <= 0:
                return
            await asyncio.sleep(min(left / 1e9, 0.05))

    async def pace(self, total_rate: float, send_one) -> None:
        """Open loop: call send_one() total_rate times per second from t_start to m1."""
        if total_rate <= 0:
            return
        period = 1e9 / total_rate
        start = self.t_start
        n = 0
        while True:
            now = time.monotonic_ns()
            if now >= self.m1:
                return
            due = int((now - start) / period) + 1 - n
            for _ in range(due):
                send_one()
            n += due
            # At least a millisecond: the loop's timers are no finer, and a shorter sleep
            # would spin. Above 1000 msgs/s several go out per tick.
            wait = start + n * period - time.monotonic_ns()
            await asyncio.sleep(max(0.001, min(wait / 1e9, 0.05)))

    async def wait_quiet(self, counter, deadline_ns: int, still_pending=None) -> None:
        """After m1: wait until counter() stops moving (or pending work is done), bounded."""
        last = counter()
        quiet = 0
        while time.monotonic_ns() < deadline_ns:
            await asyncio.sleep(0.05)
            if still_pending is not None and not still_pending():
                return
            now = counter()
            quiet = quiet + 1 if now == last else 0
            last = now
            if still_pending is None and quiet >= 4:
                return


class BenchConn(WSListener):
    """A connection: control replies (authed, joined, errors, close) plus counters."""

    def __init__(self, w: Worker, gid: int) -> None:
        super().__init__()
        self.w = w
        self.gid = gid
        self.transport = None
        self.want: bytes | None = None
        self.waiter: asyncio.Future | None = None
        self.closing = False
        self.gone = False
        self.recv_win = 0  # received, sent in the window (latency, drops)
        self.recv_arr = 0  # received in the window (throughput)
        self.recv_total = 0
        self.inbox: deque[bytes] = deque(maxlen=8)  # control messages nobody waited for yet
        self.failed = ""  # a sys.error nobody waited for yet
        self.on_gone: asyncio.Future | None = None

    # picows calls these
    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        self.control(transport, frame)

    def on_ws_disconnected(self, transport) -> None:
        self.gone = True
        if self.on_gone is not None and not self.on_gone.done():
            self.on_gone.set_result(None)
        if not self.closing and self.w.phase != "closing":
            self.w.lost += 1
            self.w.error("connection lost")
        self._settle(ConnectionError("connection closed"))

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # control messages
    async def expect(self, marker: bytes, timeout: float) -> None:
        """Wait for a control message containing `marker` (it may already be here)."""
        for k, payload in enumerate(self.inbox):
            if marker in payload:
                del self.inbox[k]
                return
        if self.failed:
            what, self.failed = self.failed, ""
            raise ServerError(what)
        if self.gone:
            raise ConnectionError("connection closed")
        self.want = marker
        self.waiter = self.w.loop.create_future()
        try:
            await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.want = None
            self.waiter = None

    def _settle(self, exc: BaseException | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def control(self, transport, frame) -> None:
        mt = frame.msg_type
        if mt == CLOSE:
            code = frame.get_close_code()
            if not self.closing:
                reason = frame.get_close_reason()
                self.w.error(f"closed by server: {int(code)}" + (f" {reason}" if reason else ""))
                self.closing = True
                transport.send_close(code)
            transport.disconnect()
            self._settle(ConnectionError("closed by server"))
            return
        if mt != TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if self.want is not None and self.want in payload:
            self._settle(None)
            return
        if b'"error"' not in payload:
            self.inbox.append(payload)
        else:
            what = _error_code(payload)
            self.w.error(what)
            if self.waiter is None:
                self.failed = what
            self._settle(ServerError(what))


def _error_code(payload: bytes) -> str:
    try:
        data = json.loads(payload).get("data") or {}
        code = data.get("code", "?")
        msg = data.get("msg", "")
        return f"sys.error {code}" + (f" ({msg[:60]})" if msg else "")
    except (ValueError, AttributeError):
        return "sys.error"


# -- ping ---------------------------------------------------------------------------

class PingConn(BenchConn):
    def __init__(self, w: Worker, gid: int) -> None:
        super().__init__(w, gid)
        self.sent_at: deque[int] = deque()
        self.closed_loop = w.spec.rate <= 0

    def send_ping(self, now: int) -> None:
        self.sent_at.append(now)
        w = self.w
        w.sent_total += 1
        if w.m0 <= now < w.m1:
            w.sent_win += 1
        self.transport.send(TEXT, PING)

    def on_ws_frame(self, transport, frame) -> None:
        payload = frame.get_payload_as_bytes()
        if b'"pong"' not in payload or not self.sent_at:
            self.control(transport, frame)
            return
        now = time.monotonic_ns()
        t0 = self.sent_at.popleft()
        self.recv_total += 1
        w = self.w
        if w.m0 <= now < w.m1:
            self.recv_arr += 1
        if w.m0 <= t0 < w.m1:
            self.recv_win += 1
            u = (now - t0) >> FINE_SHIFT
            if u < FINE_N:
                w.fine[u] += 1
            else:
                w.record(now - t0)
        if self.closed_loop and w.sending and now < w.m1:
            self.send_ping(now)


async def run_ping(w: Worker) -> None:
    spec = w.spec
    await w.sleep_until(w.t_start)
    w.sending = True
    conns = [c for c in w.conns if not c.gone]
    if spec.rate <= 0:
        now = time.monotonic_ns()
        for c in conns:
            for _ in range(max(1, spec.inflight)):
                c.send_ping(now)
        await w.sleep_until(w.m1)
    elif conns:
        k = 0

        def one():
            nonlocal k
            c = conns[k]
            k = (k + 1) % len(conns)
            if not c.gone:
                c.send_ping(time.monotonic_ns())

        await w.pace(spec.rate * len(conns), one)
    w.sending = False
    await w.wait_quiet(lambda: 0, w.m1 + int(spec.drain * 1e9),
                       lambda: any(c.sent_at and not c.gone for c in conns))


# -- chat (Ext Lane) and hot (Hot Lane) ----------------------------------------------

class RoomConn(BenchConn):
    """A room member; the senders among them also publish, open loop."""

    def __init__(self, w: Worker, gid: int) -> None:
        super().__init__(w, gid)
        self.is_sender = gid in w.spec.senders
        self.room = w.spec.room_of(gid)
        self.pad = "x" * max(0, w.spec.size - 24)
        self.hot_pad = b"x" * max(0, w.spec.size - 12)

    def send_msg(self) -> None:
        w = self.w
        now = time.monotonic_ns()
        w.sent_total += 1
        if w.m0 <= now < w.m1:
            w.sent_win += 1
        if w.spec.scenario == "hot":
            self.transport.send(BINARY, HOT.pack(w.spec.svc_id, w.spec.opcode, 0, now, self.gid) + self.hot_pad)
        else:
            self.transport.send(TEXT, CHAT % (self.room, now, self.gid, self.pad))

    def delivered(self, now: int, ts: int) -> None:
        """Count one room message received at `now` that was sent at `ts` (ns)."""
        self.recv_total += 1
        w = self.w
        if w.m0 <= now < w.m1:
            self.recv_arr += 1
        if w.m0 <= ts < w.m1:
            self.recv_win += 1
            lat = now - ts
            u = lat >> FINE_SHIFT
            if 0 <= u < FINE_N:
                w.fine[u] += 1
            else:
                w.record(lat)


class ChatConn(RoomConn):
    def on_ws_frame(self, transport, frame) -> None:
        p = frame.get_payload_as_bytes()
        i = p.find(HASH)
        if i < 0:
            self.control(transport, frame)
            return
        now = time.monotonic_ns()
        j = p.find(HASH, i + 1)
        self.delivered(now, int(p[i + 1:j]))


class HotConn(RoomConn):
    def on_ws_frame(self, transport, frame) -> None:
        p = frame.get_payload_as_bytes()
        # Hot frames start with the svc_id sent; text starts with "{", close codes are >= 1000.
        if len(p) < 15 or p[0] != self.w.spec.svc_id:
            self.control(transport, frame)
            return
        self.delivered(time.monotonic_ns(), HOT.unpack_from(p)[3])


async def run_room(w: Worker) -> None:
    spec = w.spec
    senders = [c for c in w.conns if c.is_sender]
    for gid in spec.senders:
        if not any(c.gid == gid for c in senders):
            w.error("sender did not connect")
    await w.sleep_until(w.t_start)
    w.sending = True
    if senders:
        k = 0

        def one():
            nonlocal k
            c = senders[k]
            k = (k + 1) % len(senders)
            if not c.gone:
                c.send_msg()

        await w.pace(spec.rate * len(senders), one)
    else:
        await w.sleep_until(w.m1)
    w.sending = False
    conns = w.conns
    await w.wait_quiet(lambda: sum(c.recv_total for c in conns), w.m1 + int(spec.drain * 1e9))


# -- connect ------------------------------------------------------------------------

async def run_connect(w: Worker) -> None:
    """New sessions: connect, wait for `authed`, close; closed loop per slot or open loop."""
    spec = w.spec
    attempt_no = 0
    active = 0

    async def cycle(slot: int) -> None:
        nonlocal attempt_no, active
        attempt_no += 1
        uid = slot + attempt_no * spec.total  # a fresh user per session: no per-user limit
        t0 = time.monotonic_ns()
        in_win = w.m0 <= t0 < w.m1
        if in_win:
            w.sent_win += 1
        w.sent_total += 1
        active += 1
        try:
            conn = await w.open(BenchConn, slot, uid)
        except Exception as exc:  # noqa: BLE001
            w.error(describe(exc))
            await asyncio.sleep(0.01)  # no hot spin against a refusing server
            return
        finally:
            active -= 1
        now = time.monotonic_ns()
        if w.m0 <= now < w.m1:
            w.sessions_arr += 1
        if in_win:
            w.sessions += 1
            w.record(now - t0)
        conn.closing = True
        conn.transport.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(_closed(conn), spec.connect_timeout)
        except asyncio.TimeoutError:
            conn.transport.disconnect(False)

    await w.sleep_until(w.t_start)
    w.sending = True
    if spec.rate <= 0:
        async def slot_loop(slot: int) -> None:
            while time.monotonic_ns() < w.m1:
                await cycle(slot)

        await asyncio.gather(*(slot_loop(spec.first_id + k) for k in range(spec.count)))
    else:
        tasks: set[asyncio.Task] = set()
        k = 0

        def one():
            nonlocal k
            if active >= spec.count:
                w.skipped += 1
                return
            t = asyncio.ensure_future(cycle(spec.first_id + k % spec.count))
            k += 1
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        await w.pace(spec.rate, one)
        if tasks:
            await asyncio.wait(list(tasks), timeout=spec.connect_timeout + spec.drain + 2)
    w.sending = False


async def _closed(conn: BenchConn) -> None:
    if not conn.gone:
        conn.on_gone = conn.w.loop.create_future()
        await conn.on_gone


# -- worker entry ---------------------------------------------------------------------

CONN_CLASS = {"ping": PingConn, "chat": ChatConn, "hot": HotConn, "idle": BenchConn}


async def _main(spec: WorkerSpec, pipe, setup_timeout: float) -> None:
    w = Worker(spec, pipe)
    try:
        if spec.scenario == "connect":
            # One probe session so a dead URL or refused auth shows up before "go".
            try:
                probe = await w.open(BenchConn, spec.first_id, spec.first_id)
                probe.closing = True
                probe.transport.send_close(WSCloseCode.OK)
                probe.transport.disconnect()
                ok = spec.count
            except Exception as exc:  # noqa: BLE001
                w.error(describe(exc))
                ok = 0
            members = 0
        else:
            await asyncio.wait_for(w.open_all(CONN_CLASS[spec.scenario]), setup_timeout)
            ok = len(w.conns)
            members = await asyncio.wait_for(w.join_all(), setup_timeout) if spec.scenario in ("chat", "hot") else 0
    except asyncio.TimeoutError:
        w.error("setup timeout")
        ok = len(w.conns)
        members = 0
    pipe.send(("ready", {"ok": ok, "members": members, "errors": dict(w.errors), "first_error": w.first_error}))

    kind, times = await w.recv(setup_timeout + 30.0)
    if kind == "go":
        w.t_start, w.m0, w.m1 = times["t_start"], times["m0"], times["m1"]
        w.phase = "run"
        # Bounded: the coordinator gives up on us after m1 + drain + a margin anyway.
        budget = (w.m1 - time.monotonic_ns()) / 1e9 + spec.drain + spec.connect_timeout + 5.0
        try:
            if spec.scenario == "ping":
                await asyncio.wait_for(run_ping(w), budget)
            elif spec.scenario in ("chat", "hot"):
                await asyncio.wait_for(run_room(w), budget)
            elif spec.scenario == "connect":
                await asyncio.wait_for(run_connect(w), budget)
            else:
                await w.sleep_until(w.m1)
        except asyncio.TimeoutError:
            w.error("run did not finish in time")
    w.phase = "closing"
    await w.close_all()
    pipe.send(("result", {
        "ok": ok,
        "members": members,
        "sent_win": w.sent_win,
        "sent_total": w.sent_total,
        "recv_win": sum(c.recv_win for c in w.conns) if spec.scenario != "connect" else w.sessions,
        "recv_arr": sum(c.recv_arr for c in w.conns) if spec.scenario != "connect" else w.sessions_arr,
        "recv_total": sum(c.recv_total for c in w.conns),
        "recv_arr_nodes": [sum(c.recv_arr for c in w.conns if spec.node_of(c.gid) == k) for k in range(spec.nodes)],
        "skipped": w.skipped,
        "lost": w.lost,
        "errors": dict(w.errors),
        "first_error": w.first_error,
        "hist": w.hist.to_wire(),
    }))


def worker_main(spec: WorkerSpec, pipe, setup_timeout: float) -> None:
    """Process entry point (forked by the coordinator)."""
    logging.getLogger("picows").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    raise_fd_limit()
    try:
        import uvloop
        uvloop.run(_main(spec, pipe, setup_timeout))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - report, never hang the coordinator
        try:
            pipe.send(("crash", describe(exc)))
        except OSError:
            pass
        print(f"wsprism bench worker {spec.index}: {describe(exc)}", file=sys.stderr)
        os._exit(1)


def raise_fd_limit() -> None:
    """Thousands of sockets need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
