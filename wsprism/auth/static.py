"""`auth.mode: static` — a fixed ticket → user map from the config file."""
from .base import AuthError, Authenticator, Identity


class StaticAuthenticator(Authenticator):
    mode = "static"

    def __init__(self, tickets: dict[str, str]) -> None:
        self._tickets = dict(tickets)

    def authenticate(self, ticket: str) -> Identity:
        user = self._tickets.get(ticket)
        if user is None:
            raise AuthError("unknown ticket")
        return Identity(user)
