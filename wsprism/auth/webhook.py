"""`auth.mode: webhook` — the backend decides, right after the upgrade (SPEC 10).

picows' upgrade hook is synchronous, so this authenticator is `deferred`: the router
accepts the upgrade, and the gateway (`start_deferred_auth`, `refresh_deferred`) awaits
`check`. The backend gets `{"tenant","ticket","ip","sid"}` (`sid` null when the client
gave none) and accepts with any 2xx whose body is `{"user": "<id>", "exp": <unix s>?}`;
every other answer (another status, another body, an `exp` already past), a timeout or
an unreachable backend refuses.
"""
import asyncio
import time
from typing import Annotated

import msgspec

from ..backend.http import BackendFailure
from .base import AuthError, Authenticator, Identity

MAX_ANSWER_BYTES = 64 * 1024


class WebhookRefused(AuthError):
    """Refused by (or for lack of) the backend. `outcome` is a metric label."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


class AuthRequest(msgspec.Struct):
    tenant: str
    ticket: str
    ip: str
    sid: str | None


class AuthAnswer(msgspec.Struct):          # other fields (roles, ...) are ignored
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    exp: Annotated[float, msgspec.Meta(gt=0, le=1e11)] | None = None   # unix seconds


_encode = msgspec.json.Encoder().encode
_answer = msgspec.json.Decoder(AuthAnswer)


class WebhookAuthenticator(Authenticator):
    mode = "webhook"
    deferred = True

    def __init__(self, cfg) -> None:
        self.url = cfg.url
        self.timeout = cfg.timeout_ms / 1000.0

    def authenticate(self, ticket: str) -> Identity:
        raise AuthError("webhook auth decides after the upgrade")

    async def check(self, http, tenant: str, ticket: str, ip: str, sid: str | None) -> Identity:
        """Ask the backend; an Identity, or WebhookRefused (never the ticket in its text)."""
        body = _encode(AuthRequest(tenant, ticket, ip, sid))
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            status, raw = await http.post_json(self.url, body, deadline, MAX_ANSWER_BYTES)
        except BackendFailure as exc:
            raise WebhookRefused(exc.outcome, exc.detail) from None
        if not 200 <= status < 300:
            raise WebhookRefused("refused", f"auth webhook answered HTTP {status}")
        try:
            answer = _answer.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise WebhookRefused("bad_answer", f"invalid auth webhook answer: {str(exc)[:200]}") from None
        if answer.exp is not None and answer.exp <= time.time():
            raise WebhookRefused("refused", "auth webhook answered an exp in the past")
        return Identity(answer.user, answer.exp)
