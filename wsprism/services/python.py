"""In-process Python services (SPEC 15): user `Service` classes (wsprism/service.py)
hosted next to the sockets.

`load_service_class` imports `module:attribute` at start (errors name the config path);
one `PythonService` per tenant and service holds the instance and is registered, when
the tenant is assembled, in the tenant's tables like every other service:

- Ext Lane: `handle` in the dispatcher's handler table (svc = the config key);
- Hot Lane: `on_hot_frame` in the lane's Hot Lane table at `hot_svc_id`, called by the
  framer after the allowlist and active-room checks;
- membership: the tenant's listeners (`joined`, `left`, `disconnected`) feed the hooks.

Order and time. Per session, a service's `on_message` calls and hooks run one at a time
in arrival order (services/queues.py); a call still running `timeout_ms` after its
message arrived (time queued included) is cancelled and answers TIMEOUT; at most
`max_inflight_per_session` messages wait per session (RESOURCE_EXHAUSTED beyond).
A plain-`def` `on_message` runs inline when nothing is queued for the session: no task.
`on_hot` is called inline for every frame.

Errors. `ServiceError(code, msg)` becomes that `sys.error` (codes outside SPEC 3's are
INTERNAL); any other exception is INTERNAL for the client, counted, and logged at most
once per LOG_EVERY_S per service (with its traceback, and how many were not logged).
The session stays open either way.
"""
import asyncio
import importlib
import inspect
import logging
from collections import deque
from time import perf_counter
from typing import Any

import msgspec

from ..config import ConfigError
from ..core import codes
from ..core.dispatcher import DEFERRED, ServiceError
from ..core.envelope import FLAG_ACK_REQUESTED, encode_ack, encode_message, encode_reply, reply_head
from ..core.session import OPEN
from ..core.stats import Histogram
from ..service import Service
from .eager import EagerStarter
from .queues import SessionQueues, TaskSet
from .throttle import Throttle

log = logging.getLogger("wsprism.services")

