"""The life of a session after the upgrade: the `host` every session's listener is
built with (SPEC 1, 2, 5 and 6).

    picows              listener (wsprism/_fast framer)     host (here)
    upgrade done   ->   on_ws_connected              ->     on_connected: admit, or ask
                                                            the auth webhook first
                                                            (session_auth.py), then admit
    close / kick   ->   close(code)                  ->     detach: leave rooms, registry
    socket gone    ->   on_ws_disconnected           ->     on_disconnected: release the
                                                            tenant's count, tell the gateway
    buffer > mark  ->   pause_writing                ->     on_paused: slow-consumer timer
    buffer drained ->   resume_writing               ->     on_resumed: timer cancelled

Admission (`admit`): the tenant replaces a live session with the same user and sid and
applies the per-user session policy (core/tenant.py `Tenant.admit`); a denied session
is refused (TOO_MANY_SESSIONS, close 4004) and gets no `authed`. An admitted one is
OPEN, gets its rate-limit bucket and expiry timer, and is greeted with `authed`.
"""
import asyncio
import logging
from collections.abc import Callable

from ._fast import Counter
from .core import codes
from .core.envelope import encode_authed
from .core.session import CLOSED, OPEN, about
from .policy.ratelimit import new_session_bucket

log = logging.getLogger("wsprism.gateway")


class Lifecycle:
    __slots__ = ("corker", "tenants", "high_water", "draining", "_on_gone")

    def __init__(self, corker, tenants: dict, high_water: int, on_gone: Callable[[], None]) -> None:
        self.corker = corker              # _fast Corker: one write per connection per loop turn
        self.tenants = tenants            # the gateway's live tenants, by id
        self.high_water = high_water      # gateway.outbound_high_water_bytes
        self.draining = False
        self._on_gone = on_gone           # called after each session is gone (drain's wait)

    def accepts(self, tenant) -> bool:
        """Whether a session of `tenant` may still be admitted (not draining, tenant kept)."""
        return not self.draining and self.tenants.get(tenant.id) is tenant

    # -- the listener's calls ----------------------------------------------------------------
    def on_connected(self, session) -> None:
        session.transport.underlying_transport.set_write_buffer_limits(high=self.high_water)
        auth = session.tenant.auth
        if auth.deferred:
            auth.start(session)
            return
        self.admit(session)

    def admit(self, session, broker: bool = True) -> None:
        """The user is known: apply the session policy, then greet with `authed`. With a
        broker up, Redis decides (the session stays PENDING until the cluster opens or
        refuses it); `broker=False`: on this node's own counts (the broker failed meanwhile)."""
        tenant = session.tenant
        if session.sid is None:
            session.sid = session.trace_id
        admitted = tenant.admit(session, broker)
        if admitted is None:
            return
        if not admitted:
            session.refuse(codes.TOO_MANY_SESSIONS, "user is at max_sessions_per_user",
                           codes.CLOSE_TOO_MANY_SESSIONS)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("session refused: user at max_sessions_per_user",
                          extra=about(session, code=codes.TOO_MANY_SESSIONS))
            return
        self.open(session)

    def open(self, session) -> None:
        """An admitted, registered session: OPEN, its bucket and expiry, then `authed`."""
        tenant = session.tenant
        session.state = OPEN
        session.bucket = new_session_bucket(tenant.policy)
        tenant.auth.set_expiry(session, session.ticket_exp)
        session.send(encode_authed(tenant.id, session.user, session.sid, session.trace_id))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session opened", extra=about(session))

    def detach(self, session) -> None:
        """Leave rooms and registry (idempotent): called on close, kick and disconnect."""
        session.tenant.remove(session)
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
        self._on_gone()

    def on_paused(self, session) -> None:
        """Over the high-water mark: closed 4005 if still so after writer_send_timeout_ms."""
        if session.slow_handle is None and session.state <= OPEN:
            session.slow_handle = asyncio.get_running_loop().call_later(
                session.tenant.writer_send_timeout, self._slow_consumer, session)

    def on_resumed(self, session) -> None:
        if session.slow_handle is not None:
            session.slow_handle.cancel()
            session.slow_handle = None

    @staticmethod
    def _slow_consumer(session) -> None:
        session.slow_handle = None
        if session.paused and session.state <= OPEN:
            session.lane.bump(Counter.C_SLOW_SEND_TIMEOUT)
            session.close(codes.CLOSE_SLOW_CONSUMER, "slow consumer")

    # -- the whole process ----------------------------------------------------------------
    def set_high_water(self, high_water: int) -> None:
        """A reload moved `gateway.outbound_high_water_bytes`: live sessions take it too."""
        if high_water == self.high_water:
            return
        self.high_water = high_water
        for tenant in self.tenants.values():
            for session in tenant.sessions.all_sessions():
                session.transport.underlying_transport.set_write_buffer_limits(high=high_water)
