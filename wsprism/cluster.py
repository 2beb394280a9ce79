"""The gateway's side of the broker (SPEC 11): the host the `RedisBroker` calls back.

Composition, beside the gateway: it knows tenants and sessions; the broker knows Redis.

Sessions. With the broker up, a session's admission is one script in Redis (same-sid
replacement, the per-user limit with deny or kick_oldest, `max_sessions_total`), exact
across every node; the session waits PENDING meanwhile (as for webhook auth: frames it
sends before `authed` are dropped). The answer carries the session's admission `seq` and
the sessions it displaced; displaced sessions on this node are kicked here, those on
other nodes get a kick on their node's channel (published by the script). A kick can
reach this node before the answer to the admission it concerns (two links): it is held
briefly (`early_kicks`) and applied when the answer arrives.

While the broker is down (or re-registering), sessions are admitted against this node's
own counts (SPEC 11: the one window where limits are not exact), and every such change is
noted. When it comes back, `resync` makes Redis match this node: entries of sessions that
left meanwhile are removed, sessions admitted meanwhile (or all of them, when Redis came
back empty) are admitted again oldest first through the same script, and the ones the
tenant's policy now refuses are undone: deny -> TOO_MANY_SESSIONS and close 4004 (the
newest go, since the oldest are re-admitted first), kick_oldest -> the oldest kicked,
max_sessions_total -> RESOURCE_EXHAUSTED and close 1013.

Rooms, presence, cross-node fan-out and the server API go through here in the second step
of issue 11 (after the services restructuring); `on_room_frames`/`on_presence` already
deliver what other nodes publish.
"""
import asyncio
import logging
from itertools import count
from time import monotonic

from ._fast import Counter, broadcast
from .broker import BrokerError, RedisBroker
from .core import codes
from .core.envelope import encode_message
from .core.session import OPEN, PENDING

log = logging.getLogger("wsprism.cluster")

EARLY_KICK_TTL = 5.0          # seconds a kick for a not-yet-answered admission is kept
RESYNC_BATCH = 500            # admissions in flight at once while re-registering
KICK_REASONS = {"R": "replaced", "K": "max_sessions_exceeded"}


