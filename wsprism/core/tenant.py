"""What the realtime core keeps for one tenant, and the one place its sessions are
admitted, its rooms joined and left, and its rooms published to.

Every way a message reaches a room goes through `publish` (reliable: chat, Python
services' `gw.publish`, webhook answers' `publish` entries, the server API) or
`publish_hot` (lossy: `gw.publish_hot`); every membership change through `admit`,
`remove`, `join` and `leave`. These are the seams a broker wraps for scale-out
(SPEC 11: fan-out, presence and exact limits across nodes) and where history numbers
room messages (SPEC 13). The Hot Lane relay (svc 1) fans out inside the compiled
framer, straight to the active room's members.

With `policy.history` the tenant holds a history store (core/history.py `Store`):

    publish  = encode once -> the store gives the offset and keeps the frame -> fan-out
               to the live members (a broker publish comes after the local fan-out)
    join     = admit the membership (limits) -> with `since`, replay from since+1
               (core/recovery.py; the session is joining, not live, meanwhile) ->
               live -> `joined` with the room's position -> hooks and `user_joined`

Presence events and Hot Lane frames never go through the store.

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


class Tenant:
    __slots__ = (
        # the core's own state
        "id", "lane", "stats", "sessions", "rooms", "presence_events", "listeners", "generation",
        "history",
        # configuration, handed in by the assembly (and again on reload)
        "cfg", "policy", "limits", "writer_send_timeout", "admission_rule",
        # the tenant's other parts, assembled beside the gateway
        "auth", "http", "ext_lane", "ext_allow", "dispatcher", "forwarders", "services",
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

    @property
    def authenticator(self):
        return self.auth.authenticator

    # -- admission -----------------------------------------------------------------------
    def admit(self, session) -> bool:
        """Register a session whose user is known: a live session of the same user and sid
        is replaced (`kicked` replaced, 4003), then the per-user rule applies. False when
        the rule denies it (the caller refuses it with TOO_MANY_SESSIONS)."""
        reg = self.sessions
        old = reg.find(session.user, session.sid)
        if old is not None:
            old.send(KICK_REPLACED)
            old.close(codes.CLOSE_KICKED, "replaced")
        denied, kick = self.admission_rule(reg, session.user, self.policy)
        if denied:
            self.stats.handshake_rejections["too_many_sessions"] += 1
            return False
        for victim in kick:
            victim.send(KICK_EXCEEDED)
            victim.close(codes.CLOSE_KICKED, "max sessions exceeded")
        reg.add(session)
        session.registered = True
        return True

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

    # -- membership ----------------------------------------------------------------------
    def join(self, session, room: str, since, answer: JoinAnswer) -> bool:
        """Join (or re-join: make active again) a room; RoomError past a limit. `since`
        (history.Since or None) asks for the messages after it first. True when the join
        was answered now; False when `answer` is called later (its replay is still being
        sent: the session is joining meanwhile, core/recovery.py)."""
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
        history = self.history
        run = JoinRun(self, history, session, room, answer) if history is not None and since is not None else None
        first_of_user = rooms.join(session, room, pending=run)     # RoomError: nothing counted
        if r is None and history is not None:
            history.occupied(room)
        return self._admitted(session, room, since, answer, first_of_user, run)

    def _admitted(self, session, room: str, since, answer: JoinAnswer, first_of_user: bool, run) -> bool:
        """The session holds its place in the room: live, or joining (`run`) when it has
        a replay to receive. Replay from since+1, then live, `joined`, hooks and
        `user_joined`. A broker's admission (scale-out) sits between `rooms.join` and this."""
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
        """`room.user_joined` to every member, when the tenant has presence events on."""
        r = self.rooms.get(room)
        if r is not None and self.presence_events:
            self._deliver(r, encode_message("room", "user_joined", room, {"user": user}))

    def leave(self, session, room: str) -> bool:
        """Leave a room; False if the session was not in it. The user's last session
        leaving tells the others (`room.user_left`) when presence events are on. A
        joining session's replay ends; it had not entered the room (no hooks, no
        `user_left`), but if it was to announce the user and the user stays (another
        session), `user_joined` goes out now."""
        r = self.rooms.get(room)
        run = r.joining.get(session) if r is not None else None
        r = self.rooms.leave(session, room)
        if r is None:
            return False
        if r.empty and self.history is not None:
            self.history.vacated(room)
        user = session.user
        if run is not None:
            run.cancel()
            if run.announce and user in r.users:
                self.announce_joined(room, user)
            return True
        if self.presence_events and r.members and user not in r.users:
            self._deliver(r, encode_message("room", "user_left", room, {"user": user}))
        for listener in self.listeners:
            listener.left(session, room)
        return True

    def is_member(self, session, room: str) -> bool:
        return self.rooms.is_member(session, room)

    def presence(self, room: str, limit: int = PRESENCE_USERS_CAP) -> Presence:
        return Presence(*self.rooms.presence(room, limit))

    # -- delivery ------------------------------------------------------------------------
    def publish(self, room: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """Reliable: `{"v":1,"svc","type","room","data"?}` to every member of `room`,
        encoded once. With history, `"offset":N,"epoch":"E"` after `room`, and the frame
        is kept (even for a room with no member). Returns how many sessions it went to
        (joining members get it through their replay and are counted)."""
        history = self.history
        if history is None:
            r = self.rooms.get(room)
            if r is None:
                return 0
            return self._deliver(r, encode_message(svc, type_, room, data))
        frame = history.publish(room, *encode_room_parts(svc, type_, room, data))
        r = self.rooms.get(room)
        if r is None:
            return 0
        members = r.members
        broadcast(members, frame, False)
        return len(members) + len(r.joining)

    def set_history(self, store) -> None:
        """Turn history on (a new store: every room starts a new epoch) or off (None)."""
        old = self.history
        if old is not None:
            old.clear()
        self.history = store
        if store is not None:
            for name in self.rooms.rooms:
                store.occupied(name)

    def publish_hot(self, room: str, frame: bytes) -> int:
        """Lossy: one binary frame carrying `frame` (a whole Hot Lane message, header
        included) to every member of `room`, through the same corked fan-out as the relay;
        members over their high-water mark are skipped and counted. Returns how many got it."""
        r = self.rooms.get(room)
        if r is None:
            return 0
        members = r.members
        drops = broadcast(members, build_frame(OP_BINARY, frame), True)
        if drops:
            self.lane.bump(Counter.C_EGRESS_DROPS, drops)
        return len(members) - drops

    def send_to_user(self, user: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """Reliable, to every open session of `user`; returns how many."""
        sessions = [s for s in self.sessions.sessions_of(user) if s.state == OPEN]
        if sessions:
            frame = build_frame(OP_TEXT, encode_message(svc, type_, None, data))
            broadcast(sessions, frame, False)
        return len(sessions)

    def disconnect_user(self, user: str, code: int, reason: str = "") -> int:
        victims = [s for s in self.sessions.sessions_of(user) if s.state == OPEN]
        for session in victims:
            session.close(code, reason)
        return len(victims)

    def disconnect_sid(self, sid: str, code: int, reason: str = "") -> int:
        victims = [s for s in self.sessions.with_sid(sid) if s.state == OPEN]
        for session in victims:
            session.close(code, reason)
        return len(victims)

    def _deliver(self, room, data: bytes) -> int:
        broadcast(room.members, build_frame(OP_TEXT, data), False)
        return len(room.members)
