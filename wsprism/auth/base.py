"""What every authenticator answers."""
from typing import NamedTuple


class Identity(NamedTuple):
    user: str
    exp: float | None = None   # unix seconds after which the session must refresh, or None


class AuthError(Exception):
    """The ticket was refused. The message is safe to log: it never contains the ticket."""


class AuthSetupError(Exception):
    """The auth configuration cannot be used (missing secret env var, unreadable key file)."""


class Authenticator:
    """Base class. `deferred` authenticators (webhook) decide after the upgrade."""

    mode = "base"
    deferred = False
    leeway = 0.0      # seconds a session may outlive its `exp` (clock skew tolerance)

    def authenticate(self, ticket: str) -> Identity:  # pragma: no cover - interface
        raise NotImplementedError
