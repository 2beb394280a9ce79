"""What the realtime core keeps for one tenant, and the one place its sessions are
admitted, its rooms joined and left, and its rooms published to.

Every way a message reaches a room goes through `publish` (reliable: chat, Python
services' `gw.publish`, webhook answers' `publish` entries, the server API) or
`publish_hot` (lossy: `gw.publish_hot`); every membership change through `admit`,
`remove`, `join` and `leave`. These are the seams a broker wraps for scale-out
(SPEC 11: fan-out, presence and exact limits across nodes; `cluster`, below) and where
history numbers room messages (SPEC 13). The Hot Lane relay (svc 1) fans out inside the
compiled framer, straight to the active room's members; with a broker, the lane's
`relay_tap` hands each relayed frame to the cluster.

With `policy.history` the tenant holds a history store (core/history.py `Store`):

    publish  = encode once -> the store gives the offset and keeps the frame -> fan-out
               to the live members (a broker publish comes after the local fan-out)
    join     = admit the membership (limits) -> with `since`, replay from since+1
               (core/recovery.py; the session is joining, not live, meanwhile) ->
               live -> `joined` with the room's position -> hooks and `user_joined`

Presence events and Hot Lane frames never go through the store. With a broker the store
is in Redis (wsprism/cluster_history.py, `remote`): `publish` hands the message to the
broker's history step and returns no frame (this node's members get it from the
broker's feed, numbered, like every other node's), and every join is a replay, since
even the room's position is read from Redis unless this node already follows the room.

With a broker (`cluster` set), every call still answers at once from this node's
tables and delivers here at once; the cluster carries publishes to the other nodes
(packed per room per loop turn, never awaited) and asks Redis where a limit must be
exact across nodes: an admission (`admit` answers None, the cluster opens or refuses
the session later) and a user's first session on this node in a room (`join` hands it
to the cluster, which calls `enter` once Redis admitted it: between the limits and the
replay). The server API's `*_counted`, `remote_sessions`, `presence_everywhere` and
`totals` await Redis for figures over every node.

The tenant is assembled beside the gateway (wsprism/assembly.py), which fills in what
the core is handed: the lane policy's entries, the dispatcher's handler table, the
admission rule, the membership listeners (Python services' hooks), and what services
reach through their tenant (`auth`, `http`). The core imports nothing from policy,
ops or services.
"""
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import msgspec

from .._fast import OP_BINARY, OP_TEXT, OPEN, Counter, LanePolicy, broadcast, build_frame
from . import codes
from .envelope import encode_message, encode_room_parts, encode_sys
from .recovery import JoinRun
from .registry import SessionRegistry
from .rooms import PRESENCE_USERS_CAP, RoomTable
from .stats import TenantStats

KICK_REPLACED = encode_sys("kicked", data={"reason": "replaced"})
KICK_EXCEEDED = encode_sys("kicked", data={"reason": "max_sessions_exceeded"})

_UNSET = msgspec.UNSET


class Presence(NamedTuple):
    count: int            # distinct users in the room (exact)
    users: list[str]      # up to the limit asked for, in join order


class JoinAnswer(Protocol):
    """How a join is answered (wsprism/services/room.py): called once the session is
    live in the room, with the room's position, `None` without history, else
    (offset, epoch, recovered: bool, or None for a join without `since`)."""

    def __call__(self, position: tuple[int, str, bool | None] | None) -> None: ...
    def fail(self, code: str, msg: str) -> None: ...


class MembershipListener(Protocol):
    """Told of every membership change of the tenant (Python services' on_join,
    on_leave and on_disconnect hooks). Must not raise and must not block."""

    def joined(self, session, room: str) -> None: ...
    def left(self, session, room: str) -> None: ...
    def disconnected(self, session) -> None: ...


# admission_rule(registry, user, policy) -> (denied, sessions to kick): policy/sessions.py
AdmissionRule = Callable[[SessionRegistry, str, Any], tuple[bool, list]]


