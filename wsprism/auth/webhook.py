"""`auth.mode: webhook` — the backend decides, right after the upgrade (SPEC 10).

picows' upgrade hook is synchronous, so this authenticator is `deferred`: the session
is accepted at the HTTP layer and the ticket is checked before any message is handled.
"""
from .base import AuthError, Authenticator, Identity


class WebhookAuthenticator(Authenticator):
    mode = "webhook"
    deferred = True

    def __init__(self, cfg) -> None:
        self.url = cfg.url
        self.timeout = cfg.timeout_ms / 1000.0

    def authenticate(self, ticket: str) -> Identity:
        raise AuthError("webhook auth decides after the upgrade")
