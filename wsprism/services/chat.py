"""`chat:send`: a text message to every session in a room the sender is in."""
import msgspec

from ..core import codes
from ..core.envelope import encode_message
from .base import ServiceError, decode_data, require_room


class ChatData(msgspec.Struct):
    msg: str


_chat_data = msgspec.json.Decoder(ChatData)


def send(session, env) -> None:
    room_name = require_room(env)
    rooms = session.tenant.rooms
    room = rooms.get(room_name)
    if room is None or session not in room.members:
        raise ServiceError(codes.NOT_ALLOWED, "not a member of that room")
    data = decode_data(env, _chat_data, "an object with a string msg")
    # Encoded once, the same bytes go to every member.
    rooms.broadcast(room, encode_message("chat", "msg", room_name, {"from": session.user, "msg": data.msg}))


HANDLERS = {"send": send}