class ClusterSeam(Protocol):
    """What the tenant calls when a broker joins the nodes (wsprism/cluster.py; None
    without one). Nothing here waits on Redis unless it is awaited."""

    up: bool                                          # the broker answers (else: this node alone)

    def admit(self, session) -> bool: ...             # True: Redis decides, then opens or refuses it
    def admitted_locally(self, session) -> None: ...  # admitted on this node's counts (broker down)
    def session_gone(self, session) -> None: ...
    def join(self, session, room: str, since, answer) -> None: ...  # Redis admits it, then tenant.enter
    def entered(self, session, room, first_of_user: bool) -> None: ...
    def left(self, session, room, gone_here: bool, announce: bool) -> None: ...
    def publish(self, tenant, name: str, room, frame: bytes, lossy: bool) -> None: ...
    def to_user(self, tenant, user: str, frame: bytes) -> None: ...
    async def to_user_counted(self, tenant, user: str, frame: bytes) -> int: ...
    async def disconnect_user(self, tenant, user: str, code: int, reason: str) -> int: ...
    async def remote_sessions(self, tenant, room: str) -> int: ...
    async def presence(self, tenant, room: str, limit: int): ...   # (count, users) | None
    async def totals(self, tenant): ...                            # (sessions, rooms, users) | None


