"""Helpers for the built-in services' handlers (the handler signature and `ServiceError`
belong to the dispatcher, wsprism/core/dispatcher.py)."""
import msgspec

from .. import names
from ..core import codes
from ..core.dispatcher import DEFERRED, ServiceError

__all__ = ["DEFERRED", "ServiceError", "decode_data", "require_room"]


def require_room(env) -> str:
    room = env.room
    if room is msgspec.UNSET:
        raise ServiceError(codes.BAD_REQUEST, "room is required")
    if not names.ROOM.fullmatch(room):
        raise ServiceError(codes.BAD_REQUEST, f"room must be {names.ROOM_RULE}")
    return room


def decode_data(env, decoder: msgspec.json.Decoder, what: str):
    if env.data is msgspec.UNSET:
        raise ServiceError(codes.BAD_REQUEST, f"data is required ({what})")
    try:
        return decoder.decode(env.data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise ServiceError(codes.BAD_REQUEST, f"data must be {what}") from None
