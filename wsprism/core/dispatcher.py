"""Routes an allowed Ext Lane envelope to its service and acknowledges it.

The dispatcher knows no service by name: it is handed a `HandlerTable`, built when the
tenant is assembled (wsprism/assembly.py), that maps `svc` (and, for the built-ins,
`type`) to a handler. Built-ins (room, chat, sys), webhook forwarders and Python
services are all registered there the same way.

A handler is `handler(session, env) -> None | DEFERRED`. It raises `ServiceError` for
an error the client should see (a `sys.error` with that code; the session stays). A
handler that answers later (an awaited backend or service call) returns `DEFERRED`
and sends its own reply and ack; otherwise the dispatcher acks (`ACK_REQUESTED` with a
`seq`) after the handler's own replies.

A built-in whose answer needs the broker (a join that Redis must admit for every node,
an exact presence) uses `answer_later`: the session's later messages are *held* (kept
in order in `session.held`, at most HELD_MAX) until the answer is sent, so a chat sent
right after a join is handled once the join is done, and replies keep the order of the
requests: the Ext Lane's allowlist refusal of a message that arrives meanwhile waits in
the same queue (`error_in_turn`). A session that closes meanwhile (its own close, or a
fatal frame) gets no further answer. Webhook forwarders and Python services keep their
own per-session order and hold nothing.
"""
import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter

import msgspec

from .._fast import Counter, ExtFlag
from . import codes
from .envelope import encode_ack
from .session import OPEN, about

log = logging.getLogger("wsprism.dispatch")

_UNSET = msgspec.UNSET
_ACK = int(ExtFlag.EXT_ACK_REQUESTED)
_ALLOW_OK = int(Counter.C_EXT_ALLOW_OK)          # plain ints: an enum member lookup is ~150 ns a message
_DENY_UNKNOWN = int(Counter.C_EXT_DENY_UNKNOWN_SERVICE)


class ServiceError(Exception):
    """Turns into a `sys.error` with this code for the sender; the session stays open.
    A code that is not one of SPEC 3's becomes INTERNAL."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = codes.error_code(code)
        self.msg = msg


# Returned by a handler whose answer comes later: the dispatcher then sends no ack.
DEFERRED = object()

HELD_MAX = 1024         # messages of one session held behind an unanswered join or query
_answering: set = set()  # the tasks of answer_later (asyncio keeps only weak references)

Handler = Callable[..., object]     # handler(session, env) -> None | DEFERRED


class HandlerTable:
    """svc -> handler, built once per tenant assembly (and again on reload)."""

    __slots__ = ("by_type", "any_type")

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, Handler]] = {}   # built-ins: svc -> type -> handler
        self.any_type: dict[str, Handler] = {}             # forwarded/Python: svc -> handler

    def add_types(self, svc: str, handlers: dict[str, Handler]) -> None:
        """A service whose types are fixed: any other type of it is an unknown service."""
        self._free(svc)
        self.by_type[svc] = dict(handlers)

    def add_service(self, svc: str, handler: Handler) -> None:
        """A service that takes every `type` (webhook forwarders, Python services)."""
        self._free(svc)
        self.any_type[svc] = handler

    def _free(self, svc: str) -> None:
        if svc in self.by_type or svc in self.any_type:
            raise ValueError(f"service {svc!r} is registered twice")

    def find(self, svc: str, type_: str) -> Handler | None:
        handlers = self.by_type.get(svc)
        if handlers is not None:
            return handlers.get(type_)
        return self.any_type.get(svc)


class Dispatcher:
    """One tenant's dispatch: the table, and the counters it bumps."""

    __slots__ = ("table", "stats", "lane")

    def __init__(self, table: HandlerTable, stats, lane) -> None:
        self.table = table
        self.stats = stats
        self.lane = lane

    def dispatch(self, session, env) -> None:
        held = session.held
        if held is not None:
            if len(held) >= HELD_MAX:
                session.send_error(codes.RESOURCE_EXHAUSTED, "too many messages waiting for an answer", env.seq)
            else:
                held.append(env)
            return
        handler = self.table.find(env.svc, env.type)
        if handler is None:
            self.lane.bump(_DENY_UNKNOWN)
            session.send_error(codes.NOT_ALLOWED, "unknown service", env.seq)
            return
        self.lane.bump(_ALLOW_OK)
        stats = self.stats
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
        if result is not DEFERRED and env.flags & _ACK and env.seq is not _UNSET:
            session.send(encode_ack(env.seq))


def ack(session, env) -> None:
    """The ack a deferred handler owes, once its answer went out."""
    if env.flags & _ACK and env.seq is not _UNSET:
        session.send(encode_ack(env.seq))


def hold(session) -> None:
    """The session's next messages wait (in order) until `release`."""
    if session.held is None:
        session.held = deque()


def error_in_turn(session, code: str, msg: str, seq) -> None:
    """A `sys.error` for a message refused before dispatch: now, or behind the held
    messages of a session waiting for an answer, so replies keep the requests' order."""
    held = session.held
    if held is not None and len(held) < HELD_MAX:
        held.append((code, msg, seq))
    else:
        session.send_error(code, msg, seq)


def answer_later(session, env, awaitable: Awaitable, reply: Callable, *args) -> object:
    """Hold the session's later messages; once `awaitable` is done, `reply(session, env,
    result, *args)` and the ack (or a `sys.error`, if either raised ServiceError), then
    handle what was held, in order. Returns DEFERRED (for the handler to return)."""
    hold(session)
    task = asyncio.get_running_loop().create_task(_answer(session, env, awaitable, reply, args))
    _answering.add(task)
    task.add_done_callback(_answering.discard)
    return DEFERRED


async def _answer(session, env, awaitable, reply, args) -> None:
    try:
        result = await awaitable
        if session.state == OPEN:
            reply(session, env, result, *args)
            ack(session, env)
    except ServiceError as exc:
        session.tenant.stats.service_errors_ext += 1
        session.send_error(exc.code, exc.msg, env.seq)
    except Exception:
        log.exception("service %s:%s failed", env.svc, env.type,
                      extra=about(session, svc=env.svc, room=env.room, code=codes.INTERNAL))
        session.tenant.stats.service_errors_ext += 1
        session.send_error(codes.INTERNAL, "internal error", env.seq)
    finally:
        release(session)


def release(session) -> None:
    """Handle the messages held for `session`, in order, until one is held again."""
    held = session.held
    session.held = None
    if not held or session.state != OPEN:
        return                              # a session that left meanwhile: dropped
    dispatch = session.tenant.dispatcher.dispatch
    while held:
        item = held.popleft()
        if type(item) is tuple:             # a refusal kept in its turn (error_in_turn)
            session.send_error(*item)
            continue
        dispatch(session, item)
        if session.held is not None:        # held again (another join): the rest waits too
            session.held.extend(held)
            return
