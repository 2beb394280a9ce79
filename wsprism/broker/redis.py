"""One node's broker: its two links to Redis, its lease, the reaper, and the calls the
gateway makes (admissions, room publishes, subscriptions, control messages).

The gateway hands in a *host* (the object the broker calls back; it never imports the
core): `broker_tenants()`, `presence_events(tenant_id)`, `on_room_frames(target, frames,
count, lossy)`, `on_presence(target, joined, user)`, `on_kick(tenant, user, sid, seq,
reason)`, `on_user_frame(tenant, user, frame)`, `on_disconnect_user(tenant, user, code,
reason)` and `async resync(broker, fresh)`.

Links. A command link (admission scripts, publishes; pipelined, one write per loop turn)
and a subscriber link (one channel per room with local members, refcounted, batched
SUBSCRIBE/UNSUBSCRIBE, a short linger after the last member, never PSUBSCRIBE; plus this
node's own channel). Nothing on the per-message path awaits Redis: publishes are written
and their replies dropped. Admissions await one script with a short timeout.

States. DOWN (no link: the gateway admits against its own counts, local delivery goes
on, cross-node frames are dropped and counted), SYNCING (links up, the host re-registers
what changed while down) and UP. One log line per change of state, never per attempt or
per message. Reconnects belong to us: backoff from 50 ms doubling to 2 s, with jitter;
on every connect the scripts are loaded again (a Redis restarted empty has none), the
lease is renewed, every retained channel subscribed again from the local table, and the
host reconciles.

Faults watched for: owed replies that stop coming (a Redis that accepts but never
answers) -> the link is aborted after `command_timeout`; a subscriber that receives
nothing for `probe_interval` gets a probe published to this node's own channel through
the command link, and if it does not come back within another interval the subscriber
is restarted (connected but silently unsubscribed, centrifugo#1189); a subscriber that
Redis closes while the command link stays up is an eviction for falling behind
(client-output-buffer-limit pubsub), counted and logged.

Leases use Redis' clock (TIME inside the scripts), never the hosts'. Every node renews
its own every lease/3 and, every ~lease/4, looks for nodes whose lease ran out and
removes their sessions and memberships in short chunks (publishing `user_left` for users
gone everywhere): a dead node stops counting within lease + lease/4, under 2 x lease.
"""
import asyncio
import logging
import random
import secrets
from functools import partial
from time import perf_counter

from .keys import Keys
from .metrics import LANES, BrokerStats
from .resp import BrokerError, CommandConnection, open_connection, pack_command, parse_url
from .scripts import SCRIPTS
from .wire import (
    DISCONNECT, FRAMES_HEADER, HEADER, HOT, JOINED, KICK, LEFT, NODE_ID_LEN, NODE_IN, NODE_OUT, NUMBERED, PROBE,
    RELIABLE, TO_USER, control_body, control_message, frames_count,
)

log = logging.getLogger("wsprism.broker")

DOWN, SYNCING, UP = 0, 1, 2
STATE_NAMES = ("down", "syncing", "up")

COMMAND_TIMEOUT = 1.0        # seconds an owed reply may take before the link is dropped
PROBE_INTERVAL = 2.0         # subscriber silent this long -> probe; no echo after another -> restart
WATCH_INTERVAL = 0.1
LINGER = 1.0                 # a room channel stays subscribed this long after its last local member
SUBSCRIBE_BATCH = 512        # channels per SUBSCRIBE/UNSUBSCRIBE (centrifuge uses the same)
REAP_CHUNK = 200             # entries per reap step (each step ~1 ms inside Redis)
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
LOSSY_MARK = 4 << 20         # command link backlog above which Hot Lane frames are dropped
RELIABLE_CAP = 64 << 20      # ... and above which reliable frames are dropped too

_HOT_DROP_DOWN = ("hot", "down")
_EXT_DROP_DOWN = ("ext", "down")
_HOT_DROP_BACKLOG = ("hot", "backlog")
_EXT_DROP_BACKLOG = ("ext", "backlog")


def backoff(attempt: int) -> float:
    """Exponential with equal jitter: half the step fixed, half random."""
    step = min(BACKOFF_MAX, BACKOFF_MIN * (2 ** min(attempt, 16)))
    return step / 2 + random.uniform(0, step / 2)


class SubscriberConnection(CommandConnection):
    """The subscriber link: pub/sub pushes go to `on_message`; other replies (AUTH,
    PING) are matched in order as on the command link."""

    def __init__(self, name: str, on_message, on_confirm) -> None:
        super().__init__(name)
        self.on_message = on_message
        self.on_confirm = on_confirm   # on_confirm(channel, subscribed)
        self.confirms_owed = 0     # (un)subscribe confirmations not yet received
        self.received = 0          # anything at all received (the probe looks at this)

    def on_reply(self, reply) -> None:
        if type(reply) is list and reply:
            kind = reply[0]
            if kind == b"message":
                self.received += 1
                self.on_message(reply[1], reply[2])
                return
            if kind == b"subscribe" or kind == b"unsubscribe":
                self.received += 1
                self.confirms_owed -= 1
                self.last_progress = self._loop.time()
                self.on_confirm(reply[1], kind == b"subscribe")
                return
        super().on_reply(reply)

    def change(self, verb: bytes, channels) -> None:
        channels = list(channels)
        for i in range(0, len(channels), SUBSCRIBE_BATCH):
            chunk = channels[i:i + SUBSCRIBE_BATCH]
            if not self.confirms_owed and not self.waiters:
                self.last_progress = self._loop.time()
            self.confirms_owed += len(chunk)
            self.write(pack_command((verb, *chunk)))

    def stalled(self, now: float, timeout: float) -> bool:
        return (self.confirms_owed > 0 or bool(self.waiters)) and now - self.last_progress > timeout


