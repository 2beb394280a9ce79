"""Liveness: a server ping every `ping_interval_ms`, and idle sessions closed.

One timer for the whole process instead of one per session, walking the sessions in
batches so the loop keeps serving frames during a sweep. Each tick, a session that
sent any frame (a pong included) since the last tick is marked fresh; one that stayed
silent for `idle_timeout_ms` gets `sys.error` TIMEOUT and close 4002. Half-open
sockets (a client that vanished) never answer the pings, so they are reclaimed here.
"""
import asyncio
import logging

from ..core import codes
from ..core.session import OPEN
from . import gcfreeze
from .logs import about

log = logging.getLogger("wsprism.liveness")


BATCH = 500      # sessions per loop turn: a sweep never holds the loop for long


async def run(gateway) -> None:
    while True:
        g = gateway.config.gateway
        interval = g.ping_interval_ms / 1000.0
        await asyncio.sleep(interval)
        idle_ticks = max(1, -(-g.idle_timeout_ms // g.ping_interval_ms))
        sessions = [s for t in list(gateway.tenants.values()) for s in t.sessions.all_sessions()]
        for start in range(0, len(sessions), BATCH):
            for session in sessions[start:start + BATCH]:
                tick(session, idle_ticks)
            await asyncio.sleep(0)      # let frames of other sessions through between batches
        gcfreeze.after_sweep()


def tick(session, idle_ticks: int) -> None:
    if session.state != OPEN:
        return
    if session.seen:
        session.seen = False
        session.idle_ticks = 0
    else:
        session.idle_ticks += 1
        if session.idle_ticks >= idle_ticks:
            session.refuse(codes.TIMEOUT, "idle timeout", codes.CLOSE_IDLE)
            return
    try:
        session.transport.send_ping()
    except Exception:  # transport already gone: on_ws_disconnected will clean up
        log.debug("ping failed", extra=about(session))
