"""The gateway's side of the broker (SPEC 11): the tenants' `ClusterSeam`
(core/tenant.py) and the host the `RedisBroker` calls back (broker/redis.py).

Composition, beside the gateway: it knows tenants and sessions; the broker knows Redis.
Nothing on a message's way waits on Redis: a node delivers to its own members at once
and hands the frame to the broker, which packs every frame of one loop turn for one room
into one PUBLISH; the other nodes with members in the room receive it and fan it out.

Sessions. With the broker up, a session's admission is one script in Redis (same-sid
replacement, the per-user limit with deny or kick_oldest, `max_sessions_total`), exact
across every node; the session waits PENDING meanwhile (as for webhook auth: frames it
sends before `authed` are dropped). The answer carries the session's admission `seq` and
the sessions it displaced; displaced sessions on this node are kicked here, those on
other nodes get a kick on their node's channel (published by the script). A kick can
reach this node before the answer to the admission it concerns (two links): it is held
briefly (`early_kicks`) and applied when the answer arrives.

Rooms. A user's first session on this node in a room is admitted by the join script
(distinct users per room, rooms per tenant, rooms per user; "first anywhere" comes back
and `user_joined` is published to the other nodes in the same step); the room's channel
is subscribed (and confirmed by Redis) before the script is sent, so whatever is
published once the membership is in reaches this node. The script also says which other
nodes have members in the room, and tells them this one has ('N'); from then on this
node follows 'N'/'X' on the channel, and publishes nothing to a room no other node is in.
The session's later messages wait for it (core/dispatcher.py `answer_later`). Further
sessions of that user join here alone. The last session of a user here leaving runs the
leave script; its answer says whether the user is now in the room nowhere (then this
node's members get `user_left`; the other nodes got it from the script). Each room with
members here holds its channel (`retain`/`release`, refcounted, batched, with a linger)
and tells Redis how many sessions it has here (for the server API's `delivered`).

While the broker is down (or re-registering), sessions and joins are admitted against
this node's own counts (SPEC 11: the one window where limits are not exact), and every
such change is noted. When it comes back, `resync` makes Redis match this node: entries
of sessions and memberships that ended meanwhile are removed, those made meanwhile (or
all of them, when Redis came back empty) are admitted again through the same scripts,
oldest first, and what the tenant's policy now refuses is undone, newest first: deny ->
TOO_MANY_SESSIONS and close 4004, kick_oldest -> the oldest kicked, max_sessions_total ->
RESOURCE_EXHAUSTED and close 1013; a room limit -> `sys.error` RESOURCE_EXHAUSTED and
`left` for the sessions of that user in that room.
"""
import asyncio
import logging
from functools import partial
from itertools import count
from time import monotonic

from ._fast import Counter, broadcast
from .broker import BrokerError, RedisBroker
from .broker.wire import DISCONNECT, KICK_EXCEEDED, KICK_REPLACED, TO_USER
from .core import codes
from .core.dispatcher import hold, release
from .core.envelope import encode_sys
from .core.rooms import RoomError
from .core.session import OPEN, PENDING, about

log = logging.getLogger("wsprism.cluster")


def _settled(answer) -> None:
    """A reply nobody needs: read its outcome so asyncio does not log it as lost."""
    if not answer.cancelled():
        answer.exception()

EARLY_KICK_TTL = 5.0          # seconds a kick for a not-yet-answered admission is kept
RESYNC_BATCH = 500            # admissions in flight at once while re-registering
RESYNC_PASSES = 3             # full passes at most; what churn adds meanwhile is caught up once UP
KICK_REASONS = {KICK_REPLACED: "replaced", KICK_EXCEEDED: "max_sessions_exceeded"}