DEFAULT_TIMEOUT_MS = 5000
CALL_KINDS = ("message", "hot", "join", "leave", "disconnect", "timer")
OUTCOMES = ("ok", "error", "exception", "timeout", "rejected")
CALL_BUCKETS = (
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

_UNSET = msgspec.UNSET
_decode = msgspec.json.decode
_MSG, _JOIN, _LEAVE, _GONE = "message", "join", "leave", "disconnect"


# -- loading --------------------------------------------------------------------------------

def load_service_class(path: str, spec: str) -> type[Service]:
    """The `Service` subclass named by `module:attribute`; ConfigError at `path` if the
    module does not import or the attribute is missing or not a Service subclass."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:        # SyntaxError, ImportError, anything the module raises
        raise ConfigError(path, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(path, f"module {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Service)):
        raise ConfigError(path, f"{spec!r} is not a wsprism.service.Service subclass")
    return obj


def service_class(spath: str, cfg) -> type[Service]:
    """The class a `python` service entry at `spath` names, checked against its entry."""
    cls = load_service_class(f"{spath}.python", cfg.python)
    if cfg.hot_svc_id is not None and not overrides(cls, "on_hot"):
        raise ConfigError(f"{spath}.hot_svc_id", f"{cls.__qualname__} has no on_hot for Hot Lane frames")
    return cls


def overrides(cls: type, hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Service, hook)


# -- what the hooks receive -------------------------------------------------------------------

class Message(msgspec.Struct):
    """An Ext Lane message for a service: `type`, `room` and `seq` (None when absent),
    `data` (decoded JSON; None when absent)."""

    type: str
    room: str | None
    seq: int | None
    data: Any


def _msg_of(env) -> Message:
    data = None
    if env.data is not _UNSET:
        try:
            data = _decode(env.data)
        except RecursionError:
            raise ServiceError(codes.BAD_REQUEST, "data nested too deeply") from None
    return Message(env.type, None if env.room is _UNSET else env.room,
                   None if env.seq is _UNSET else env.seq, data)


class Context:
    """The calling session, as a service sees it (`ctx`). One per session, shared by
    the tenant's services; it stays usable after the session is gone (sends do nothing)."""

    __slots__ = ("_session", "gw")

    def __init__(self, session, gw) -> None:
        self._session = session
        self.gw = gw                # the tenant's ServiceGateway

    @property
    def tenant(self) -> str:
        return self._session.tenant.id

    @property
    def user(self) -> str:
        return self._session.user

    @property
    def sid(self) -> str:
        return self._session.sid

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms the session is in, least recently joined first."""
        return tuple(self._session.rooms)

    @property
    def active_room(self) -> str | None:
        return self._session.active_room

    @property
    def open(self) -> bool:
        return self._session.state == OPEN

    def send(self, svc: str, type_: str, data: Any = _UNSET) -> None:
        """A reliable message to this session: `{"v":1,"svc":svc,"type":type_,"data"?:data}`."""
        self._session.send(encode_message(svc, type_, None, data))

    def send_hot(self, frame: bytes) -> bool:
        """A lossy binary frame (a whole Hot Lane message) to this session; False if it
        was dropped because the session is over its high-water mark."""
        return self._session.send_lossy(frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the session: 1000, or an application code 4000-4999."""
        if code != 1000 and not 4000 <= code <= 4999:
            raise ValueError("close code must be 1000 or 4000-4999")
        self._session.close(code, reason)

    def __repr__(self) -> str:
        s = self._session
        return f"<Context tenant={s.tenant.id} user={s.user} sid={s.sid}>"


def context_of(session, gw) -> Context:
    ctx = session.ctx
    if ctx is None:
        ctx = session.ctx = Context(session, gw)
    return ctx


class ServiceGateway:
    """A tenant's gateway, as its services see it (`gw`, `ctx.gw`): the server API's
    operations (SPEC 10) plus timers. Room operations go through the tenant's one
    publish path (core/tenant.py), so they reach every node once a broker is there."""

    __slots__ = ("_tenant", "_timers", "_tasks")

    def __init__(self, tenant) -> None:
        self._tenant = tenant
        self._timers: set[Timer] = set()
        self._tasks = TaskSet()

    @property
    def tenant(self) -> str:
        return self._tenant.id

    def publish(self, room: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """Reliable, to every member of `room` (on every node with a broker); returns how
        many sessions it reached on this node."""
        return self._tenant.publish(room, svc, type_, data)

    def publish_hot(self, room: str, frame: bytes) -> int:
        """Lossy: one binary frame (a whole Hot Lane message: put your hot_svc_id, an
        opcode and flags 0 in its first 3 bytes) to every member of `room`; members over
        their high-water mark skip it. Returns how many got it."""
        return self._tenant.publish_hot(room, frame)

    def send_to_user(self, user: str, svc: str, type_: str, data: Any = _UNSET) -> int:
        """Reliable, to every session of `user` (on every node with a broker); returns
        how many on this node."""
        return self._tenant.send_to_user(user, svc, type_, data)

    def presence(self, room: str, limit: int = 1000):
        """`Presence(count, users)`: distinct users (exact) and up to `limit` of them, of
        this node (with a broker, `presence_everywhere` counts every node)."""
        return self._tenant.presence(room, limit)

    async def presence_everywhere(self, room: str, limit: int = 1000):
        """`Presence(count, users)` over every node (one round trip to Redis with a broker
        up; this node's without one, or while it is down)."""
        return await self._tenant.presence_everywhere(room, limit)

    def disconnect(self, sid: str, code: int = codes.CLOSE_BY_BACKEND, reason: str = "") -> int:
        """Close the sessions with this sid (code 4000 or 4006-4999); returns how many."""
        if code != 4000 and not codes.CLOSE_BY_BACKEND <= code <= 4999:
            raise ValueError("close code must be 4000 or 4006-4999")
        return self._tenant.disconnect_sid(sid, code, reason)

    def every(self, ms: float, fn) -> "Timer":
        """Call `fn()` every `ms` milliseconds until the gateway stops (or `.cancel()`).
        `fn` may be a coroutine function; a tick that comes while the previous call is
        still running is skipped. Ticks missed while the loop was busy are skipped, not
        bunched up."""
        if not ms > 0:
            raise ValueError("every() needs ms > 0")
        timer = Timer(self, ms / 1000.0, fn)
        self._timers.add(timer)
        return timer

    async def stop(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        await self._tasks.cancel_all()


class Timer:
    __slots__ = ("_gw", "_interval", "_fn", "_next", "_handle", "_task", "_errors", "skipped")

    def __init__(self, gw: ServiceGateway, interval: float, fn) -> None:
        loop = asyncio.get_running_loop()
        self._gw = gw
        self._interval = interval
        self._fn = fn
        self._next = loop.time() + interval
        self._handle = loop.call_at(self._next, self._fire)
        self._task = None
        self._errors = ErrorLog(f'tenant "{gw.tenant}" timer {getattr(fn, "__qualname__", fn)!r}',
                                {"tenant": gw.tenant})
        self.skipped = 0

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._gw._timers.discard(self)

    @property
    def active(self) -> bool:
        return self._handle is not None

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next += self._interval
        if self._next <= now:                       # the loop was busy: skip what was missed
            behind = int((now - self._next) // self._interval) + 1
            self.skipped += behind
            self._next += behind * self._interval
        self._handle = loop.call_at(self._next, self._fire)
        if self._task is not None:
            self.skipped += 1
            return
        try:
            result = self._fn()
        except Exception as exc:
            self._errors.report(exc)
            return
        if inspect.isawaitable(result):
            self._task = self._gw._tasks.spawn(self._await(result))

    async def _await(self, awaitable) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._errors.report(exc)
        finally:
            self._task = None


class ErrorLog:
    """Logs a service's exceptions at most once per LOG_EVERY_S (with the traceback of
    the one logged and how many were not), so a service failing on every message
    cannot flood the log."""

    __slots__ = ("what", "extra", "_throttle")

    def __init__(self, what: str, extra: dict | None = None) -> None:
        self.what = what
        self.extra = extra or {}          # log context fields (ops/logs.py): tenant, svc
        self._throttle = Throttle()

    def report(self, exc: BaseException, during: str = "") -> None:
        skipped = self._throttle.due(asyncio.get_running_loop().time())
        if skipped is None:
            return
        more = f" ({skipped} more since the last report)" if skipped else ""
        where = f" in {during}" if during else ""
        log.error("%s raised%s: %s: %s%s", self.what, where, type(exc).__name__, exc, more,
                  exc_info=(type(exc), exc, exc.__traceback__), extra={**self.extra, "code": codes.INTERNAL})


# -- one service of one tenant ----------------------------------------------------------------

class PythonService(SessionQueues):
    """Hosts one `Service` instance. Queue entries are `(kind, arg, deadline)`."""

    __slots__ = (
        "tenant_id", "svc", "instance", "hot_svc_id", "timeout", "max_inflight", "gw", "stats",
        "counts", "n_message_ok", "n_hot_ok", "latency", "errors", "_tasks", "_eager", "_on_message",
        "_sync", "_on_hot", "_hooks", "listens", "built_cfg", "_reply_head",
    )

    def __init__(self, tenant_id: str, svc: str, instance: Service, cfg, gw: ServiceGateway, stats) -> None:
        self._tasks = TaskSet()
        super().__init__(self._tasks.spawn)
        self._eager = EagerStarter(self._tasks.spawn)
        self.tenant_id = tenant_id
        self.svc = svc
        self.instance = instance
        self.hot_svc_id = cfg.hot_svc_id
        self.built_cfg = cfg                # what the instance was built from (a reload keeps it)
        self.gw = gw
        self.stats = stats                  # the tenant's TenantStats
        self.counts = {(k, o): 0 for k in CALL_KINDS for o in OUTCOMES}
        self.n_message_ok = 0             # the two counts bumped per message, kept apart
        self.n_hot_ok = 0
        self.latency = Histogram(CALL_BUCKETS)
        self._reply_head = reply_head(svc)
        self.errors = ErrorLog(f'tenant "{tenant_id}" service "{svc}"', {"tenant": tenant_id, "svc": svc})
        cls = type(instance)
        self._on_message = instance.on_message if overrides(cls, "on_message") else None
        self._sync = self._on_message is not None and not inspect.iscoroutinefunction(cls.on_message)
        self._on_hot = instance.on_hot if overrides(cls, "on_hot") else None
        self._hooks = {kind: getattr(instance, f"on_{kind}") for kind in (_JOIN, _LEAVE, _GONE)
                       if overrides(cls, f"on_{kind}")}
        self.listens = bool(self._hooks)
        instance.svc = svc
        instance.tenant = tenant_id
        instance.hot_svc_id = cfg.hot_svc_id
        self.configure(cfg)

    def __repr__(self) -> str:
        return f"<PythonService {self.tenant_id}/{self.svc}>"

    def configure(self, cfg) -> None:
        """What a reload may change: the timeout and the queue bound."""
        self.timeout = (cfg.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000.0
        self.max_inflight = cfg.max_inflight_per_session

    def count_items(self):
        """((hook, outcome), n) of every call counter (wsprism_service_calls_total)."""
        counts = dict(self.counts)
        counts[_MSG, "ok"] += self.n_message_ok
        counts["hot", "ok"] += self.n_hot_ok
        return counts.items()

    @property
    def takes_messages(self) -> bool:
        return self._on_message is not None

    # -- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        if overrides(type(self.instance), "on_start"):
            await self.instance.on_start(self.gw)

    async def stop(self) -> None:
        """on_stop (bounded by timeout_ms), then cancel what is still running."""
        if overrides(type(self.instance), "on_stop"):
            try:
                async with asyncio.timeout(self.timeout):
                    await self.instance.on_stop()
            except Exception as exc:        # TimeoutError included
                self.errors.report(exc, "on_stop")
        await self._tasks.cancel_all()

    # -- Ext Lane: the handler table's entry --------------------------------------------------
    def handle(self, session, env):
        queue = self.queues.get(session)
        if queue is None:                   # nothing of this session's is running: start now
            return self._call_inline(session, env) if self._sync else self._start(session, env)
        if sum(1 for e in queue if e[0] is _MSG) >= self.max_inflight:
            self.counts[_MSG, "rejected"] += 1
            raise ServiceError(codes.RESOURCE_EXHAUSTED,
                               f"more than {self.max_inflight} messages waiting for service {self.svc}")
        self.push(session, (_MSG, env, asyncio.get_running_loop().time() + self.timeout))
        return DEFERRED

    def _call_inline(self, session, env) -> None:
        """A plain-def on_message: reply now (the caller acks; the dispatch histogram
        times it)."""
        ctx = session.ctx or context_of(session, self.gw)
        try:
            result = self._on_message(ctx, _msg_of(env))
        except Exception as exc:
            raise self._failed(exc) from None
        self.n_message_ok += 1
        if result is not None:
            session.send(encode_reply(self._reply_head, env.seq, result))
        return None

    def _start(self, session, env):
        """An async on_message, started at once (services/eager.py): one that does not
        await is answered now (the dispatcher acks); one that does goes on in a task, and
        the session's next messages queue behind it."""
        ctx = session.ctx or context_of(session, self.gw)
        try:
            done, value = self._eager.start(self._on_message(ctx, _msg_of(env)))
        except Exception as exc:
            raise self._failed(exc) from None
        if done:                            # the dispatch histogram timed it
            self.n_message_ok += 1
            if value is not None:
                session.send(encode_reply(self._reply_head, env.seq, value))
            return None
        # suspended: timed from here (loop time is the arrival's: the first step did not yield)
        deadline = asyncio.get_running_loop().time() + self.timeout
        queue = self.queues[session] = deque(((_MSG, env, deadline),))
        self._eager.hand_over(self._continue(session, queue, value, perf_counter()))
        return DEFERRED

    async def _continue(self, session, queue, rest, t0: float) -> None:
        """The task a suspended call started in: finish it, then the session's queue."""
        try:
            _, env, deadline = queue[0]
            try:
                await self._message(session, env, deadline, rest, t0)
            except Exception:               # a bug must not leave the queue without a task
                log.exception("%r: finishing a call failed", self)
            queue.popleft()
        except BaseException:               # cancelled at stop
            if self.queues.get(session) is queue:
                del self.queues[session]
            raise
        await self._drain(session, queue)

    def _failed(self, exc: Exception) -> ServiceError:
        """What the client hears of an exception on_message raised."""
        if isinstance(exc, ServiceError):
            self.counts[_MSG, "error"] += 1
            return exc
        self.counts[_MSG, "exception"] += 1
        self.errors.report(exc, "on_message")
        return ServiceError(codes.INTERNAL, "internal error")

    def _reply(self, session, env, result) -> None:
        if result is not None and session.state == OPEN:
            session.send(encode_reply(self._reply_head, env.seq, result))

    # -- queued calls --------------------------------------------------------------------------
    async def run(self, session, entry) -> None:
        kind, arg, deadline = entry
        if kind is _MSG:
            if session.state == OPEN:       # gone: queued messages are dropped (hooks still run)
                await self._message(session, arg, deadline)
            return
        hook = self._hooks[kind]
        ctx = context_of(session, self.gw)
        args = (ctx,) if kind is _GONE else (ctx, arg)
        try:
            async with asyncio.timeout_at(deadline) as tm:
                result = hook(*args)
                if inspect.isawaitable(result):
                    await result
        except TimeoutError as exc:
            self._count_failure(kind, exc, tm.expired())
        except Exception as exc:
            self._count_failure(kind, exc, False)
        else:
            self.counts[kind, "ok"] += 1

    def _count_failure(self, kind: str, exc: BaseException, timed_out: bool) -> None:
        self.counts[kind, "timeout" if timed_out else "exception"] += 1
        if timed_out:
            exc = TimeoutError(f"on_{kind} still running after {int(self.timeout * 1000)} ms (cancelled)")
        self.errors.report(exc, f"on_{kind}")

    async def _message(self, session, env, deadline: float, started=None, t0: float = 0.0) -> None:
        """One queued (or already started) message: reply, error or TIMEOUT, then the ack."""
        try:
            if started is None:
                if asyncio.get_running_loop().time() >= deadline:
                    raise TimeoutError
                if self._sync:
                    self._call_inline(session, env)
                else:
                    t0 = perf_counter()
                    started = self._on_message(context_of(session, self.gw), _msg_of(env))
                    await self._await(session, env, started, deadline, t0)
            else:
                await self._await(session, env, started, deadline, t0)
        except TimeoutError:
            self.counts[_MSG, "timeout"] += 1
            self._error(session, env, codes.TIMEOUT,
                        f"service {self.svc} did not answer within {int(self.timeout * 1000)} ms")
            return
        except ServiceError as exc:
            self._error(session, env, exc.code, exc.msg)
            return
        if env.flags & FLAG_ACK_REQUESTED and env.seq is not _UNSET and session.state == OPEN:
            session.send(encode_ack(env.seq))

    async def _await(self, session, env, awaitable, deadline: float, t0: float) -> None:
        """Finish one on_message call; TimeoutError only when our deadline passed."""
        try:
            async with asyncio.timeout_at(deadline) as tm:
                result = await awaitable
        except TimeoutError as exc:
            if tm.expired():
                raise
            raise self._failed(exc) from None
        except Exception as exc:
            raise self._failed(exc) from None
        finally:
            self.latency.observe(perf_counter() - t0)
        self.n_message_ok += 1
        self._reply(session, env, result)

    def _error(self, session, env, code: str, msg: str) -> None:
        if session.state != OPEN:
            return
        self.stats.service_errors_ext += 1
        session.send_error(code, msg, env.seq)

    # -- Hot Lane: the lane's table entry -------------------------------------------------------
    def on_hot_frame(self, session, op: int, flags: int, payload: bytes) -> bool:
        """Called by the framer; True when on_hot returned (then the ack, if asked)."""
        try:
            self._on_hot(session.ctx or context_of(session, self.gw), op, flags, payload)
        except ServiceError as exc:
            self.counts["hot", "error"] += 1
            self._hot_error(session, exc.code, exc.msg)
            return False
        except Exception as exc:
            self.counts["hot", "exception"] += 1
            self.errors.report(exc, "on_hot")
            self._hot_error(session, codes.INTERNAL, "internal error")
            return False
        self.n_hot_ok += 1
        return True

    def _hot_error(self, session, code: str, msg: str) -> None:
        self.stats.service_errors_hot += 1
        if not session.lane.hot_silent:
            session.send_error(code, msg)

    # -- membership (the tenant's listener) ------------------------------------------------------
    def joined(self, session, room: str) -> None:
        if _JOIN in self._hooks:
            self._push_hook(session, _JOIN, room)

    def left(self, session, room: str) -> None:
        if _LEAVE in self._hooks:
            self._push_hook(session, _LEAVE, room)

    def disconnected(self, session) -> None:
        if _GONE in self._hooks:
            self._push_hook(session, _GONE, None)

    def _push_hook(self, session, kind: str, arg) -> None:
        self.push(session, (kind, arg, asyncio.get_running_loop().time() + self.timeout))


def build_python_services(tenant, path: str, services_cfg: dict, gw: ServiceGateway) -> dict:
    """Import, check and build the tenant's Python services (at start only: a reload
    never re-imports code). ConfigError names the config path of what failed."""
    out = {}
    for name, cfg in services_cfg.items():
        if cfg.python is None:
            continue
        spath = f"{path}.services.{name}"
        cls = service_class(spath, cfg)
        try:
            instance = cls(dict(cfg.options))
        except Exception as exc:
            raise ConfigError(f"{spath}.python",
                              f"{cls.__qualname__}(options) raised {type(exc).__name__}: {exc}") from None
        out[name] = PythonService(tenant.id, name, instance, cfg, gw, tenant.stats)
    return out
