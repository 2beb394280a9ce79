"""`sys:ping` and `sys:refresh` (protocol control: always allowed)."""
import msgspec

from ..core.envelope import PONG
from .base import decode_data


class RefreshData(msgspec.Struct):
    ticket: str


_refresh_data = msgspec.json.Decoder(RefreshData)


def ping(session, env) -> None:
    session.send(PONG)


def refresh(session, env):
    """A new ticket for the session (same user; new expiry): answered by the tenant's
    auth (wsprism/session_auth.py), at once or, for webhook auth, once it has answered."""
    data = decode_data(env, _refresh_data, "an object with a string ticket")
    return session.tenant.auth.refresh(session, data.ticket, env)


HANDLERS = {"ping": ping, "refresh": refresh}