class Cluster:
    def __init__(self, tenants: dict, lifecycle, broker_cfg, node: str | None = None) -> None:
        self.tenants = tenants           # the gateway's live tenants, by id
        self.lifecycle = lifecycle       # lifecycle.py Lifecycle: opens admitted sessions
        self.broker = RedisBroker(broker_cfg, self, node=node)
        self.seqs: dict = {}             # admitted session -> its admission seq in Redis
        self.born: dict = {}             # admitted session -> local admission order
        self._order = count()
        self.early_kicks: dict = {}      # (tenant, user, sid) -> (seq, reason, monotonic)
        self.pending: dict = {}          # (tenant, room, user) -> joins waiting for Redis
        self.local_members: dict = {}    # (tenant, room, user) -> order: memberships Redis lacks
        self.changes = 0                 # local-only changes since the last resync pass
        self.unsynced: set = set()       # sessions admitted locally Redis may lack (caught up once UP)
        self._tasks: set = set()

    @property
    def node(self) -> str:
        return self.broker.node

    @property
    def up(self) -> bool:
        return self.broker.up

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
        self._early_kick(session, seq)

    def _early_kick(self, session, seq: int) -> None:
        """A kick for this admission that came (over the subscriber link) before its
        answer (over the command link) is applied now."""
        early = self.early_kicks.pop((session.tenant.id, session.user, session.sid), None)
        if early is not None and early[0] == seq:
            session.tenant.kick(session, KICK_REASONS.get(early[1], "replaced"))

    def admitted_locally(self, session) -> None:
        """The gateway admitted a session without Redis (down, or re-registering)."""
        self.born[session] = next(self._order)
        self.unsynced.add(session)
        self.changes += 1

    def session_gone(self, session) -> None:
        self.born.pop(session, None)
        self.unsynced.discard(session)
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

    # -- rooms --------------------------------------------------------------------------
    def join(self, session, room: str, since, answer) -> None:
        """Redis admits this node's first session of a user into `room`: the session's
        next messages are held until then; admitted, the tenant enters it (`enter`:
        history's replay, `joined`, hooks), refused, `answer.fail` with the limit."""
        hold(session)
        self._spawn(self._join(session, room, since, answer))

    async def _join(self, session, room: str, since, answer) -> None:
        tenant = session.tenant
        try:
            await self._join_steps(session, tenant, room, since, answer)
        except RoomError as exc:
            tenant.stats.service_errors_ext += 1
            answer.fail(exc.code, exc.msg)
        except Exception:                 # a bug must not leave the session's messages held
            log.exception("room join through the broker failed", extra=about(session, room=room, code=codes.INTERNAL))
            answer.fail(codes.INTERNAL, "internal error")
        finally:
            release(session)

    async def _join_steps(self, session, tenant, room: str, since, answer) -> None:
        user = session.user
        broker = self.broker
        key = (tenant.id, room, user)
        channel = broker.room_channel(tenant.id, room)
        broker.retain(channel, (tenant.id, room))
        pending = self.pending
        pending[key] = pending.get(key, 0) + 1
        try:
            try:
                # subscribed before the script runs: whatever is published once the
                # membership is in (frames, other nodes arriving: 'N') reaches this node
                confirmed = broker.until_subscribed(channel)
                if confirmed is not None:
                    await confirmed       # False if the link went: the join then decides locally
                ok, answer_ = await broker.join(tenant.id, user, room, tenant.limits, tenant.policy.presence_events)
            except (BrokerError, asyncio.TimeoutError):
                ok = answer_ = None       # went down meanwhile: this node decides alone
            finally:
                n = pending[key] - 1
                if n:
                    pending[key] = n
                else:
                    del pending[key]
            if session.state != OPEN or not session.registered or self.tenants.get(tenant.id) is not tenant:
                if ok:
                    self._leave_if_gone(tenant, room, user)
                return
            if ok is None:
                tenant.enter(session, room, since, answer)
                return
            if not ok:
                raise RoomError(codes.RESOURCE_EXHAUSTED, f"{answer_} reached")
            try:
                tenant.enter(session, room, since, answer, first=answer_)
            except RoomError:
                self._leave_if_gone(tenant, room, user)
                raise
        finally:
            broker.release(channel)       # the room holds its own retain once entered

    def entered(self, session, room, first_of_user: bool) -> None:
        """A session is in `room` (a Room) on this node: hold its channel, tell Redis the
        room's size here; a membership made without Redis is noted for the resync."""
        tenant = session.tenant
        broker = self.broker
        if room.channel is None:
            room.channel = broker.room_channel(tenant.id, room.name)
            broker.retain(room.channel, (tenant.id, room.name))
        broker.room_size(tenant.id, room.name, room.size)
        if first_of_user and not broker.up:
            self.local_members[(tenant.id, room.name, session.user)] = next(self._order)
            self.changes += 1

    def left(self, session, room, gone_here: bool, announce: bool) -> None:
        """A session left `room` (a Room) on this node; `gone_here`: its user has no
        other session in it here; `announce`: this node's members had heard of it (a
        session still in its replay had not entered)."""
        tenant = session.tenant
        broker = self.broker
        name = room.name
        broker.room_size(tenant.id, name, room.size)
        if room.empty and room.channel is not None:
            broker.release(room.channel)
            room.channel = None
        if not gone_here:
            return
        user = session.user
        key = (tenant.id, name, user)
        self.local_members.pop(key, None)
        if key in self.pending:
            # another session of this user is joining through Redis: the membership
            # stays; that join enters (it holds it) or, ending first, removes it
            # (_join_steps -> _leave_if_gone), so nobody here hears user_left
            return
        answer = broker.leave_answered(tenant.id, user, name, tenant.policy.presence_events)
        if answer is None:                  # down: this node decides who hears of it
            self.changes += 1
            if announce:
                tenant.announce(name, "user_left", user)
            return
        if announce:
            answer.add_done_callback(partial(self._left, tenant, name, user))
        else:
            answer.add_done_callback(_settled)

    @staticmethod
    def _left(tenant, room: str, user: str, answer) -> None:
        """The leave script answered: this node's members hear `user_left` when the user
        is now in the room on no node."""
        if answer.cancelled() or answer.exception() is not None:
            return                          # the link went: the resync settles it
        # 2: in the room on no node now; 0: Redis never had it (joined during an outage)
        if answer.result() != 1 and not tenant.rooms.has_user(room, user):
            tenant.announce(room, "user_left", user)

    def _leave_if_gone(self, tenant, room: str, user: str) -> None:
        """Redis admitted a membership nobody here holds any more (the session left
        while the join was in flight)."""
        if not tenant.rooms.has_user(room, user) and (tenant.id, room, user) not in self.pending:
            self.broker.leave(tenant.id, user, room, tenant.policy.presence_events)

    # -- delivery to other nodes ---------------------------------------------------------
    def publish(self, tenant, name: str, room, frame: bytes, lossy: bool) -> None:
        """A frame this node delivered to `name` (its Room here, or None) for the others."""
        channel = room.channel if room is not None else None
        if channel is None:
            channel = self.broker.room_channel(tenant.id, name)
        self.broker.publish(channel, frame, lossy)

    def relay_tap(self, session, frame: bytes) -> None:
        """The Hot Lane relay fanned `frame` out to the session's active room here."""
        room = session.tenant.rooms.rooms.get(session.active_room)
        if room is not None and room.channel is not None:
            self.broker.publish(room.channel, frame, True)

    def to_user(self, tenant, user: str, frame: bytes) -> None:
        self.broker.to_user_nowait(tenant.id, user, self.broker.control(TO_USER, (tenant.id, user, frame)))

    async def to_user_counted(self, tenant, user: str, frame: bytes) -> int:
        """Sends `frame` to the sessions of `user` on other nodes; -> how many there."""
        return await self._to_user(tenant, user, self.broker.control(TO_USER, (tenant.id, user, frame)))

    async def disconnect_user(self, tenant, user: str, code: int, reason: str) -> int:
        return await self._to_user(tenant, user, self.broker.control(DISCONNECT, (tenant.id, user, code, reason)))

    async def _to_user(self, tenant, user: str, message: bytes) -> int:
        if not self.broker.up:
            return 0
        try:
            total, here = await self.broker.to_user(tenant.id, user, message)
        except (BrokerError, asyncio.TimeoutError):
            return 0
        return total - here

    async def remote_sessions(self, tenant, room: str) -> int:
        try:
            return await self.broker.remote_sessions(tenant.id, room)
        except (BrokerError, asyncio.TimeoutError):
            return 0

    async def presence(self, tenant, room: str, limit: int):
        try:
            return await self.broker.presence(tenant.id, room, limit)
        except (BrokerError, asyncio.TimeoutError):
            return None

    async def totals(self, tenant):
        try:
            return await self.broker.tenant_stats(tenant.id)
        except (BrokerError, asyncio.TimeoutError):
            return None

    # -- broker host interface ----------------------------------------------------------
    def broker_tenants(self) -> list[str]:
        return list(self.tenants)

    def presence_events(self, tenant_id: str) -> bool:
        """Whether the reaper publishes `user_left` for this tenant's rooms (the config's
        choice: a drain here silences only this node's own members)."""
        tenant = self.tenants.get(tenant_id)
        return True if tenant is None else tenant.policy.presence_events

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

    def on_numbered(self, target, data: bytes) -> None:
        """History messages numbered by the room's history step (every node's, ours too)."""
        tenant = self.tenants.get(target[0])
        history = tenant.history if tenant is not None else None
        if history is not None and history.remote:
            history.on_feed(target[1], data)

    def on_unnumbered(self, target, payloads: list) -> None:
        """History messages that never reached Redis (the link went first)."""
        if target is None:
            return
        tenant = self.tenants.get(target[0])
        history = tenant.history if tenant is not None else None
        if history is not None and history.remote:
            history.unnumbered_lost(target[1], payloads)

    def on_presence(self, target, joined: bool, user: str) -> None:
        tenant = self.tenants.get(target[0])
        if tenant is not None:
            tenant.announce(target[1], "user_joined" if joined else "user_left", user)

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
        """Make Redis hold exactly this node's sessions and memberships; repeat while a
        pass saw local changes (admissions stay local until the broker is UP again), at
        most RESYNC_PASSES times: under steady churn a pass never ends quiet, so what
        was admitted locally after the last one (`unsynced`, `local_members`) goes
        through the normal scripts once the broker is UP (`_catch_up`)."""
        for _ in range(RESYNC_PASSES):
            mark = self.changes
            for tenant in list(self.tenants.values()):
                await self._resync_sessions(broker, tenant)
                await self._resync_rooms(broker, tenant)
            if self.changes == mark:
                break
        else:
            self._spawn(self._catch_up(broker))    # runs once the broker has set UP
        for tenant in list(self.tenants.values()):
            if tenant.history is not None and tenant.history.remote:
                tenant.history.relink()     # what the feeds missed: read from the streams

    async def _catch_up(self, broker) -> None:
        """Register the sessions and memberships admitted locally during the last
        resync pass, now that admissions go through Redis again. Down again: the next
        resync covers them (it compares everything)."""
        if not broker.up:
            return
        sessions, self.unsynced = self.unsynced, set()
        by_tenant: dict = {}
        for session in sessions:
            if session.state == OPEN and self.seqs.get(session) is None \
                    and self.tenants.get(session.tenant.id) is session.tenant:
                by_tenant.setdefault(session.tenant, []).append(session)
        members: dict = {}
        for (tid, room, user) in list(self.local_members):
            tenant = self.tenants.get(tid)
            if tenant is not None and tenant.rooms.has_user(room, user):
                members.setdefault(tenant, []).append((room, user))
        try:
            for tenant, batch in by_tenant.items():
                batch.sort(key=lambda s: self.born.get(s, -1))
                await self._admit_missing(broker, tenant, batch)
            for tenant, batch in members.items():
                batch.sort(key=lambda m: self.local_members.get((tenant.id, *m), -1))
                await self._join_missing(broker, tenant, batch)
        except (BrokerError, asyncio.TimeoutError):
            return                          # the link went: the reconnect's resync settles it

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
                stats[("session", "removed")] += 1
        missing = [s for key, s in live.items()
                   if self.seqs.get(s) is None or remote.get(key) != self.seqs[s]]
        born = self.born
        missing.sort(key=lambda s: born.get(s, -1))
        await self._admit_missing(broker, tenant, missing)

    async def _admit_missing(self, broker, tenant, missing: list) -> None:
        """Admit sessions Redis lacks through the admission script, oldest first; what
        the policy refuses now is closed."""
        stats = broker.stats.reconciled
        pol = tenant.policy.sessions
        kick = pol.on_exceed != "deny"
        for i in range(0, len(missing), RESYNC_BATCH):
            batch = missing[i:i + RESYNC_BATCH]
            answers = await asyncio.gather(*(
                broker.admit(tenant.id, s.user, s.sid, pol.max_sessions_per_user, kick,
                             tenant.limits.max_sessions_total) for s in batch))
            for session, r in zip(batch, answers):
                self.unsynced.discard(session)
                if r.status == "ok":
                    self._apply_kicks(tenant, session.user, r.kicks)
                    if session.state == OPEN:
                        self.seqs[session] = r.seq
                        self._early_kick(session, r.seq)     # re-registering races kicks too
                    else:
                        broker.unadmit(tenant.id, session.user, session.sid, r.seq)
                    outcome = "added"
                else:
                    self.seqs.pop(session, None)
                    if session.state == OPEN:
                        self._refuse(session, r.status)
                    outcome = "refused"
                stats[("session", outcome)] += 1

    async def _resync_rooms(self, broker, tenant) -> None:
        """Make Redis hold exactly this node's memberships (and room sizes)."""
        stats = broker.stats.reconciled
        tid = tenant.id
        remote = await broker.node_memberships(tid)
        rooms = tenant.rooms.rooms
        pending = self.pending
        events = tenant.policy.presence_events
        for room, user in remote:
            r = rooms.get(room)
            if (r is None or user not in r.users) and (tid, room, user) not in pending:
                broker.leave(tid, user, room, events)
                stats[("membership", "removed")] += 1
        local_members = self.local_members
        missing = [(room, user) for room, r in rooms.items() for user in r.users if (room, user) not in remote]
        # those Redis had before first (a Redis that came back empty), then the outage's, oldest first
        missing.sort(key=lambda m: local_members.get((tid, *m), -1))
        await self._join_missing(broker, tenant, missing)
        for room, r in rooms.items():
            broker.room_size(tid, room, r.size)
        for room in {room for room, _ in remote}:
            if room not in rooms:
                broker.room_size(tid, room, 0)
        # who else is in each room (until known, this node publishes to all of them)
        names = list(rooms)
        for i in range(0, len(names), RESYNC_BATCH):
            await asyncio.gather(*(broker.refresh_room_nodes(tid, room) for room in names[i:i + RESYNC_BATCH]))

    async def _join_missing(self, broker, tenant, missing: list) -> None:
        """Register memberships Redis lacks through the join script, in the order
        given; what a room limit refuses now is undone."""
        stats = broker.stats.reconciled
        tid = tenant.id
        events = tenant.policy.presence_events
        local_members = self.local_members
        for i in range(0, len(missing), RESYNC_BATCH):
            batch = missing[i:i + RESYNC_BATCH]
            answers = await asyncio.gather(*(
                broker.join(tid, user, room, tenant.limits, events and (tid, room, user) in local_members)
                for room, user in batch))
            for (room, user), (ok, answer) in zip(batch, answers):
                local_members.pop((tid, room, user), None)
                if ok:
                    outcome = "added"
                else:
                    outcome = "refused"
                    self._undo_membership(tenant, room, user, answer)
                stats[("membership", outcome)] += 1

    @staticmethod
    def _undo_membership(tenant, room: str, user: str, limit: str) -> None:
        """A membership made during the outage that a room limit refuses now: its
        sessions here get RESOURCE_EXHAUSTED and `left`."""
        r = tenant.rooms.get(room)
        if r is None:
            return
        msg = f"{limit} reached: left the room (joined while the broker was away)"
        left = encode_sys("left", room)
        for session in [s for s in (*r.members, *r.joining) if s.user == user]:
            session.send_error(codes.RESOURCE_EXHAUSTED, msg)
            tenant.leave(session, room)
            session.send(left)
