"""`auth.mode: dev` — for local use only (refused by `wsprism check --strict`).

Ticket `dev` is user `dev`; ticket `dev:<name>` is user `<name>`, so one can open
sessions as several users when trying rooms or running the load generator.
"""
import re

from .base import AuthError, Authenticator, Identity

_USER = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


class DevAuthenticator(Authenticator):
    mode = "dev"

    def authenticate(self, ticket: str) -> Identity:
        if ticket == "dev":
            return Identity("dev")
        if ticket.startswith("dev:"):
            user = ticket[4:]
            if _USER.fullmatch(user):
                return Identity(user)
        raise AuthError("dev auth accepts only the tickets 'dev' and 'dev:<user>'")
