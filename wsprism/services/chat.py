"""`chat:send`: a text message to every session in a room the sender is in."""
import msgspec

from ..core import codes
from .base import ServiceError, decode_data, require_room


class ChatData(msgspec.Struct):
    msg: str


_chat_data = msgspec.json.Decoder(ChatData)


def send(session, env) -> None:
    room = require_room(env)
    tenant = session.tenant
    if not tenant.is_member(session, room):
        raise ServiceError(codes.NOT_ALLOWED, "not a member of that room")
    data = decode_data(env, _chat_data, "an object with a string msg")
    tenant.publish(room, "chat", "msg", {"from": session.user, "msg": data.msg})


HANDLERS = {"send": send}