class Tenant:
    __slots__ = (
        # the core's own state
        "id", "lane", "stats", "sessions", "rooms", "presence_events", "listeners", "generation",
        "history",
        # configuration, handed in by the assembly (and again on reload)
        "cfg", "policy", "limits", "writer_send_timeout", "admission_rule",
        # the tenant's other parts, assembled beside the gateway
        "auth", "http", "ext_lane", "ext_allow", "dispatcher", "forwarders", "services",
        # the broker's side (SPEC 11), None in one process
        "cluster",
    )

    def __init__(self, tenant_id: str) -> None:
        self.id = tenant_id
        self.lane = LanePolicy()                  # compiled lane settings + decision counters
        self.stats = TenantStats(self.lane)
        self.sessions = SessionRegistry()
        self.rooms = RoomTable()
        self.presence_events = False
        self.listeners: tuple[MembershipListener, ...] = ()
        self.generation = 0                       # how many times a config was applied
        self.history = None                       # core/history.py Store, with policy.history
        self.cfg = self.policy = self.limits = None
        self.writer_send_timeout = 1.5
        self.admission_rule: AdmissionRule | None = None
        self.auth = None            # wsprism/session_auth.py SessionAuth: expiry, refresh, webhook auth
        self.http = None            # wsprism/backend/http.py HttpClient, shared by the gateway
        self.ext_lane = None        # wsprism/policy/ext_lane.py ExtLane (also lane.ext_entry)
        self.ext_allow = None       # its allowlist
        self.dispatcher = None      # core/dispatcher.py Dispatcher with the tenant's handler table
        self.forwarders: dict = {}  # svc -> wsprism/services/webhook.py Forwarder
        self.services: dict = {}    # svc -> wsprism/services/python.py PythonService
        self.cluster: ClusterSeam | None = None

    @property
    def authenticator(self):
        return self.auth.authenticator

    # -- admission -----------------------------------------------------------------------
    def admit(self, session, broker: bool = True) -> bool | None:
        """Register a session whose user is known: a live session of the same user and sid
        is replaced (`kicked` replaced, 4003), then the per-user rule applies. False when
        the rule denies it (the caller refuses it with TOO_MANY_SESSIONS). With a broker
        up (and `broker`), Redis decides for every node: None, and the cluster opens or
        refuses the session once it has answered."""
        cluster = self.cluster
        if broker and cluster is not None and cluster.admit(session):
            return None
        reg = self.sessions
        old = reg.find(session.user, session.sid)
        if old is not None:
            self.kick(old, "replaced")
        denied, kick = self.admission_rule(reg, session.user, self.policy)
        if denied:
            self.stats.handshake_rejections["too_many_sessions"] += 1
            return False
        for victim in kick:
            self.kick(victim, "max_sessions_exceeded")
        self.register(session)
        if cluster is not None:
            cluster.admitted_locally(session)
        return True

    def register(self, session) -> None:
        """Into the registry, once admitted (here, or by Redis for every node); a live
        session with the same user and sid that Redis did not know is replaced."""
        reg = self.sessions
        old = reg.find(session.user, session.sid)
        if old is not None and old is not session:
            self.kick(old, "replaced")
        reg.add(session)
        session.registered = True

    @staticmethod
    def kick(session, reason: str) -> None:
        """`kicked` with `reason` (replaced | max_sessions_exceeded), then close 4003."""
        if reason == "replaced":
            session.send(KICK_REPLACED)
            session.close(codes.CLOSE_KICKED, "replaced")
        else:
            session.send(KICK_EXCEEDED)
            session.close(codes.CLOSE_KICKED, "max sessions exceeded")

    def remove(self, session) -> None:
        """Leave every room and the registry (idempotent): on close, kick and disconnect."""
        if not session.registered:
            return
        session.registered = False
        self.sessions.remove(session)
        for name in list(session.rooms):
            self.leave(session, name)
        for listener in self.listeners:
            listener.disconnected(session)
        if self.cluster is not None:
            self.cluster.session_gone(session)

    # -- membership ----------------------------------------------------------------------
    def join(self, session, room: str, since, answer: JoinAnswer) -> bool:
        """Join (or re-join: make active again) a room; RoomError past a limit. `since`
        (history.Since or None) asks for the messages after it first. True when the join
        was answered now; False when `answer` is called later (its replay is still being
        sent: the session is joining meanwhile, core/recovery.py; or, with a broker up,
        the user's first session here in the room waits for Redis to admit it for every
        node: the cluster calls `enter`, or `answer.fail` with the limit that refused)."""
        rooms = self.rooms
        r = rooms.get(room)
        if r is not None:
            run = r.joining.get(session)
            if run is not None:                       # re-join during its replay: answered after it
                rooms.make_active(session, room)
                run.answers.append(answer)
                return False
            if session in r.members:                  # re-join: it has had every message since it joined
                rooms.make_active(session, room)
                answer(self._rejoin_position(room, since))
                return True
        cluster = self.cluster
        if cluster is not None and cluster.up and not rooms.has_user(room, session.user):
            cluster.join(session, room, since, answer)
            return False
        return self.enter(session, room, since, answer)

    def enter(self, session, room: str, since, answer: JoinAnswer, first: bool | None = None) -> bool:
        """The membership is admitted (here, or by Redis for every node: then `first` says
        whether the user is new to the room anywhere): into the room, then `_admitted`."""
        rooms = self.rooms
        new_room = room not in rooms.rooms
        history = self.history
        run = (JoinRun(self, history, session, room, answer)
               if history is not None and (since is not None or history.remote) else None)
        first_of_user = rooms.join(session, room, pending=run)     # RoomError: nothing counted
        if new_room and history is not None:
            history.occupied(room)
        cluster = self.cluster
        if cluster is not None:
            cluster.entered(session, rooms.rooms[room], first_of_user)
        return self._admitted(session, room, since, answer, first_of_user if first is None else first, run)

    def _admitted(self, session, room: str, since, answer: JoinAnswer, first_of_user: bool, run) -> bool:
        """The session holds its place in the room: live, or joining (`run`) when it has
        a replay to receive. Replay from since+1, then live, `joined`, hooks and
        `user_joined`. A broker's admission (scale-out) comes before `rooms.join` (`enter`)."""
        if run is not None:
            run.start(run.store.replay(room, since), first_of_user)
            return run.step()
        history = self.history
        answer(None if history is None else (*history.position(room), None))
        self._entered(session, room, first_of_user)
        return True

    def went_live(self, run: JoinRun, reset: bool = False) -> None:
        """A joining session's replay is over (recovery.py, in the turn of its last chunk):
        it becomes a live member, then `joined`, then hooks and `user_joined`. `reset`:
        the tenant's history was replaced meanwhile (a reload), so it is not recovered."""
        session, room = run.session, run.room
        self.rooms.go_live(session, room)
        if reset:
            run.cursor.abort()
            position = None if self.history is None else (*self.history.position(room), False)
        else:
            position = run.cursor.finish()
        for answer in run.answers:
            answer(position)
        self._entered(session, room, run.announce)

    def _rejoin_position(self, room: str, since):
        """A live member's re-join: no replay (it has been sent every message since it
        joined); `recovered` only says whether `since` is a position of this room."""
        history = self.history
        if history is None:
            return None
        top, epoch = history.position(room)
        if since is None:
            return top, epoch, None
        return top, epoch, since.epoch == epoch and since.offset <= top

    def _entered(self, session, room: str, first_of_user: bool) -> None:
        for listener in self.listeners:
            listener.joined(session, room)
        if first_of_user:
            self.announce_joined(room, session.user)

    def announce_joined(self, room: str, user: str) -> None:
        """`room.user_joined` to every member here, when the tenant has presence events on
        (members on other nodes hear it from the broker's join step)."""
        self.announce(room, "user_joined", user)

    def announce(self, room: str, kind: str, user: str) -> None:
        r = self.rooms.get(room)
        if r is not None and self.presence_events:
            self.deliver(r, encode_message("room", kind, room, {"user": user}))

    def leave(self, session, room: str) -> bool:
        """Leave a room; False if the session was not in it. The user's last session
        leaving tells the others (`room.user_left`) when presence events are on. A
        joining session's replay ends; it had not entered the room (no hooks, no
        `user_left`), but if it was to announce the user and the user stays (another
        session), `user_joined` goes out now. With a broker, `user_left` waits for Redis
        to say the user is in the room on no node."""
        r = self.rooms.get(room)
        run = r.joining.get(session) if r is not None else None
        r = self.rooms.leave(session, room)
        if r is None:
            return False
        if r.empty and self.history is not None:
            self.history.vacated(room)
        user = session.user
        gone_here = user not in r.users
        cluster = self.cluster
        if cluster is not None:
            cluster.left(session, r, gone_here, run is None)
        if run is not None:
            run.cancel()
            if run.announce and user in r.users:
                self.announce_joined(room, user)
            return True
        if cluster is None and self.presence_events and r.members and gone_here:
            self.deliver(r, encode_message("room", "user_left", room, {"user": user}))
        for listener in self.listeners:
            listener.left(session, room)
        return True

    def is_member(self, session, room: str) -> bool:
        return self.rooms.is_member(session, room)

    def presence(self, room: str, limit: int = PRESENCE_USERS_CAP) -> Presence:
        """This node's members (exact in one process)."""
        return Presence(*self.rooms.presence(room, limit))

    async def presence_everywhere(self, room: str, limit: int = PRESENCE_USERS_CAP) -> Presence:
        """Every node's members, from Redis, with a broker up; else this node's."""
        cluster = self.cluster
        if cluster is not None and cluster.up:
            found = await cluster.presence(self, room, limit)
            if found is not None:
                return Presence(*found)
        return self.presence(room, limit)

    async def totals(self) -> tuple[int, int, int]:
        """(sessions, rooms, users) of every node with a broker up; else this node's."""
        cluster = self.cluster
        if cluster is not None and cluster.up:
            found = await cluster.totals(self)
            if found is not None:
                return found
        return self.sessions.count, len(self.rooms.rooms), self.sessions.users

    # -- delivery ------------------------------------------------------------------------
    def publish(self, room: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """Reliable: `{"v":1,"svc","type","room","data"?}` to every member of `room`,
        encoded once. With history, `"offset":N,"epoch":"E"` after `room`, and the frame
        is kept (even for a room with no member). Returns how many sessions it went to
        (joining members get it through their replay and are counted). With a broker,
        the other nodes' members get it too; the count is this node's."""
        history = self.history
        cluster = self.cluster
        if history is None:
            r = self.rooms.get(room)
            if cluster is None:
                return 0 if r is None else self.deliver(r, encode_message(svc, type_, room, data))
            frame = build_frame(OP_TEXT, encode_message(svc, type_, room, data))
        else:
            frame = history.publish(room, *encode_room_parts(svc, type_, room, data))
            r = self.rooms.get(room)
            if frame is None:
                # numbered by the broker's history step: every node, this one too,
                # delivers it from its feed, in offset order (wsprism/cluster_history.py)
                return 0 if r is None else r.size
        n = 0
        if r is not None:
            broadcast(r.members, frame, False)
            n = r.size
        if cluster is not None:
            # after the local fan-out (history with a broker down: unnumbered, counted as dropped)
            cluster.publish(self, room, r, frame, False)
        return n

    def set_history(self, store) -> None:
        """Turn history on (a new store: every room starts a new epoch) or off (None)."""
        old = self.history
        if old is not None:
            old.clear()
        self.history = store
        if store is not None:
            for name in self.rooms.rooms:
                store.occupied(name)

    async def remote_sessions(self, room: str) -> int:
        """Sessions in `room` on the other nodes (with a broker up, as they last told
        Redis; 0 otherwise): with `publish`'s own count, the server API's `delivered`."""
        cluster = self.cluster
        if cluster is None or not cluster.up:
            return 0
        return await cluster.remote_sessions(self, room)

    def publish_hot(self, room: str, frame: bytes) -> int:
        """Lossy: one binary frame carrying `frame` (a whole Hot Lane message, header
        included) to every member of `room`, through the same corked fan-out as the relay;
        members over their high-water mark are skipped and counted, and with a broker the
        other nodes get it packed with the loop turn's other frames for the room (dropped,
        counted, when the link is over its mark). Returns how many got it here."""
        r = self.rooms.get(room)
        cluster = self.cluster
        if r is None and cluster is None:
            return 0
        out = build_frame(OP_BINARY, frame)
        n = 0
        if r is not None:
            members = r.members
            drops = broadcast(members, out, True)
            if drops:
                self.lane.bump(Counter.C_EGRESS_DROPS, drops)
            n = len(members) - drops
        if cluster is not None:
            cluster.publish(self, room, r, out, True)
        return n

    def send_to_user(self, user: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """Reliable, to every open session of `user` (with a broker, on every node);
        returns how many on this node."""
        frame = build_frame(OP_TEXT, encode_message(svc, type_, None, data))
        n = self.deliver_to_user(user, frame)
        if self.cluster is not None:
            self.cluster.to_user(self, user, frame)
        return n

    async def send_to_user_counted(self, user: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """`send_to_user`, answering how many sessions it reached on every node."""
        frame = build_frame(OP_TEXT, encode_message(svc, type_, None, data))
        n = self.deliver_to_user(user, frame)
        if self.cluster is not None:
            n += await self.cluster.to_user_counted(self, user, frame)
        return n

    def deliver_to_user(self, user: str, frame: bytes) -> int:
        """A built frame to this node's open sessions of `user`."""
        sessions = [s for s in self.sessions.sessions_of(user) if s.state == OPEN]
        if sessions:
            broadcast(sessions, frame, False)
        return len(sessions)

    def disconnect_user(self, user: str, code: int, reason: str = "") -> int:
        """Close this node's open sessions of `user`; returns how many."""
        victims = [s for s in self.sessions.sessions_of(user) if s.state == OPEN]
        for session in victims:
            session.close(code, reason)
        return len(victims)

    async def disconnect_user_counted(self, user: str, code: int, reason: str = "") -> int:
        """Close every open session of `user` on every node; returns how many."""
        n = self.disconnect_user(user, code, reason)
        if self.cluster is not None:
            n += await self.cluster.disconnect_user(self, user, code, reason)
        return n

    def disconnect_sid(self, sid: str, code: int, reason: str = "") -> int:
        """Close this node's open sessions with `sid`; returns how many."""
        victims = [s for s in self.sessions.with_sid(sid) if s.state == OPEN]
        for session in victims:
            session.close(code, reason)
        return len(victims)

    def deliver(self, room, data: bytes) -> int:
        """A reliable text message to every member of `room` (a Room) on this node."""
        broadcast(room.members, build_frame(OP_TEXT, data), False)
        return len(room.members)
