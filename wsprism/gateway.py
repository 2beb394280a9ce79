"""The gateway's process-wide state and the life of a session (composition root).

Builds one `TenantRuntime` per configured tenant, admits sessions after the upgrade
(same-sid replacement, per-user limits), detaches them, and runs drain and reload.
"""
import asyncio
import logging
import time

import msgspec

from . import _fast
from .auth import make_authenticator
from .auth.webhook import WebhookRefused
from .backend.http import HttpClient
from .backend.metrics import backend_metrics
from .core import codes
from .core.envelope import FLAG_ACK_REQUESTED, encode_ack, encode_error, encode_sys
from .core.session import CLOSED, OPEN, PENDING, Session
from .core.tenant import TenantRuntime
from .ops.logs import about
from .ops.metrics import TenantStats, make_registry
from .policy.defender import Defender
from .policy.ext_lane import on_envelope
from .policy.ratelimit import new_session_bucket
from .policy.sessions import over_limit
from .services.base import ServiceError
from .services.sys import confirm_refresh
from .transport.handshake import Router

log = logging.getLogger("wsprism.gateway")

# The framer (hot path) hands every checked text message to the Ext Lane.
_fast.install(on_envelope, encode_error)

KICK_REPLACED = encode_sys("kicked", data={"reason": "replaced"})
KICK_EXCEEDED = encode_sys("kicked", data={"reason": "max_sessions_exceeded"})


def restart_changes(old, new):
    """The settings that changed and that only a restart applies."""
    og, ng = old.gateway, new.gateway
    pairs = [
        ("gateway.listen", og.listen, ng.listen),
        ("gateway.workers", og.workers, ng.workers),
        ("gateway.tls", og.tls, ng.tls),
        ("gateway.api.listen", og.api and og.api.listen, ng.api and ng.api.listen),
        ("gateway.api.tls", og.api and og.api.tls, ng.api and ng.api.tls),
        ("broker.url", old.broker and old.broker.url, new.broker and new.broker.url),
    ]
    return [key for key, a, b in pairs if a != b]


