"""Routes an allowed Ext Lane envelope to its service and acknowledges it.

Built-in services (room, chat, sys) are looked up by `svc` then `type`; any other `svc`
listed in the tenant's `services` goes to its backend forwarder. The ack
(`ACK_REQUESTED` with a `seq`) follows the service's own replies.
"""
import logging
from time import perf_counter

import msgspec

from .._fast import counters as c
from ..ops.logs import about
from ..services import chat, room
from ..services import sys as sys_service
from ..services.base import DEFERRED, ServiceError
from . import codes
from .envelope import FLAG_ACK_REQUESTED, encode_ack

log = logging.getLogger("wsprism.dispatch")

BUILTIN: dict[str, dict] = {"room": room.HANDLERS, "chat": chat.HANDLERS, "sys": sys_service.HANDLERS}
_EMPTY: dict = {}
_UNSET = msgspec.UNSET


def dispatch(session, env, payload: bytes) -> None:
    tenant = session.tenant
    stats = tenant.stats
    handlers = BUILTIN.get(env.svc)
    handler = (handlers or _EMPTY).get(env.type)
    if handler is None:
        forwarder = tenant.forwarders.get(env.svc) if handlers is None else None
        if forwarder is None:
            session.lane.bump(c.C_EXT_UNKNOWN_SERVICE)
            session.send_error(codes.NOT_ALLOWED, "unknown service", env.seq)
            return
        session.lane.bump(c.C_EXT_ALLOW)
        forwarder.forward(session, env, payload)
        return
    session.lane.bump(c.C_EXT_ALLOW)
    t0 = perf_counter()
    try:
        result = handler(session, env)
    except ServiceError as exc:
        stats.service_errors_ext += 1
        session.send_error(exc.code, exc.msg, env.seq)
        return
    except Exception:
        log.exception("service %s:%s failed", env.svc, env.type,
                      extra=about(session, svc=env.svc, room=env.room, code=codes.INTERNAL))
        stats.service_errors_ext += 1
        session.send_error(codes.INTERNAL, "internal error", env.seq)
        return
    finally:
        stats.dispatch_ext.observe(perf_counter() - t0)
    if result is not DEFERRED and env.flags & FLAG_ACK_REQUESTED and env.seq is not _UNSET:
        session.send(encode_ack(env.seq))
