"""What the realtime core keeps for one tenant, and the one place its sessions are
admitted, its rooms joined and left, and its rooms published to.

Every way a message reaches a room goes through `publish` (reliable: chat, Python
services' `gw.publish`, webhook answers' `publish` entries, the server API) or
`publish_hot` (lossy: `gw.publish_hot`); every membership change through `admit`,
`remove`, `join` and `leave`. These are the seams a broker wraps for scale-out
(SPEC 11: fan-out, presence and exact limits across nodes; `cluster`, below) and where
history numbers room messages (SPEC 13: `offset`/`epoch` given at `publish`). The Hot
Lane relay (svc 1) fans out inside the compiled framer, straight to the active room's
members; with a broker, the lane's `relay_tap` hands each relayed frame to the cluster.

With a broker (`cluster` set), every call still answers at once from this node's
tables and delivers here at once; the cluster carries publishes to the other nodes
(packed per room per loop turn, never awaited) and asks Redis where a limit must be
exact across nodes: an admission (`admit` answers None, the cluster opens or refuses
the session later) and a user's first session on this node in a room (`join` answers
an awaitable). The server API's `*_counted`, `presence_everywhere` and `totals` await
Redis for figures over every node.

The tenant is assembled beside the gateway (wsprism/assembly.py), which fills in what
the core is handed: the lane policy's entries, the dispatcher's handler table, the
admission rule, the membership listeners (Python services' hooks), and what services
reach through their tenant (`auth`, `http`). The core imports nothing from policy,
ops or services.
"""
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import msgspec

from .._fast import OP_BINARY, OP_TEXT, OPEN, Counter, LanePolicy, broadcast, build_frame
from . import codes
from .envelope import encode_message, encode_sys
from .registry import SessionRegistry
from .rooms import PRESENCE_USERS_CAP, RoomTable
from .stats import TenantStats

KICK_REPLACED = encode_sys("kicked", data={"reason": "replaced"})
KICK_EXCEEDED = encode_sys("kicked", data={"reason": "max_sessions_exceeded"})

_UNSET = msgspec.UNSET


class Presence(NamedTuple):
    count: int            # distinct users in the room (exact)
    users: list[str]      # up to the limit asked for, in join order


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
    def join(self, session, room: str) -> Awaitable[bool]: ...     # Redis admits it for every node
    def entered(self, session, room, first_of_user: bool) -> None: ...
    def left(self, session, room, gone_here: bool) -> None: ...
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
    def join(self, session, room: str):
        """Join (or re-join: make active again) a room; RoomError past a limit.

        Answers True when this is the user's first session in it (then `announce_joined`
        after `joined`), False when not. With a broker up, a user's first session on this
        node in a room needs Redis' admission for every node: then it answers an
        awaitable instead, which resolves to "first anywhere" once the membership is in
        (or raises RoomError), the session entered here only then."""
        cluster = self.cluster
        if cluster is not None and cluster.up and not self.rooms.has_user(room, session.user):
            return cluster.join(session, room)
        return self.enter(session, room)

    def enter(self, session, room: str) -> bool:
        """The membership is admitted (at once, or by the broker): into the room table."""
        first_of_user = self.rooms.join(session, room)
        cluster = self.cluster
        if cluster is not None:
            cluster.entered(session, self.rooms.rooms[room], first_of_user)
        for listener in self.listeners:
            listener.joined(session, room)
        return first_of_user

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
        leaving tells the others (`room.user_left`) when presence events are on; with a
        broker, once Redis says the user is in the room on no node."""
        r = self.rooms.leave(session, room)
        if r is None:
            return False
        user = session.user
        gone_here = user not in r.users
        cluster = self.cluster
        if cluster is not None:
            cluster.left(session, r, gone_here)
        elif gone_here and self.presence_events and r.members:
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
        encoded once: this node's members at once, the other nodes' through the broker.
        Returns how many sessions on this node it went to."""
        payload = encode_message(svc, type_, room, data)
        # (history assigns the message its offset and epoch here, before any delivery)
        r = self.rooms.get(room)
        cluster = self.cluster
        if cluster is None:
            if r is None:
                return 0
            broadcast(r.members, build_frame(OP_TEXT, payload), False)
            return len(r.members)
        frame = build_frame(OP_TEXT, payload)
        n = 0
        if r is not None:
            broadcast(r.members, frame, False)
            n = len(r.members)
        cluster.publish(self, room, r, frame, False)
        return n

    async def publish_counted(self, room: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """`publish`, answering how many sessions it reached on every node (the server
        API's `delivered`): this node's, plus what the other nodes last told Redis."""
        n = self.publish(room, svc, type_, data)
        cluster = self.cluster
        if cluster is not None and cluster.up:
            n += await cluster.remote_sessions(self, room)
        return n

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