class Gateway:
    def __init__(self, config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.tenants: dict[str, TenantRuntime] = {}
        for tcfg in config.tenants:
            self.tenants[tcfg.id] = TenantRuntime(tcfg, config.gateway)   # may raise AuthSetupError
        self.unknown_stats = TenantStats()
        self.draining = False
        self.stopped: asyncio.Event | None = None
        g = config.gateway
        self.defender = Defender(g.handshake_limit, g.trusted_proxies)
        self.metrics_path = g.metrics.path.encode() if g.metrics.enabled else None
        self.metrics_registry = make_registry(self)
        self.high_water = g.outbound_high_water_bytes
        self.router = Router(self)
        # one write per connection per loop turn; the outbound memory budget (SPEC 5)
        self.corker = _fast.Corker(None, g.outbound_max, g.outbound_total_max_bytes)
        self.http = HttpClient()            # the one pooled client for webhooks (backend/http.py)
        self.auth_outcomes: dict[tuple[str, str], int] = {}   # (tenant, outcome) of auth webhooks
        self._update_needs_ip()

    def _update_needs_ip(self) -> None:
        self.needs_peer_ip = any(t.authenticator.deferred for t in self.tenants.values())

    # -- sessions ----------------------------------------------------------------------
    def new_session(self, tenant, user, sid, ip, exp, deferred_ticket=None) -> Session:
        """Called by the router once every pre-upgrade check passed."""
        tenant.sessions.reserve()
        conn = Session(self, tenant, user, sid, ip, exp)
        conn.pending_ticket = deferred_ticket     # held until the auth webhook answers
        return conn

    def on_connected(self, session) -> None:
        session.transport.underlying_transport.set_write_buffer_limits(high=self.high_water)
        if session.tenant.authenticator.deferred:
            self.start_deferred_auth(session)
            return
        self.admit(session)

    def admit(self, session) -> None:
        """The user is known: apply the session policy, then greet with `authed`."""
        tenant = session.tenant
        reg = tenant.sessions
        if session.sid is None:
            session.sid = session.trace_id
        old = reg.find(session.user, session.sid)
        if old is not None:
            old.send(KICK_REPLACED)
            old.close(codes.CLOSE_KICKED, "replaced")
        denied, kick = over_limit(reg, session.user, tenant.policy)
        if denied:
            tenant.stats.handshake_rejections["too_many_sessions"] += 1
            session.state = OPEN          # so the error frame goes out
            session.send_error(codes.TOO_MANY_SESSIONS, "user is at max_sessions_per_user")
            session.close(codes.CLOSE_TOO_MANY_SESSIONS, "too many sessions")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("session refused: user at max_sessions_per_user",
                          extra=about(session, code=codes.TOO_MANY_SESSIONS))
            return
        for victim in kick:
            victim.send(KICK_EXCEEDED)
            victim.close(codes.CLOSE_KICKED, "max sessions exceeded")
        reg.add(session)
        session.registered = True
        session.state = OPEN
        session.bucket = new_session_bucket(tenant.policy)
        self.set_expiry(session, session.ticket_exp)
        session.send(encode_sys(
            "authed",
            data={"tenant": tenant.id, "user": session.user, "sid": session.sid},
            trace_id=session.trace_id,
        ))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session opened", extra=about(session))

    def set_expiry(self, session, exp: float | None) -> None:
        if session.exp_handle is not None:
            session.exp_handle.cancel()
            session.exp_handle = None
        session.ticket_exp = exp
        if exp is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, exp + session.tenant.authenticator.leeway - time.time())
            session.exp_handle = loop.call_later(delay, self._expire, session)

    def _expire(self, session) -> None:
        session.exp_handle = None
        session.close(codes.CLOSE_AUTH_EXPIRED, "auth expired")

    def detach(self, session) -> None:
        """Leave rooms and registry (idempotent): called on close, kick and disconnect."""
        if session.registered:
            session.registered = False
            tenant = session.tenant
            tenant.sessions.remove(session)
            tenant.rooms.leave_all(session)
        if session.exp_handle is not None:
            session.exp_handle.cancel()
            session.exp_handle = None
        if session.slow_handle is not None:
            session.slow_handle.cancel()
            session.slow_handle = None

    def on_disconnected(self, session) -> None:
        if session.state == CLOSED:
            return
        self.detach(session)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session closed", extra=about(session))
        session.state = CLOSED
        session.tenant.sessions.release()
        if session.close_handle is not None:
            session.close_handle.cancel()
            session.close_handle = None
        self._maybe_stopped()

    # -- deferred (webhook) auth ------------------------------------------------------
    def start_deferred_auth(self, session) -> None:
        """Ask the tenant's auth webhook, then admit (`authed`) or refuse (AUTH_FAILED,
        close 4007). Until then the session is PENDING: frames it sends are dropped."""
        self.http.spawn(self._deferred_auth(session, session.tenant.authenticator))

    async def _deferred_auth(self, session, auth) -> None:
        try:
            await self._deferred_auth_steps(session, auth)
        except Exception:               # a bug must not leave a session PENDING forever
            log.exception('tenant "%s": auth webhook handling failed', session.tenant.id,
                          extra=about(session, code=codes.INTERNAL))
            if session.state == PENDING:
                session.state = OPEN
                session.send_error(codes.INTERNAL, "internal error")
                session.close(codes.CLOSE_INTERNAL, "internal error")

    async def _deferred_auth_steps(self, session, auth) -> None:
        tenant = session.tenant
        ticket, session.pending_ticket = session.pending_ticket, None
        try:
            ident = await auth.check(self.http, tenant.id, ticket, session.ip, session.sid)
        except WebhookRefused as exc:
            self._count_auth(tenant.id, exc.outcome)
            log.debug('tenant "%s": auth webhook refused a session: %s', tenant.id, exc,
                      extra=about(session, code=codes.AUTH_FAILED))
            if session.state == PENDING:
                session.state = OPEN          # so the error frame goes out
                session.send_error(codes.AUTH_FAILED, "authentication refused")
                session.close(codes.CLOSE_AUTH_REFUSED, "auth refused")
            return
        self._count_auth(tenant.id, "ok")
        if session.state != PENDING:
            return                            # the client left while we waited
        if self.draining or self.tenants.get(tenant.id) is not tenant:
            session.close(codes.CLOSE_DRAINING, "server draining")
            return
        session.user = ident.user
        session.ticket_exp = ident.exp
        self.admit(session)

    def refresh_deferred(self, session, ticket: str, env) -> None:
        """`sys:refresh` on a webhook tenant: the answer (`refreshed` or AUTH_FAILED)
        arrives once the webhook has answered; the session keeps working meanwhile. One
        refresh at a time per session: a second one meanwhile is RESOURCE_EXHAUSTED (no
        session can tie up the backend's connection pool, and answers cannot cross)."""
        if session.refreshing:
            raise ServiceError(codes.RESOURCE_EXHAUSTED, "a refresh is already under way")
        session.refreshing = True
        self.http.spawn(self._deferred_refresh(session, session.tenant.authenticator, ticket, env))

    async def _deferred_refresh(self, session, auth, ticket: str, env) -> None:
        try:
            await self._deferred_refresh_steps(session, auth, ticket, env)
        finally:
            session.refreshing = False

    async def _deferred_refresh_steps(self, session, auth, ticket: str, env) -> None:
        tenant = session.tenant
        try:
            ident = await auth.check(self.http, tenant.id, ticket, session.ip, session.sid)
        except WebhookRefused as exc:
            self._count_auth(tenant.id, exc.outcome)
            ident = None
        else:
            self._count_auth(tenant.id, "ok")
        if session.state != OPEN:
            return
        try:
            if ident is None:
                raise ServiceError(codes.AUTH_FAILED, "token refused")
            confirm_refresh(session, ident)
        except ServiceError as exc:
            tenant.stats.service_errors_ext += 1
            session.send_error(exc.code, exc.msg, env.seq)
            return
        if env.flags & FLAG_ACK_REQUESTED and env.seq is not msgspec.UNSET:
            session.send(encode_ack(env.seq))           # after the answer, as for any service

    def _count_auth(self, tenant_id: str, outcome: str) -> None:
        key = (tenant_id, outcome)
        self.auth_outcomes[key] = self.auth_outcomes.get(key, 0) + 1

    # -- metrics beyond the per-tenant counters ----------------------------------------
    def extra_metrics(self):
        yield from backend_metrics(self)

    # -- drain -------------------------------------------------------------------------
    def session_count(self) -> int:
        return sum(t.sessions.count for t in self.tenants.values())

    def _maybe_stopped(self) -> None:
        if self.draining and self.stopped is not None and self.session_count() == 0:
            self.stopped.set()

    async def drain(self) -> None:
        """Refuse new upgrades, close every session with 1001 spread over the first half
        of drain_grace_ms, and return when all are gone or the grace is over."""
        if self.draining:
            return
        self.draining = True
        for tenant in self.tenants.values():
            tenant.rooms.presence_events = False    # everyone goes: no user_left storm (N²)
        grace = self.config.gateway.drain_grace_ms / 1000.0
        sessions = [s for t in self.tenants.values() for s in t.sessions.all_sessions()]
        log.info("draining %d sessions over %.1fs", len(sessions), grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if sessions:
            spread = grace / 2
            batches = max(1, min(len(sessions), 20))
            per = -(-len(sessions) // batches)
            for i in range(batches):
                for s in sessions[i * per:(i + 1) * per]:
                    s.close(codes.CLOSE_DRAINING, "server draining")
                if spread and i + 1 < batches:
                    await asyncio.sleep(spread / batches)
        # sessions still waiting for their auth webhook close when it answers (1001)
        remaining = self.session_count()
        if remaining:
            try:
                await asyncio.wait_for(self.stopped.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.warning("drain grace over with %d sessions left", self.session_count())

    # -- reload ------------------------------------------------------------------------
    def reload(self, new_config) -> None:
        """Apply a new config: tenants' limits and policies change for the next check."""
        new_gw = new_config.gateway
        for key in restart_changes(self.config, new_config):
            log.warning("%s changed: needs a restart to take effect", key)
        # everything that can fail (auth secrets, key files) first, so nothing is half-applied
        for tcfg in new_config.tenants:
            make_authenticator(tcfg.auth)
        staged = {}
        for tcfg in new_config.tenants:
            current = self.tenants.get(tcfg.id)
            if current is None:
                staged[tcfg.id] = TenantRuntime(tcfg, new_gw)
        for tcfg in new_config.tenants:
            current = self.tenants.get(tcfg.id)
            if current is not None:
                current.apply(tcfg, new_gw)
        removed = [tid for tid in self.tenants if tid not in {t.id for t in new_config.tenants}]
        self.tenants.update(staged)
        for tid in removed:
            tenant = self.tenants.pop(tid)
            tenant.rooms.presence_events = False
            for s in tenant.sessions.all_sessions():
                s.close(codes.CLOSE_DRAINING, "tenant removed")
        # listen/workers/tls keep their running values until a restart
        self.config = new_config
        self.defender.reconfigure(new_gw.handshake_limit, new_gw.trusted_proxies)
        self.metrics_path = new_gw.metrics.path.encode() if new_gw.metrics.enabled else None
        self.corker.configure(new_gw.outbound_max, new_gw.outbound_total_max_bytes)
        if self.high_water != new_gw.outbound_high_water_bytes:
            self.high_water = new_gw.outbound_high_water_bytes
            for tenant in self.tenants.values():
                for session in tenant.sessions.all_sessions():
                    session.transport.underlying_transport.set_write_buffer_limits(high=self.high_water)
        self._update_needs_ip()
        log.info("configuration reloaded: %d tenants", len(self.tenants))