class Cluster:
    def __init__(self, tenants: dict, lifecycle, broker_cfg, node: str | None = None) -> None:
        self.tenants = tenants           # the gateway's live tenants, by id
        self.lifecycle = lifecycle       # lifecycle.py Lifecycle: opens admitted sessions
        self.broker = RedisBroker(broker_cfg, self, node=node)
        self.seqs: dict = {}             # admitted session -> its admission seq in Redis
        self.born: dict = {}             # admitted session -> local admission order
        self._order = count()
        self.early_kicks: dict = {}      # (tenant, user, sid) -> (seq, reason, monotonic)
        self.changes = 0                 # local-only changes since the last resync pass
        self._tasks: set = set()

    @property
    def node(self) -> str:
        return self.broker.node

    def start(self) -> None:
        self.broker.start()

    async def close(self) -> None:
        await self.broker.close()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- admission ----------------------------------------------------------------------
    def admit(self, session) -> bool:
        """Take over the admission when the broker is up (True: it answers later)."""
        if not self.broker.up:
            return False
        self._spawn(self._admit(session))
        return True

    async def _admit(self, session) -> None:
        tenant = session.tenant
        pol = tenant.policy.sessions
        try:
            r = await self.broker.admit(tenant.id, session.user, session.sid, pol.max_sessions_per_user,
                                        pol.on_exceed != "deny", tenant.limits.max_sessions_total)
        except (BrokerError, asyncio.TimeoutError):
            if session.state == PENDING:      # went down meanwhile: this node decides alone
                self.lifecycle.admit(session, broker=False)
            return
        except Exception:                     # a bug must not leave a session PENDING forever
            log.exception('tenant "%s": admission through the broker failed', tenant.id)
            if session.state == PENDING:
                session.refuse(codes.INTERNAL, "internal error", codes.CLOSE_INTERNAL)
            return
        if r.status == "ok":
            self._apply_kicks(tenant, session.user, r.kicks)
            if session.state != PENDING or not self.lifecycle.accepts(tenant):
                self.broker.unadmit(tenant.id, session.user, session.sid, r.seq)   # left meanwhile
                if session.state == PENDING:
                    session.close(codes.CLOSE_DRAINING, "server draining")
                return
            tenant.register(session)
            self.lifecycle.open(session)
            self.registered(session, r.seq)
            return
        if session.state != PENDING:
            return
        self._refuse(session, r.status)

    def _refuse(self, session, status: str) -> None:
        tenant = session.tenant
        if status == "deny":
            tenant.stats.handshake_rejections["too_many_sessions"] += 1
            session.refuse(codes.TOO_MANY_SESSIONS, "user is at max_sessions_per_user",
                           codes.CLOSE_TOO_MANY_SESSIONS)
        else:
            tenant.stats.handshake_rejections["tenant_full"] += 1
            session.refuse(codes.RESOURCE_EXHAUSTED, "tenant at max_sessions_total", codes.CLOSE_TRY_AGAIN)

    def registered(self, session, seq: int) -> None:
        self.seqs[session] = seq
        self.born[session] = next(self._order)
        key = (session.tenant.id, session.user, session.sid)
        early = self.early_kicks.pop(key, None)
        if early is not None and early[0] == seq:
            session.tenant.kick(session, KICK_REASONS.get(early[1], "replaced"))

    def admitted_locally(self, session) -> None:
        """The gateway admitted a session without Redis (down, or re-registering)."""
        self.born[session] = next(self._order)
        self.changes += 1

    def session_gone(self, session) -> None:
        self.born.pop(session, None)
        seq = self.seqs.pop(session, None)
        if seq is None:
            self.changes += 1
        elif not self.broker.unadmit(session.tenant.id, session.user, session.sid, seq):
            self.changes += 1

    def _apply_kicks(self, tenant, user: str, kicks) -> None:
        node = self.node
        for owner, sid, seq, reason in kicks:
            if owner == node:
                self._kick(tenant, user, sid, seq, reason)

    def _kick(self, tenant, user: str, sid: str, seq: int, reason: str) -> bool:
        victim = tenant.sessions.find(user, sid)
        if victim is None or self.seqs.get(victim) != seq:
            return False
        self.seqs.pop(victim, None)      # Redis has dropped it already
        tenant.kick(victim, KICK_REASONS.get(reason, "replaced"))
        return True

    # -- broker host interface ----------------------------------------------------------
    def broker_tenants(self) -> list[str]:
        return list(self.tenants)

    def presence_events(self, tenant_id: str) -> bool:
        tenant = self.tenants.get(tenant_id)
        return True if tenant is None else tenant.presence_events

    def on_kick(self, tenant_id: str, user: str, sid: str, seq: int, reason: str) -> None:
        tenant = self.tenants.get(tenant_id)
        if tenant is None or self._kick(tenant, user, sid, seq, reason):
            return
        # the answer to that session's admission may still be on its way
        now = monotonic()
        early = self.early_kicks
        if len(early) > 1000:
            for key in [k for k, v in early.items() if now - v[2] > EARLY_KICK_TTL]:
                del early[key]
        early[(tenant_id, user, sid)] = (seq, reason, now)

    def on_room_frames(self, target, frames: bytes, n: int, lossy: bool) -> None:
        tenant = self.tenants.get(target[0])
        room = tenant.rooms.get(target[1]) if tenant is not None else None
        if room is None:
            return
        drops = broadcast(room.members, frames, lossy)
        if drops:
            tenant.lane.bump(Counter.C_EGRESS_DROPS, drops * n)

    def on_presence(self, target, joined: bool, user: str) -> None:
        tenant = self.tenants.get(target[0])
        if tenant is None or not tenant.presence_events:
            return
        room = tenant.rooms.get(target[1])
        if room is not None:
            kind = "user_joined" if joined else "user_left"
            tenant.deliver(room, encode_message("room", kind, target[1], {"user": user}))

    def on_user_frame(self, tenant_id: str, user: str, frame: bytes) -> None:
        tenant = self.tenants.get(tenant_id)
        if tenant is not None:
            for session in tenant.sessions.sessions_of(user):
                session.enqueue(frame, False)

    def on_disconnect_user(self, tenant_id: str, user: str, code: int, reason: str) -> None:
        tenant = self.tenants.get(tenant_id)
        if tenant is not None:
            for session in list(tenant.sessions.sessions_of(user)):
                session.close(code, reason)

    # -- after an outage ----------------------------------------------------------------
    async def resync(self, broker, fresh: bool) -> None:
        """Make Redis hold exactly this node's sessions; repeat until a pass saw no
        local change (new admissions stay local until the broker is UP again)."""
        while True:
            mark = self.changes
            for tenant in list(self.tenants.values()):
                await self._resync_sessions(broker, tenant)
            if self.changes == mark:
                return

    async def _resync_sessions(self, broker, tenant) -> None:
        stats = broker.stats.reconciled
        remote = await broker.node_sessions(tenant.id)
        live = {}
        for session in tenant.sessions.all_sessions():
            if session.state == OPEN:
                live[(session.user, session.sid)] = session
        for key, seq in remote.items():
            session = live.get(key)
            if session is None or self.seqs.get(session) != seq:
                broker.unadmit(tenant.id, key[0], key[1], seq)
                stats[("session", "removed")] = stats.get(("session", "removed"), 0) + 1
        missing = [s for key, s in live.items()
                   if self.seqs.get(s) is None or remote.get(key) != self.seqs[s]]
        born = self.born
        missing.sort(key=lambda s: born.get(s, -1))
        pol = tenant.policy.sessions
        kick = pol.on_exceed != "deny"
        for i in range(0, len(missing), RESYNC_BATCH):
            batch = missing[i:i + RESYNC_BATCH]
            answers = await asyncio.gather(*(
                broker.admit(tenant.id, s.user, s.sid, pol.max_sessions_per_user, kick,
                             tenant.limits.max_sessions_total) for s in batch))
            for session, r in zip(batch, answers):
                if r.status == "ok":
                    self._apply_kicks(tenant, session.user, r.kicks)
                    if session.state == OPEN:
                        self.seqs[session] = r.seq
                    else:
                        broker.unadmit(tenant.id, session.user, session.sid, r.seq)
                    outcome = "added"
                else:
                    self.seqs.pop(session, None)
                    if session.state == OPEN:
                        self._refuse(session, r.status)
                    outcome = "refused"
                stats[("session", outcome)] = stats.get(("session", outcome), 0) + 1
