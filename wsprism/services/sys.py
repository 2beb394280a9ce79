"""`sys:ping` and `sys:refresh` (protocol control: always allowed)."""
import msgspec

from ..auth import AuthError
from ..core import codes
from ..core.envelope import PONG, encode_sys
from .base import DEFERRED, ServiceError, decode_data


class RefreshData(msgspec.Struct):
    ticket: str


_refresh_data = msgspec.json.Decoder(RefreshData)


def ping(session, env) -> None:
    session.send(PONG)


def refresh(session, env) -> None:
    data = decode_data(env, _refresh_data, "an object with a string ticket")
    auth = session.tenant.authenticator
    if auth.deferred:
        session.gateway.refresh_deferred(session, data.ticket, env)
        return DEFERRED
    try:
        ident = auth.authenticate(data.ticket)
    except AuthError as exc:
        raise ServiceError(codes.AUTH_FAILED, str(exc)) from None
    confirm_refresh(session, ident)


def confirm_refresh(session, ident) -> None:
    """Take a checked new ticket (either auth path): same user, new expiry, `refreshed`."""
    if ident.user != session.user:
        raise ServiceError(codes.AUTH_FAILED, "token is for another user")
    session.gateway.set_expiry(session, ident.exp)
    session.send(encode_sys("refreshed", data={"exp": None if ident.exp is None else int(ident.exp)}))


HANDLERS = {"ping": ping, "refresh": refresh}
