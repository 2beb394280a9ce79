"""`room:join`, `room:leave`, `room:presence`.

A join is: the room name checked, the membership admitted (at once, or with a broker,
by Redis for every node: the handler then answers later and the session's next
messages wait for it), then `joined`, then `user_joined` to the room for the user's
first session in it. (History's replay from `since` belongs between the admission and
`joined`: in `joined` below.)
"""
import msgspec

from ..core import codes
from ..core.dispatcher import answer_later
from ..core.envelope import encode_sys
from .base import ServiceError, require_room


def join(session, env):
    room = require_room(env)
    first = session.tenant.join(session, room)     # RoomError (a ServiceError) past a limit
    if type(first) is bool:
        joined(session, env, first, room)
        return None
    return answer_later(session, env, first, joined, room)


def joined(session, env, first: bool, room: str) -> None:
    """The membership is in: `joined`, then the room hears of a user new to it."""
    session.send(encode_sys("joined", room))
    if first:
        session.tenant.announce_joined(room, session.user)


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
