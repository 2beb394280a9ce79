"""`room:join`, `room:leave`, `room:presence`.

`room:join` takes an optional `data: {"since": {"offset", "epoch"}}` (SPEC 13), checked
on every tenant (malformed → BAD_REQUEST, the session stays), acted on where the
tenant keeps history. Its answer:

    {"v":1,"svc":"sys","type":"joined","room":"r"}                        no history
    {"v":1,"svc":"sys","type":"joined","room":"r","data":{"offset":N,"epoch":"E"}}   history
    ... "data":{"offset":N,"epoch":"E","recovered":true|false}}           history, with since

A join whose replay takes more than one loop turn is answered (and acked) when the
replay is over (core/recovery.py); with a broker, a join Redis must admit for every node
is answered once it has, and the session's next messages wait for that (core/dispatcher.py
holds them; wsprism/cluster.py).
"""
import msgspec

from ..core import codes
from ..core.dispatcher import answer_later
from ..core.envelope import FLAG_ACK_REQUESTED, encode_ack, encode_sys
from ..core.history import BadSince, decode_since
from ..core.rooms import RoomError
from .base import DEFERRED, ServiceError, require_room

_UNSET = msgspec.UNSET


class JoinAnswer:
    """Sends `joined` (and, for a join answered after its handler returned, the ack)."""

    __slots__ = ("session", "room", "seq", "ack", "later")

    def __init__(self, session, room: str, env) -> None:
        self.session = session
        self.room = room
        self.seq = env.seq
        self.ack = env.flags & FLAG_ACK_REQUESTED and env.seq is not _UNSET
        self.later = False            # set once the handler has returned DEFERRED

    def __call__(self, position) -> None:
        if position is None:
            self.session.send(encode_sys("joined", self.room))
        else:
            offset, epoch, recovered = position
            data = {"offset": offset, "epoch": epoch}
            if recovered is not None:
                data["recovered"] = recovered
            self.session.send(encode_sys("joined", self.room, data))
        if self.later and self.ack:
            self.session.send(encode_ack(self.seq))

    def fail(self, code: str, msg: str) -> None:
        self.session.send_error(code, msg, self.seq)


def join(session, env):
    room = require_room(env)
    try:
        since = decode_since(env.data)
    except BadSince as exc:
        raise ServiceError(codes.BAD_REQUEST, exc.msg) from None
    tenant = session.tenant
    answer = JoinAnswer(session, room, env)
    try:
        now = tenant.join(session, room, since, answer)
    except RoomError as exc:
        raise ServiceError(exc.code, exc.msg) from None
    if now:
        return None
    answer.later = True
    return DEFERRED


def leave(session, env) -> None:
    if env.room is msgspec.UNSET:
        room = session.active_room
        if room is None:
            raise ServiceError(codes.BAD_REQUEST, "not in any room")
    else:
        room = require_room(env)
    if not session.tenant.leave(session, room):
        raise ServiceError(codes.BAD_REQUEST, "not a member of that room")
    session.send(encode_sys("left", room))


def presence(session, env):
    room = require_room(env)
    tenant = session.tenant
    if not tenant.is_member(session, room):
        raise ServiceError(codes.NOT_ALLOWED, "not a member of that room")
    cluster = tenant.cluster
    if cluster is not None and cluster.up:       # exact over every node: Redis answers
        return answer_later(session, env, tenant.presence_everywhere(room), _presence, room)
    _presence(session, env, tenant.presence(room), room)
    return None


def _presence(session, env, found, room: str) -> None:
    count, users = found
    session.send(encode_sys("presence", room, {"count": count, "users": users}))


HANDLERS = {"join": join, "leave": leave, "presence": presence}
