"""`room:join`, `room:leave`, `room:presence`."""
import msgspec

from ..core import codes
from ..core.envelope import encode_sys
from ..core.rooms import RoomError
from .base import ServiceError, require_room


def join(session, env) -> None:
    room = require_room(env)
    tenant = session.tenant
    try:
        first_of_user = tenant.join(session, room)
    except RoomError as exc:
        raise ServiceError(exc.code, exc.msg) from None
    session.send(encode_sys("joined", room))
    if first_of_user:
        tenant.announce_joined(room, session.user)


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


def presence(session, env) -> None:
    room = require_room(env)
    tenant = session.tenant
    if not tenant.is_member(session, room):
        raise ServiceError(codes.NOT_ALLOWED, "not a member of that room")
    count, users = tenant.presence(room)
    session.send(encode_sys("presence", room, {"count": count, "users": users}))


HANDLERS = {"join": join, "leave": leave, "presence": presence}
