"""A tenant's authentication after the upgrade: ticket expiry, `sys:refresh`, and the
webhook mode's deferred flows (SPEC 1 and 10).

One `SessionAuth` per tenant (`tenant.auth`), kept across reloads (a reload hands it the
new authenticator). The other auth modes decide before the upgrade (the router calls
`authenticator.authenticate`); `auth.mode: webhook` cannot (picows' upgrade hook is
synchronous), so its sessions wait here, PENDING, for the backend's answer:

- connect: `start(session)` asks the auth webhook, then the lifecycle admits the session
  (`authed`) or it is refused (AUTH_FAILED, close 4007). Until then frames it sends are
  dropped; any failure closes it (1011), so none stays PENDING.
- refresh: `refresh(session, ticket, env)` answers `refreshed` or AUTH_FAILED, at once or,
  for webhook auth, once the backend has answered (one refresh at a time per session:
  a second one meanwhile is RESOURCE_EXHAUSTED, so no session can tie up the backend's
  connection pool, and answers cannot cross). The session keeps working meanwhile.
- expiry: a session whose ticket carries `exp` is closed 4001 when it passes (plus the
  authenticator's leeway), unless a refresh moved it.
"""
import asyncio
import logging
import time

import msgspec

from .auth import AuthError
from .auth.webhook import WebhookRefused
from .core import codes
from .core.dispatcher import DEFERRED, ServiceError
from .core.envelope import FLAG_ACK_REQUESTED, encode_ack, encode_sys
from .core.session import OPEN, PENDING, about

log = logging.getLogger("wsprism.auth")


class SessionAuth:
    __slots__ = ("tenant_id", "authenticator", "http", "lifecycle", "outcomes")

    def __init__(self, tenant_id: str, authenticator, http, lifecycle) -> None:
        self.tenant_id = tenant_id
        self.authenticator = authenticator
        self.http = http                  # backend/http.py HttpClient (webhook calls)
        self.lifecycle = lifecycle        # lifecycle.py Lifecycle (admits, accepts)
        self.outcomes: dict[str, int] = {}   # auth webhook calls by outcome (metrics)

    @property
    def deferred(self) -> bool:
        return self.authenticator.deferred

    # -- expiry ----------------------------------------------------------------------------
    def set_expiry(self, session, exp: float | None) -> None:
        if session.exp_handle is not None:
            session.exp_handle.cancel()
            session.exp_handle = None
        session.ticket_exp = exp
        if exp is not None:
            delay = max(0.0, exp + self.authenticator.leeway - time.time())
            session.exp_handle = asyncio.get_running_loop().call_later(delay, self._expire, session)

    @staticmethod
    def _expire(session) -> None:
        session.exp_handle = None
        session.close(codes.CLOSE_AUTH_EXPIRED, "auth expired")

    # -- refresh -----------------------------------------------------------------------------
    def refresh(self, session, ticket: str, env):
        """`sys:refresh`: None when answered at once, DEFERRED when the webhook will."""
        auth = self.authenticator
        if auth.deferred:
            if session.refreshing:
                raise ServiceError(codes.RESOURCE_EXHAUSTED, "a refresh is already under way")
            session.refreshing = True
            self.http.spawn(self._deferred_refresh(session, auth, ticket, env))
            return DEFERRED
        try:
            ident = auth.authenticate(ticket)
        except AuthError as exc:
            raise ServiceError(codes.AUTH_FAILED, str(exc)) from None
        self.confirm_refresh(session, ident)
        return None

    def confirm_refresh(self, session, ident) -> None:
        """Take a checked new ticket (either auth path): same user, new expiry, `refreshed`."""
        if ident.user != session.user:
            raise ServiceError(codes.AUTH_FAILED, "token is for another user")
        self.set_expiry(session, ident.exp)
        session.send(encode_sys("refreshed", data={"exp": None if ident.exp is None else int(ident.exp)}))

    async def _deferred_refresh(self, session, auth, ticket: str, env) -> None:
        try:
            ident = await self._ask(auth, session, ticket)
            if session.state != OPEN:
                return
            try:
                if ident is None:
                    raise ServiceError(codes.AUTH_FAILED, "token refused")
                self.confirm_refresh(session, ident)
            except ServiceError as exc:
                session.tenant.stats.service_errors_ext += 1
                session.send_error(exc.code, exc.msg, env.seq)
                return
            if env.flags & FLAG_ACK_REQUESTED and env.seq is not msgspec.UNSET:
                session.send(encode_ack(env.seq))           # after the answer, as for any service
        finally:
            session.refreshing = False

    # -- connect (webhook auth) -----------------------------------------------------------------
    def start(self, session) -> None:
        """Ask the auth webhook for a PENDING session; admit or refuse it when it answers."""
        self.http.spawn(self._deferred_auth(session, self.authenticator))

    async def _deferred_auth(self, session, auth) -> None:
        try:
            await self._deferred_auth_steps(session, auth)
        except Exception:               # a bug must not leave a session PENDING forever
            log.exception('tenant "%s": auth webhook handling failed', self.tenant_id,
                          extra=about(session, code=codes.INTERNAL))
            if session.state == PENDING:
                session.refuse(codes.INTERNAL, "internal error", codes.CLOSE_INTERNAL)

    async def _deferred_auth_steps(self, session, auth) -> None:
        ticket, session.pending_ticket = session.pending_ticket, None
        ident = await self._ask(auth, session, ticket)
        if session.state != PENDING:
            return                            # the client left while we waited
        if ident is None:
            session.refuse(codes.AUTH_FAILED, "authentication refused", codes.CLOSE_AUTH_REFUSED)
            return
        if not self.lifecycle.accepts(session.tenant):
            session.close(codes.CLOSE_DRAINING, "server draining")
            return
        session.user = ident.user
        session.ticket_exp = ident.exp
        self.lifecycle.admit(session)

    async def _ask(self, auth, session, ticket: str):
        """The backend's Identity for `ticket`, or None when it refused (counted either way)."""
        try:
            ident = await auth.check(self.http, self.tenant_id, ticket, session.ip, session.sid)
        except WebhookRefused as exc:
            self._count(exc.outcome)
            log.debug('tenant "%s": auth webhook refused a ticket: %s', self.tenant_id, exc,
                      extra=about(session, code=codes.AUTH_FAILED))
            return None
        self._count("ok")
        return ident

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
