"""What a service handler is and how it reports an error to the client."""
import msgspec

from ..core import codes
from ..core.rooms import ROOM_NAME


class ServiceError(Exception):
    """Turns into a `sys.error` with this code for the sender; the session stays open."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code if code in codes.ERROR_CODES else codes.INTERNAL
        self.msg = msg


# A handler is `handler(session, envelope) -> None | DEFERRED`; it raises ServiceError.

# Returned by a handler whose answer comes later (an awaited backend call): the
# dispatcher then sends no ack, and the handler's continuation sends it after the answer.
DEFERRED = object()


def require_room(env) -> str:
    room = env.room
    if room is msgspec.UNSET:
        raise ServiceError(codes.BAD_REQUEST, "room is required")
    if not ROOM_NAME.fullmatch(room):
        raise ServiceError(codes.BAD_REQUEST, "room must be 1-128 chars of [A-Za-z0-9_.:@-]")
    return room


def decode_data(env, decoder: msgspec.json.Decoder, what: str):
    if env.data is msgspec.UNSET:
        raise ServiceError(codes.BAD_REQUEST, f"data is required ({what})")
    try:
        return decoder.decode(env.data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise ServiceError(codes.BAD_REQUEST, f"data must be {what}") from None