NUMBERED_LANE = 2            # a run of history messages: one hist_publish script, not a PUBLISH


class NumberedRun:
    """History messages for one room in one loop turn (the numbered lane of `_packs`):
    `parts` = [head, tail, head, tail, ...] in the order published; `where` = (tenant
    key prefix, room, size, ttl_ms, meta_ttl_ms); `waiters`: futures for the script's
    answer (first offset, epoch), made only when someone asks (the server API)."""

    __slots__ = ("parts", "where", "waiters")

    def __init__(self, where, head: bytes, tail: bytes) -> None:
        self.parts = [head, tail]
        self.where = where
        self.waiters = None

    def __len__(self) -> int:
        return len(self.parts) // 2


class AdmitResult:
    """`status` 'ok' | 'deny' | 'full'; with ok, the session's `seq` and the sessions
    it displaced, as (node, sid, seq, reason 'R' replaced | 'K' kicked as oldest)."""

    __slots__ = ("status", "seq", "kicks")

    def __init__(self, status: str, seq: int = 0, kicks=()) -> None:
        self.status = status
        self.seq = seq
        self.kicks = kicks


def _s(value) -> str:
    return value.decode() if type(value) is bytes else value


class RedisBroker:
    def __init__(self, cfg, host, *, node: str | None = None, command_timeout: float = COMMAND_TIMEOUT,
                 probe_interval: float = PROBE_INTERVAL) -> None:
        self.url = parse_url(cfg.url)
        self.lease_ms = cfg.lease_ms
        self.node = node or secrets.token_hex(NODE_ID_LEN // 2)
        if len(self.node) != NODE_ID_LEN:
            raise ValueError(f"node id must be {NODE_ID_LEN} characters")
        self.origin = self.node.encode()
        self.keys = Keys(cfg.prefix, self.node)
        self.host = host
        self.command_timeout = command_timeout
        self.probe_interval = probe_interval
        self.state = DOWN
        self.cmd: CommandConnection | None = None
        self.sub: SubscriberConnection | None = None
        self.stats = BrokerStats()
        self.fresh_registrations = 0       # times Redis did not know this node (restart, reaped)
        # subscriptions: channel -> local retainers; channel -> host target
        self.subs: dict[bytes, int] = {}
        self.targets: dict[bytes, object] = {}
        self.lingering: dict[bytes, float] = {}
        self.confirmed: set = set()        # channels Redis confirmed on the current subscriber link
        self._confirm_waiters: dict[bytes, list] = {}
        # this node's session count per room, for the others' `delivered` (flushed per turn)
        self._sizes: dict[tuple[str, str], int] = {}
        # the other nodes with members in a room (by channel), as of a version; a room
        # whose set is known and empty gets no publishes. Unknown (absent): publish.
        self.remote: dict[bytes, set] = {}
        self.remote_v: dict[bytes, int] = {}
        self._notices: dict[bytes, list] = {}   # 'N'/'X' that came before the channel's snapshot
        self._to_sub: set = set()
        self._to_unsub: set = set()
        self._subs_scheduled = False
        # frames for other nodes this turn: channel -> [lane, frame | [frames], lane, ...]
        # (runs of one lane, 0 reliable or 1 hot, in the order sent)
        self._packs: dict[bytes, list] = {}
        self._packs_scheduled = False
        self._loop = None
        self._task: asyncio.Task | None = None
        self._maint: asyncio.Task | None = None
        self._closing = False
        self._started_once = False
        self._down_at: float | None = None
        self._probe_seen = 0
        self._quiet_since = 0.0
        self._probe_at: float | None = None
        self._probe_t0 = 0.0
        self._busy: set = set()            # running maintenance steps (renew, reap)
        self._resync_lock = asyncio.Lock()
        self._reloaded_on = None            # the link scripts were last loaded on after a NOSCRIPT
        self._reloaded_at = 0.0

    # -- life ---------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.state == UP

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="wsprism-broker")

    async def close(self) -> None:
        """Hand this node's leftovers to the reaper at once (lease set to 0) and close."""
        self._closing = True
        if self.state != DOWN:
            self._flush_packs()
            try:
                await asyncio.wait_for(self.cmd.call("ZADD", self.keys.nodes, 0, self.node), 0.5)
            except (BrokerError, asyncio.TimeoutError, OSError):
                pass
        for task in (self._maint, self._task):
            if task is not None:
                task.cancel()
        for conn in (self.cmd, self.sub):
            if conn is not None:
                conn.abort("closing")
        self.state = DOWN

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            reason = "closed"
            try:
                await self._connect()
                attempt = 0
                reason = await self._until_lost()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, BrokerError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception:                       # a bug: log it, keep the node running
                log.exception("broker link failed")
                reason = "internal error"
            self._went_down(reason)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _connect(self) -> None:
        timeout = self.command_timeout
        cmd = CommandConnection(f"wsprism:{self.node}:cmd")
        self.cmd = cmd
        await open_connection(cmd, self.url, timeout)
        cmd.transport.set_write_buffer_limits(high=LOSSY_MARK)
        await self._wait(*(cmd.call("SCRIPT", "LOAD", s.source) for s in SCRIPTS.values()))
        fresh = await self._renew()
        sub = SubscriberConnection(f"wsprism:{self.node}:sub", self._on_message, self._on_confirm)
        self.sub = sub
        self.confirmed.clear()
        await open_connection(sub, self.url, timeout)
        for ch in self.lingering:
            self.targets.pop(ch, None)
        self.lingering.clear()
        self._to_sub.clear()
        self._to_unsub.clear()
        sub.change(b"SUBSCRIBE", [self.keys.node_channel, *self.subs])
        await self._wait(sub.call("PING"), timeout=timeout + len(self.subs) / 50_000)
        self._probe_seen = sub.received
        self._quiet_since = self._loop.time()
        self._probe_at = None
        self.state = SYNCING
        self._maint = self._loop.create_task(self._maintain(), name="wsprism-broker-maint")
        async with self._resync_lock:
            await self._resync(fresh)
            self.state = UP
        if self._started_once:
            down_for = self._loop.time() - self._down_at if self._down_at is not None else 0.0
            log.info("broker up again at %r after %.1fs (node %s)%s", self.url, down_for, self.node,
                     ": Redis had lost this node's state, re-registered" if fresh else "")
        else:
            log.info("broker up at %r (node %s)", self.url, self.node)
        self._started_once = True
        self._down_at = None

    async def _resync(self, fresh: bool) -> None:
        if fresh:
            self.fresh_registrations += 1
        try:
            await self.host.resync(self, fresh)
        except (BrokerError, asyncio.TimeoutError):
            self.stats.reconciliations["failed"] += 1
            raise
        self.stats.reconciliations["ok"] += 1

    async def _until_lost(self) -> str:
        cmd, sub = self.cmd, self.sub
        done, _ = await asyncio.wait((cmd.lost, sub.lost), return_when=asyncio.FIRST_COMPLETED)
        first, link = (sub, "subscriber") if sub.lost in done and cmd.lost not in done else (cmd, "command")
        reason = first.lost.result()
        if first.local_abort:               # timeout or probe: counted where decided
            return f"{link}: {reason}"
        if first is sub:
            # Redis closes a subscriber that falls behind (client-output-buffer-limit
            # pubsub) and nothing else: if the command link still answers, that was it
            try:
                await asyncio.wait_for(cmd.call("PING"), 0.5)
            except (BrokerError, asyncio.TimeoutError):
                pass
            else:
                self.stats.link_lost[("subscriber", "evicted")] += 1
                log.warning("Redis closed this node's subscriber link while the command link stayed "
                            "up: the node fell behind its room traffic (client-output-buffer-limit "
                            "pubsub); cross-node messages meanwhile are lost")
                return "subscriber evicted by Redis"
        self.stats.link_lost[(link, "closed")] += 1
        return f"{link}: {reason}"

    def _went_down(self, reason: str) -> None:
        was = self.state
        self.state = DOWN
        if self._maint is not None:
            self._maint.cancel()
            self._maint = None
        for conn in (self.cmd, self.sub):
            if conn is not None:
                conn.abort(reason)
        self.cmd = self.sub = None
        self.confirmed.clear()
        self._sizes.clear()                 # the re-registration writes them all again
        self.remote.clear()                 # who else is in a room: unknown until asked again
        self.remote_v.clear()
        self._notices.clear()
        waiters, self._confirm_waiters = self._confirm_waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(False)
        packs, self._packs = self._packs, {}
        for channel, runs in packs.items():
            for i in range(0, len(runs), 2):
                cur = runs[i + 1]
                if runs[i] == NUMBERED_LANE:
                    self._unnumbered(channel, cur, "broker down")
                    continue
                self.stats.dropped[(LANES[runs[i]], "down")] += 1 if type(cur) is bytes else len(cur)
        if self._closing:
            return
        if not self._started_once and self._down_at is None:
            log.warning("broker %r unreachable at start (%s): running local-only until it answers",
                        self.url, reason)
            self._down_at = self._loop.time()
        elif was != DOWN:
            log.warning("broker down (%s): local delivery only, admissions against this node's "
                        "own counts; reconnecting", reason)
            self._down_at = self._loop.time()

    async def _wait(self, *futs, timeout: float | None = None):
        return await asyncio.wait_for(asyncio.gather(*futs), timeout or self.command_timeout)

    # -- maintenance: watchdog, probe, lease, reaper, linger --------------------------------
    async def _maintain(self) -> None:
        loop = self._loop
        lease = self.lease_ms / 1000.0
        next_renew = loop.time() + lease / 3
        next_reap = loop.time() + random.uniform(0, lease / 4)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = loop.time()
            self._watch(now)
            if self.lingering:
                self._sweep_lingering(now)
            if now >= next_renew:
                next_renew = now + lease / 3
                self._step("renew", self._renew_step())
            if now >= next_reap and self.state == UP:
                next_reap = now + lease / 4 * random.uniform(0.75, 1.0)
                self._step("reap", self._reap())

    def _step(self, name: str, coro) -> None:
        if name in self._busy:
            coro.close()
            return
        self._busy.add(name)
        task = self._loop.create_task(coro)
        task.add_done_callback(lambda t: self._step_done(name, t))

    def _step_done(self, name: str, task) -> None:
        self._busy.discard(name)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, (BrokerError, asyncio.TimeoutError, OSError)):
            log.error("broker %s step failed", name, exc_info=exc)

    def _watch(self, now: float) -> None:
        cmd, sub, timeout = self.cmd, self.sub, self.command_timeout
        if cmd is not None and cmd.stalled(now, timeout):
            self.stats.link_lost[("command", "timeout")] += 1
            cmd.abort(f"no answer from Redis for {timeout:g}s")
            return
        if sub is None:
            return
        if sub.stalled(now, timeout):
            self.stats.link_lost[("subscriber", "timeout")] += 1
            sub.abort(f"no answer from Redis for {timeout:g}s")
            return
        if sub.received != self._probe_seen:
            self._probe_seen = sub.received
            self._quiet_since = now
            self._probe_at = None
        elif now - self._quiet_since >= self.probe_interval:
            if self._probe_at is None:
                self._probe_at = now
                self._probe_t0 = perf_counter()
                cmd.send("PUBLISH", self.keys.node_channel, control_message(PROBE, self.origin))
            elif now - self._probe_at >= self.probe_interval:
                self.stats.link_lost[("subscriber", "probe")] += 1
                log.warning("subscriber link connected but our probe did not come back in %.1fs: "
                            "restarting it", self.probe_interval)
                sub.abort("probe not echoed")

    async def _renew(self) -> bool:
        """Renew the lease (and the list of tenants the reaper must look at, which a
        reload may have changed); True when Redis did not know this node."""
        keys = self.keys
        tenants = self.host.broker_tenants()
        fut = self.cmd.call("EVALSHA", SCRIPTS["renew"].sha, 0, keys.nodes, self.node, self.lease_ms,
                            keys.node_tenants, *tenants)
        fresh, _now = await asyncio.wait_for(fut, self.command_timeout)
        return bool(fresh)

    async def _renew_step(self) -> None:
        if self.state == DOWN:
            return
        fresh = await self._renew()
        if fresh and self.state == UP:
            # our lease had run out while connected (the loop was stalled for a lease, or
            # the others reaped us): register everything again
            log.warning("this node's lease had run out in Redis: re-registering its state")
            async with self._resync_lock:
                self.state = SYNCING
                try:
                    await self._resync(True)
                except (BrokerError, asyncio.TimeoutError) as exc:
                    # not left SYNCING with the links up: the reconnect path registers again
                    log.warning("re-registering after the lost lease failed (%s): reconnecting", exc)
                    if self.cmd is not None:
                        self.cmd.abort("resync failed")
                    return
                self.state = UP

    async def _reap(self) -> None:
        keys = self.keys
        found = await self.script("dead_nodes", keys.nodes, f"{keys.prefix}:nt:")
        for i in range(0, len(found), 2):
            dead = _s(found[i])
            if dead == self.node:
                continue
            tenants = [_s(t) for t in found[i + 1]]
            alive_again = False
            for tid in tenants:
                events = 1 if self.host.presence_events(tid) else 0
                while True:
                    left = await self.script("reap", keys.tenant(tid), keys.nodes, dead, REAP_CHUNK, events)
                    if left <= 0:
                        alive_again = left < 0
                        break
                if alive_again:
                    break
            if not alive_again and await self.script("forget_node", keys.nodes, keys.tenants_of_node(dead), dead):
                self.stats.reaped += 1
                log.info("node %s stopped renewing its lease: its sessions and memberships were removed", dead)

    # -- scripts ------------------------------------------------------------------------
    async def script(self, name: str, *args, timeout: float | None = None):
        """Run one script and await its answer (admissions, queries); BrokerError when
        the link is down, Redis answers an error, or no answer comes within
        command_timeout (plus one watchdog tick)."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            raise BrokerError("broker down")
        if self._packs_scheduled:
            self._flush_packs()            # frames published earlier reach Redis first
        fut = cmd.call("EVALSHA", SCRIPTS[name].sha, 0, *args)
        try:
            if timeout is None:
                # no wait_for (a task per call): the watchdog drops a link whose owed
                # replies stop for command_timeout, which fails this future with it
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except BrokerError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # someone ran SCRIPT FLUSH: run it from source and load them all again
        self._reload_scripts(cmd)
        return await asyncio.wait_for(cmd.call("EVAL", SCRIPTS[name].source, 0, *args),
                                      timeout or self.command_timeout)

    def script_nowait(self, name: str, *args) -> bool:
        """Fire and forget (a session left, a membership ended): False when down (the
        reconciliation after the outage catches it up)."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            return False
        if self._packs_scheduled:
            self._flush_packs()
        fut = cmd.call("EVALSHA", SCRIPTS[name].sha, 0, *args)
        fut.add_done_callback(partial(self._evalsha_done, cmd, name, args, None))
        return True

    def _reload_scripts(self, cmd) -> None:
        """Load every script again (after a SCRIPT FLUSH), at most once per burst of
        NOSCRIPT replies."""
        now = self._loop.time()
        if cmd is self._reloaded_on and now - self._reloaded_at < 0.1:
            return
        self._reloaded_on, self._reloaded_at = cmd, now
        for s in SCRIPTS.values():
            cmd.send("SCRIPT", "LOAD", s.source)

    def _evalsha_done(self, cmd, name: str, args, outer, fut) -> None:
        """The reply to a script sent without awaiting it: NOSCRIPT (someone ran SCRIPT
        FLUSH) -> the scripts are loaded again and this one sent from its source, once;
        otherwise the answer goes to `outer` (script_call) or is dropped (counted if an
        error, as for any fire-and-forget command)."""
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and str(exc).startswith("NOSCRIPT") and cmd is self.cmd:
            self._reload_scripts(cmd)
            retry = cmd.call("EVAL", SCRIPTS[name].source, 0, *args)
            retry.add_done_callback(partial(self._evalsha_done, cmd, name, args, outer))
            return
        if outer is None:
            if exc is not None and not (cmd.lost is not None and cmd.lost.done()):
                cmd.errors += 1             # an error reply (not the link going)
            return
        if outer.done():
            return
        if fut.cancelled():
            outer.cancel()
        elif exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(fut.result())

    async def admit(self, tenant_id: str, user: str, sid: str, max_per_user: int, kick_oldest: bool,
                    max_total: int) -> AdmitResult:
        keys = self.keys
        t0 = perf_counter()
        r = await self.script("admit", keys.tenant(tenant_id), keys.nodes, keys.node_prefix(), self.node,
                              tenant_id, user, sid, max_per_user, 1 if kick_oldest else 0, max_total)
        self.stats.rtt["admit"].observe(perf_counter() - t0)
        status = _s(r[0])
        if status != "ok":
            return AdmitResult(status)
        kicks = [(_s(r[i]) if r[i] is not None else None, _s(r[i + 1]), int(r[i + 2]), _s(r[i + 3]))
                 for i in range(2, len(r), 4)]
        return AdmitResult("ok", int(r[1]), kicks)

    def unadmit(self, tenant_id: str, user: str, sid: str, seq: int) -> bool:
        return self.script_nowait("unadmit", self.keys.tenant(tenant_id), self.node, user, sid, seq)

    async def join(self, tenant_id: str, user: str, room: str, limits, events: bool):
        """-> (True, first_anywhere) or (False, the limit that refused)."""
        t0 = perf_counter()
        r = await self.script("join", self.keys.tenant(tenant_id), self.node, user, room,
                              limits.max_users_per_room, limits.max_rooms_total, limits.max_rooms_per_user,
                              1 if events else 0, self.keys.nodes)
        self.stats.rtt["join"].observe(perf_counter() - t0)
        if _s(r[0]) == "ok":
            if len(r) > 2:                  # this node is new to the room: who else is there
                self.snapshot(self.keys.room_channel(tenant_id, room), int(r[2]), r[3:])
            return True, bool(r[1])
        return False, _s(r[0])

    async def refresh_room_nodes(self, tenant_id: str, room: str) -> None:
        """Ask Redis which other nodes have members in `room` (after a reconnect)."""
        r = await self.script("room_nodes", self.keys.tenant(tenant_id), room, self.node)
        self.snapshot(self.keys.room_channel(tenant_id, room), int(r[0]), r[1:])

    def snapshot(self, channel: bytes, version: int, others) -> None:
        """The other nodes in a room as of `version`; notices that came before it and are
        newer are applied on top."""
        if channel not in self.subs and channel not in self.lingering:
            return                          # not subscribed: its notices would not reach us
        if self.remote_v.get(channel, -1) >= version:
            return
        self.remote[channel] = {o if type(o) is bytes else o.encode() for o in others}
        self.remote_v[channel] = version
        for kind, node, v in self._notices.pop(channel, ()):
            self._notice(channel, kind, node, v)

    def _notice(self, channel: bytes, kind: int, node: bytes, version: int) -> None:
        known = self.remote.get(channel)
        if known is None:
            if channel not in self.subs and channel not in self.lingering:
                return
            pending = self._notices.setdefault(channel, [])
            if len(pending) < 1024:
                pending.append((kind, node, version))
            return
        if version <= self.remote_v[channel]:
            return
        self.remote_v[channel] = version
        if kind == NODE_IN:
            known.add(node)
        else:
            known.discard(node)

    def leave(self, tenant_id: str, user: str, room: str, events: bool) -> bool:
        """This node's last session of `user` left `room` (answer dropped); False when
        down (the re-registration after the outage catches it up)."""
        return self.script_nowait("leave", self.keys.tenant(tenant_id), self.node, user, room, 1 if events else 0)

    def leave_answered(self, tenant_id: str, user: str, room: str, events: bool) -> asyncio.Future | None:
        """`leave`, with its answer in a future: 0 (Redis did not have the membership),
        1 (left) or 2 (left, and in the room on no node now); None when down."""
        return self.script_call("leave", self.keys.tenant(tenant_id), self.node, user, room, 1 if events else 0)

    def script_call(self, name: str, *args) -> asyncio.Future | None:
        """Send one script now, await nothing: its answer in a future (None when down)."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            return None
        if self._packs_scheduled:
            self._flush_packs()
        outer = self._loop.create_future()
        fut = cmd.call("EVALSHA", SCRIPTS[name].sha, 0, *args)
        fut.add_done_callback(partial(self._evalsha_done, cmd, name, args, outer))
        return outer

    def room_size(self, tenant_id: str, room: str, sessions: int) -> None:
        """This node now holds `sessions` sessions in `room` (0: none). Written to Redis
        once per loop turn per room (absolute, so nothing drifts), for the server API's
        `delivered` on other nodes; dropped while down (re-registration writes them all)."""
        if self.state == DOWN:
            return
        self._sizes[(tenant_id, room)] = sessions
        if not self._packs_scheduled:
            self._packs_scheduled = True
            self._loop.call_soon(self._flush_packs)

    async def remote_sessions(self, tenant_id: str, room: str) -> int:
        """Sessions in `room` on the other nodes, as they last wrote it."""
        t0 = perf_counter()
        flat = await self.script_raw("HGETALL", self.keys.room_sizes(tenant_id, room))
        self.stats.rtt["query"].observe(perf_counter() - t0)
        node = self.origin
        return sum(int(flat[i + 1]) for i in range(0, len(flat), 2) if flat[i] != node)

    async def presence(self, tenant_id: str, room: str, limit: int) -> tuple[int, list[str]]:
        t0 = perf_counter()
        count, users = await self.script("presence", self.keys.tenant(tenant_id), room, limit)
        self.stats.rtt["query"].observe(perf_counter() - t0)
        return count, [_s(u) for u in users]

    async def tenant_stats(self, tenant_id: str) -> tuple[int, int, int]:
        t0 = perf_counter()
        sessions, rooms, users = await self.script("stats", self.keys.tenant(tenant_id))
        self.stats.rtt["query"].observe(perf_counter() - t0)
        return sessions, rooms, users

    async def to_user(self, tenant_id: str, user: str, message: bytes) -> tuple[int, int]:
        """Publish a control message to every other node with a session of `user`;
        -> (sessions anywhere, sessions on this node)."""
        keys = self.keys
        t0 = perf_counter()
        total, here = await self.script("to_user", keys.tenant(tenant_id), keys.node_prefix(), self.node,
                                        user, message)
        self.stats.rtt["query"].observe(perf_counter() - t0)
        return total, here

    def to_user_nowait(self, tenant_id: str, user: str, message: bytes) -> bool:
        keys = self.keys
        return self.script_nowait("to_user", keys.tenant(tenant_id), keys.node_prefix(), self.node, user, message)

    async def node_sessions(self, tenant_id: str) -> dict:
        """This node's sessions as Redis has them: {(user, sid): seq}."""
        flat = await self.script_raw("HGETALL", f"{self.keys.tenant(tenant_id)}ns:{self.node}")
        out = {}
        for i in range(0, len(flat), 2):
            sid, _, user = flat[i].decode().partition(" ")
            out[(user, sid)] = int(flat[i + 1])
        return out

    async def node_memberships(self, tenant_id: str) -> set:
        """This node's memberships as Redis has them: {(room, user)}."""
        members = await self.script_raw("SMEMBERS", f"{self.keys.tenant(tenant_id)}nm:{self.node}")
        return {tuple(m.decode().split(" ", 1)) for m in members}

    async def script_raw(self, *args, timeout: float | None = None):
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            raise BrokerError("broker down")
        return await asyncio.wait_for(cmd.call(*args), timeout or self.command_timeout)

    # -- control messages to nodes ------------------------------------------------------
    def control(self, kind: int, body) -> bytes:
        return control_message(kind, self.origin, body)

    # -- room channels ------------------------------------------------------------------
    def room_channel(self, tenant_id: str, room: str) -> bytes:
        return self.keys.room_channel(tenant_id, room)

    def retain(self, channel: bytes, target) -> None:
        """A room got its first local member: receive its channel (batched, this turn)."""
        n = self.subs.get(channel, 0)
        self.subs[channel] = n + 1
        if n:
            return
        self.targets[channel] = target
        if self.lingering.pop(channel, None) is not None:
            return                          # still subscribed
        if channel in self._to_unsub:
            self._to_unsub.discard(channel)
            return
        self._to_sub.add(channel)
        self._schedule_subs()

    def release(self, channel: bytes) -> None:
        """The room's last local member left: unsubscribe after LINGER unless it returns."""
        n = self.subs[channel] - 1
        if n:
            self.subs[channel] = n
            return
        del self.subs[channel]
        if channel in self._to_sub:
            self._to_sub.discard(channel)
            self.targets.pop(channel, None)
            return
        self.lingering[channel] = (self._loop or asyncio.get_running_loop()).time() + LINGER

    def _on_confirm(self, channel: bytes, subscribed: bool) -> None:
        if not subscribed:
            self.confirmed.discard(channel)
            return
        self.confirmed.add(channel)
        futs = self._confirm_waiters.pop(channel, None)
        if futs is not None:
            for fut in futs:
                if not fut.done():
                    fut.set_result(True)

    def until_subscribed(self, channel: bytes) -> asyncio.Future | None:
        """None when Redis has confirmed this node's subscription to `channel` (or the
        broker is down); else a future that answers once it has (True) or the link went
        away (False). A join waits for it, so what is published once the membership is in
        Redis reaches this node."""
        if channel in self.confirmed or self.state == DOWN or self.sub is None:
            return None
        fut = self._loop.create_future()
        self._confirm_waiters.setdefault(channel, []).append(fut)
        return fut

    def _sweep_lingering(self, now: float) -> None:
        expired = [ch for ch, deadline in self.lingering.items() if deadline <= now]
        for ch in expired:
            del self.lingering[ch]
            self.targets.pop(ch, None)
            self.remote.pop(ch, None)
            self.remote_v.pop(ch, None)
            self._notices.pop(ch, None)
            self._to_unsub.add(ch)
        if expired:
            self._schedule_subs()

    def _schedule_subs(self) -> None:
        if not self._subs_scheduled:
            self._subs_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush_subs)

    def _flush_subs(self) -> None:
        self._subs_scheduled = False
        sub = self.sub
        if sub is not None and sub.is_open:
            if self._to_sub:
                sub.change(b"SUBSCRIBE", self._to_sub)
            if self._to_unsub:
                self.confirmed.difference_update(self._to_unsub)    # going: not ours until confirmed again
                sub.change(b"UNSUBSCRIBE", self._to_unsub)
        self._to_sub.clear()                 # while down: subscribed again on connect
        self._to_unsub.clear()

    # -- publishing ---------------------------------------------------------------------
    def publish(self, channel: bytes, frame: bytes, lossy: bool) -> bool:
        """Queue a built WebSocket frame for the other nodes with members in the room.
        Every frame for one room in one loop turn goes out in one PUBLISH (one per run of
        one lane, so frames of both lanes keep the order they were sent in). Lossy frames
        are dropped (False, counted) when the link is down or over its mark; reliable
        ones when down or past the hard cap."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            self.stats.dropped[_HOT_DROP_DOWN if lossy else _EXT_DROP_DOWN] += 1
            return False
        # Whether another node is in the room is decided when the turn's packs go out, not
        # here: a node arriving ('N') may be read in this same loop turn, after the frame
        # (the notice reached our socket before the frame that follows its member's
        # `joined`, but one poll can hand us both in either order). A room nobody else is
        # in skips the link's marks: nothing of it will be sent.
        remote = self.remote.get(channel)
        if (remote is None or remote) and (cmd.paused if lossy else cmd.backlog() > RELIABLE_CAP):
            self.stats.dropped[_HOT_DROP_BACKLOG if lossy else _EXT_DROP_BACKLOG] += 1
            return False
        lane = 1 if lossy else 0
        runs = self._packs.get(channel)
        if runs is None:
            self._packs[channel] = [lane, frame]
            if not self._packs_scheduled:
                self._packs_scheduled = True
                self._loop.call_soon(self._flush_packs)
        elif runs[-2] != lane:              # the other lane: a new run keeps the sender's order
            runs.append(lane)
            runs.append(frame)
        else:
            cur = runs[-1]
            if type(cur) is bytes:
                runs[-1] = [cur, frame]
            else:
                cur.append(frame)
        return True

    def publish_numbered(self, channel: bytes, where, head: bytes, tail: bytes):
        """Queue a history message (`head` + position + `tail`, encoded) for its room's
        history step: every such message of one room in one loop turn goes in one
        hist_publish script, which numbers, keeps and publishes them ('O'), and every
        node, this one included, delivers them from its feed. Runs keep their order with
        the room's other frames. -> (run, index in it), or None when down or the link's
        backlog is past RELIABLE_CAP, as for reliable frames (the caller delivers it here,
        unnumbered, and counts the room's history lost)."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            return None
        if cmd.backlog() > RELIABLE_CAP:
            return None                     # (its frame, sent on as a plain one, is counted there)
        runs = self._packs.get(channel)
        if runs is None:
            run = NumberedRun(where, head, tail)
            self._packs[channel] = [NUMBERED_LANE, run]
            if not self._packs_scheduled:
                self._packs_scheduled = True
                self._loop.call_soon(self._flush_packs)
            return run, 0
        if runs[-2] != NUMBERED_LANE:
            run = NumberedRun(where, head, tail)
            runs.append(NUMBERED_LANE)
            runs.append(run)
            return run, 0
        run = runs[-1]
        run.parts.append(head)
        run.parts.append(tail)
        return run, len(run) - 1

    def numbered_answer(self, run: NumberedRun) -> asyncio.Future:
        """A future for the answer to `run`'s script: (first offset, epoch)."""
        fut = self._loop.create_future()
        if run.waiters is None:
            run.waiters = [fut]
        else:
            run.waiters.append(fut)
        return fut

    def _send_numbered(self, cmd, channel: bytes, run: NumberedRun) -> None:
        """Send `run`'s history step, its answer kept: a step that Redis answered with an
        error (-OOM, NOSCRIPT, a script error: it published nothing) or whose answer never
        came (the link went, the watchdog dropped a hung Redis) is delivered to this node's
        members unnumbered, its room's history counted lost (the node ends the epoch), as
        for a run the link lost before it was sent. A step Redis ran just before the link
        went may so reach this node's members twice (from the feed, and unnumbered): never
        lost, at worst once more."""
        prefix, room, size, ttl_ms, meta_ttl_ms = run.where
        self.stats.published_history += len(run)
        fut = cmd.call("EVALSHA", SCRIPTS["hist_publish"].sha, 0, prefix, room, size, ttl_ms, meta_ttl_ms,
                       secrets.token_urlsafe(9), self.node, len(run), *run.parts)

        def answered(fut) -> None:
            if fut.cancelled() or fut.exception() is not None:
                why = "history step failed" if fut.cancelled() else str(fut.exception())
                self._unnumbered(channel, run, why)
                return
            waiters = run.waiters
            if waiters is not None:
                first, epoch = fut.result()
                for w in waiters:
                    if not w.done():
                        w.set_result((int(first), _s(epoch)))
        fut.add_done_callback(answered)

    def _unnumbered(self, channel: bytes, run: NumberedRun, why: str) -> None:
        """History messages that never reached Redis: this node's members get them
        unnumbered (the host counts them)."""
        if run.waiters is not None:
            for w in run.waiters:
                if not w.done():
                    w.set_exception(BrokerError(why))
        target = self.targets.get(channel)
        parts = run.parts
        self.host.on_unnumbered(target, [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)])

    @property
    def linked(self) -> bool:
        """The command link is there (UP or SYNCING): reads can be sent."""
        return self.state != DOWN and self.cmd is not None

    def history_read(self, prefix: str, room: str, start: str, limit: int, meta_ttl_ms: int) -> asyncio.Future | None:
        """A room's history position and its messages from stream id `start` on (at most
        `limit`), in one MULTI/EXEC, so both are of one moment: -> [created (1: the room
        had no record, a new epoch starts), 0|1, 1, [epoch, top], entries (XRANGE: [id,
        [b"t", ms, b"d", message]], ...; absent when `limit` is 0), [sec, usec] (Redis
        TIME)]. Plain commands, no script: the XRANGE reply goes to us as Redis encodes
        it (a Lua script would copy it into Lua tables and out again: measured 6-8x the
        Redis time for 100 messages). Sent after this turn's history steps, so it sees
        them; None when down."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None:
            return None
        if self._packs_scheduled:
            self._flush_packs()
        meta, stream = prefix + "hm:" + room, prefix + "hs:" + room
        cmd.send("MULTI")
        cmd.send("HSETNX", meta, "e", secrets.token_urlsafe(9))
        cmd.send("HSETNX", meta, "s", 0)
        cmd.send("PEXPIRE", meta, meta_ttl_ms)
        cmd.send("HMGET", meta, "e", "s")
        if limit:
            cmd.send("XRANGE", stream, start, "+", "COUNT", limit)
        cmd.send("TIME")
        return cmd.call("EXEC")

    def history_reset(self, prefix: str, room: str) -> bool:
        """End a room's history (its record and stream deleted: the next step starts a new
        epoch); False when down."""
        cmd = self.cmd
        if self.state == DOWN or cmd is None or not cmd.is_open:
            return False
        if self._packs_scheduled:
            self._flush_packs()
        cmd.send("DEL", prefix + "hm:" + room, prefix + "hs:" + room)
        return True

    def _flush_packs(self) -> None:
        self._packs_scheduled = False
        cmd = self.cmd
        if cmd is None:
            return                          # went down meanwhile: _went_down counted them
        if self._sizes:
            sizes, self._sizes = self._sizes, {}
            keys, node = self.keys, self.node
            for (tenant_id, room), n in sizes.items():
                if n:
                    cmd.send("HSET", keys.room_sizes(tenant_id, room), node, n)
                else:
                    cmd.send("HDEL", keys.room_sizes(tenant_id, room), node)
        stats = self.stats
        origin = self.origin
        packs, self._packs = self._packs, {}
        remote_of = self.remote.get
        for channel, runs in packs.items():
            remote = remote_of(channel)
            alone = remote is not None and not remote
            for i in range(0, len(runs), 2):
                lane, cur = runs[i], runs[i + 1]
                if lane == NUMBERED_LANE:
                    self._send_numbered(cmd, channel, cur)
                    continue
                if alone:                   # nobody else is in the room
                    stats.local_frames[lane] += 1 if type(cur) is bytes else len(cur)
                    continue
                if type(cur) is bytes:
                    n, body = 1, cur
                else:
                    n, body = len(cur), b"".join(cur)
                # RESP by hand for this one command, so the batch is copied once (into
                # the link's write), not three times
                head = bytes((HOT if lane else RELIABLE,)) + origin + n.to_bytes(4, "little")
                cmd.send_packed(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b"
                                % (len(channel), channel, len(head) + len(body), head), 1)
                cmd.write(body)
                cmd.write(b"\r\n")
                stats.published[lane] += 1
                stats.published_frames[lane] += n
        cmd.flush()

    # -- receiving ----------------------------------------------------------------------
    def _on_message(self, channel: bytes, data: bytes) -> None:
        try:
            kind = data[0]
            if kind == RELIABLE or kind == HOT:
                if data.startswith(self.origin, 1):
                    return                  # ours: delivered locally already
                target = self.targets.get(channel)
                if target is None:
                    return
                lane = 1 if kind == HOT else 0
                count = frames_count(data)
                stats = self.stats
                stats.received[lane] += 1
                stats.received_frames[lane] += count
                self.host.on_room_frames(target, data[FRAMES_HEADER:], count, kind == HOT)
            elif kind == NUMBERED:          # from the history step: every node delivers it, ours too
                target = self.targets.get(channel)
                if target is not None:
                    self.stats.received_history += 1
                    self.host.on_numbered(target, data)
            elif kind == NODE_IN or kind == NODE_OUT:
                if not data.startswith(self.origin, 1):
                    self._notice(channel, kind, data[1:HEADER], int(data[HEADER:]))
            elif kind == JOINED or kind == LEFT:
                if data.startswith(self.origin, 1):
                    return
                target = self.targets.get(channel)
                if target is not None:
                    self.host.on_presence(target, kind == JOINED, data[HEADER:].decode(errors="replace"))
            elif channel == self.keys.node_channel:
                self._on_control(kind, data)
        except Exception:                   # never into the protocol (it would drop the link)
            log.exception("broker message on %r could not be handled", channel[:80])

    def _on_control(self, kind: int, data: bytes) -> None:
        if kind == PROBE:
            if self._probe_at is not None:
                self.stats.rtt["probe"].observe(perf_counter() - self._probe_t0)
            return
        body = control_body(data)
        if kind == KICK:
            tenant, user, sid, seq, reason = body
            self.host.on_kick(tenant, user, sid, seq, reason)
        elif kind == TO_USER:
            tenant, user, frame = body
            self.host.on_user_frame(tenant, user, frame)
        elif kind == DISCONNECT:
            tenant, user, code, reason = body
            self.host.on_disconnect_user(tenant, user, code, reason)
