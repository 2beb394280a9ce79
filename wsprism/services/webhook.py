"""Ext Lane services forwarded to the tenant's backend over HTTP (SPEC section 10).

One `Forwarder` per `tenants[].services` entry with a `webhook`, registered in the
tenant's handler table (`handle`) when the tenant is assembled. The backend gets
`{"tenant","user","sid","trace_id","msg":<the client's envelope, byte for byte>}` and
answers (2xx) `{"reply"?, "publish"?: [{"room","svc","type","data"?}], "error"?: {"code","msg"}}`.

Order: per session, messages to one service reach the backend one at a time, in the
order they arrived, and their answers come back in that order. Each session has a queue
per service (the message being answered included) of at most `max_inflight_per_session`;
beyond that, RESOURCE_EXHAUSTED. No task per session: the front of the queue is posted with
`HttpClient.post`, and its answer's callback settles it and posts the next.

Time: a message is answered within `timeout_ms` of its arrival, time spent queued
included (then TIMEOUT), so a dead or hanging backend costs each message at most its
timeout; the session stays open and the event loop never waits on the backend.

Batches (`batch_max_messages` > 1, opt-in per service): what a session has queued goes
in one POST `{"tenant","user","sid","batch":[{"trace_id","msg"}, ...]}`, answered by
`{"batch":[<answer>, ...]}`, one answer per message, in order. Order, the in-flight cap
and each message's own deadline hold as above; an answer that is not exactly one valid
entry per message fails every message of the batch (INTERNAL, nothing published).
"""
import asyncio
import logging
from collections import deque
from functools import partial
from time import perf_counter
from typing import Annotated

import msgspec

from .. import names
from ..backend.metrics import WEBHOOK_BUCKETS, WEBHOOK_OUTCOMES
from ..core import codes
from ..core.dispatcher import DEFERRED, ServiceError
from ..core.envelope import FLAG_ACK_REQUESTED, Envelope, encode_ack, encode_error, encode_reply, reply_head
from ..core.session import OPEN, about
from ..core.stats import Histogram
from .throttle import Throttle

log = logging.getLogger("wsprism.webhook")

MAX_ANSWER_BYTES = 1024 * 1024     # a longer answer is INTERNAL (and is not read further)
MAX_ERROR_MSG = 500                 # characters of a backend error message passed to the client
DEFAULT_TIMEOUT_MS = 2000

_UNSET = msgspec.UNSET
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class WebhookRequest(msgspec.Struct):
    tenant: str
    user: str
    sid: str
    trace_id: str
    msg: Envelope       # re-encoded from what was validated: with duplicate keys in the
                        # client's JSON, the backend sees the svc/type the allowlist saw


class Publish(msgspec.Struct, forbid_unknown_fields=True):
    room: names.RoomStr
    svc: NonEmpty
    type: NonEmpty
    data: msgspec.Raw | msgspec.UnsetType = _UNSET


class BackendError(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    msg: str = "service error"


class Answer(msgspec.Struct, forbid_unknown_fields=True):
    reply: msgspec.Raw | msgspec.UnsetType = _UNSET
    publish: list[Publish] = []
    error: BackendError | None = None


class BatchItem(msgspec.Struct):
    trace_id: str
    msg: Envelope


class BatchRequest(msgspec.Struct):
    tenant: str
    user: str
    sid: str
    batch: list[BatchItem]


class BatchAnswer(msgspec.Struct, forbid_unknown_fields=True):
    batch: list[Answer]


_encode_request = msgspec.json.Encoder().encode
_answer_decoder = msgspec.json.Decoder(Answer)
_batch_decoder = msgspec.json.Decoder(BatchAnswer)


class Forwarder:
    """One forwarded service of one tenant; kept across reloads while its name stays.
    `queues`: per session, a deque of `(env, deadline)` (the one at the backend first). No
    task per session (so not SessionQueues' drain): the front of a session's queue is
    posted with `HttpClient.post`, whose callback settles it and posts the next."""

    __slots__ = ("queues", "tenant_id", "svc", "http", "url", "timeout", "max_inflight", "batch_max", "outcomes",
                 "latency", "_reply_head", "_throttle", "_loop")

    def __init__(self, tenant_id: str, svc: str, cfg, http) -> None:
        self.queues: dict = {}
        self.tenant_id = tenant_id
        self.svc = svc
        self.http = http
        self._reply_head = reply_head(svc)
        self.outcomes = dict.fromkeys(WEBHOOK_OUTCOMES, 0)
        self.latency = Histogram(WEBHOOK_BUCKETS)
        self._throttle = Throttle()
        self._loop = None              # the running loop, looked up once (each lookup is a getpid())
        self.configure(cfg)

    def __repr__(self) -> str:
        return f"<Forwarder {self.tenant_id}/{self.svc}>"

    def configure(self, cfg) -> None:
        self.url = cfg.webhook
        self.timeout = (cfg.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000.0
        self.max_inflight = cfg.max_inflight_per_session
        self.batch_max = cfg.batch_max_messages

    # -- the handler table's entry ---------------------------------------------------------
    def handle(self, session, env):
        queue = self.queues.get(session)
        if queue is not None and len(queue) >= self.max_inflight:
            self.outcomes["rejected"] += 1
            raise ServiceError(codes.RESOURCE_EXHAUSTED,
                               f"more than {self.max_inflight} messages waiting for service {self.svc}")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        entry = (env, loop.time() + self.timeout)
        if queue is None:
            queue = self.queues[session] = deque((entry,))
            if self.batch_max > 1:
                loop.call_soon(self._next, session, queue)   # what else arrives this turn joins the batch
            else:
                self._next(session, queue)                    # posted now, from the frame's own turn
        else:
            queue.append(entry)
        return DEFERRED

    # -- the per-session queue -------------------------------------------------------------
    def _next(self, session, queue: deque) -> None:
        """Post what is at the front of `queue` (none of it is at the backend); forget the
        queue once it is empty or its session gone. Never raises."""
        while queue:
            if session.state != OPEN:
                break                          # gone: what is still queued is dropped
            if self.batch_max > 1:
                if _Batch(self, session, queue, min(len(queue), self.batch_max)).start():
                    return
                continue
            env, deadline = queue[0]
            try:
                trace_id = session.next_trace_id()
                if self._loop.time() < deadline:
                    body = _encode_request(WebhookRequest(self.tenant_id, session.user, session.sid, trace_id, env))
                    self.http.post(self.url, body, deadline, MAX_ANSWER_BYTES,
                                   partial(self._done, session, queue, env, trace_id, perf_counter()))
                    return
                self._fail(session, env, trace_id, "timeout", "timed out while queued behind earlier messages")
            except Exception:                  # a bug must not stop the queue or leak out
                self._crashed(session, [env])
            queue.popleft()
        if self.queues.get(session) is queue:
            del self.queues[session]

    def _done(self, session, queue: deque, env, trace_id: str, t0: float, result) -> None:
        """The backend's answer (or failure) for the message at the front of `queue`."""
        self.latency.observe(perf_counter() - t0)
        try:
            if type(result) is tuple:
                self._settle(session, env, trace_id, result)
            else:
                self._fail(session, env, trace_id, result.outcome, result.detail)
        except Exception:                      # a bug must not stop the queue or leak out
            self._crashed(session, [env])
        queue.popleft()
        self._next(session, queue)

    def _settle(self, session, env, trace_id: str, result: tuple) -> None:
        status, raw = result
        if not 200 <= status < 300:
            self._fail(session, env, trace_id, "bad_status", f"HTTP {status}")
            return
        try:
            answer = _answer_decoder.decode(raw or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self._fail(session, env, trace_id, "bad_answer", f"invalid answer: {str(exc)[:200]}")
            return
        self._answered(session, env, trace_id, answer)

    def _crashed(self, session, envs) -> None:
        log.exception('tenant "%s" service "%s": forwarding failed', self.tenant_id, self.svc,
                      extra=about(session, svc=self.svc, code=codes.INTERNAL))
        for env in envs:
            session.send_error(codes.INTERNAL, "internal error", env.seq)

    def _answered(self, session, env, trace_id: str, answer: Answer) -> None:
        """A valid answer for one message: its error, or its publish, reply and ack."""
        if answer.error is not None:
            self.outcomes["error"] += 1
            if session.state == OPEN:
                err = answer.error
                session.tenant.stats.service_errors_ext += 1
                session.send(encode_error(codes.error_code(err.code), err.msg[:MAX_ERROR_MSG], env.seq, trace_id))
            return
        self.outcomes["ok"] += 1
        if session.state == OPEN:
            self._apply(session, env, answer)

    def _apply(self, session, env, answer: Answer) -> None:
        """Publish to rooms, then the reply, then the ack (the sender's own copy of a
        publish to a room it is in arrives before its reply and ack)."""
        tenant = session.tenant
        for pub in answer.publish:
            tenant.publish(pub.room, pub.svc, pub.type, pub.data)
        seq = env.seq
        if answer.reply is not _UNSET:
            session.send(encode_reply(self._reply_head, seq, answer.reply))
        if env.flags & FLAG_ACK_REQUESTED and seq is not _UNSET:
            session.send(encode_ack(seq))

    def _fail(self, session, env, trace_id: str, outcome: str, detail: str) -> None:
        """TIMEOUT for a timeout, INTERNAL for anything else; the session stays open."""
        self.outcomes[outcome] += 1
        self._log(outcome, detail)
        if session.state != OPEN:
            return
        session.tenant.stats.service_errors_ext += 1
        if outcome == "timeout":
            msg = f"service {self.svc} did not answer within {int(self.timeout * 1000)} ms"
            session.send(encode_error(codes.TIMEOUT, msg, env.seq, trace_id))
        else:
            session.send(encode_error(codes.INTERNAL, f"service {self.svc} failed", env.seq, trace_id))

    def _log(self, outcome: str, detail: str) -> None:
        skipped = self._throttle.due((self._loop or asyncio.get_running_loop()).time())
        if skipped is None:
            return
        more = f" ({skipped} more failures since the last report)" if skipped else ""
        log.warning('tenant "%s" service "%s": %s: %s%s', self.tenant_id, self.svc, outcome, detail, more,
                    extra={"tenant": self.tenant_id, "svc": self.svc,
                           "code": codes.TIMEOUT if outcome == "timeout" else codes.INTERNAL})


class _Batch:
    """Several queued messages of one session (the first `n` of its queue) in one POST.
    `settled` counts the messages whose outcome is decided, from the front, so a bug
    answers INTERNAL to the others only."""

    __slots__ = ("fwd", "session", "queue", "n", "live", "settled", "timed_out", "timer", "t0")

    def __init__(self, fwd: Forwarder, session, queue: deque, n: int) -> None:
        self.fwd = fwd
        self.session = session
        self.queue = queue
        self.n = n
        self.live: list = []          # (env, deadline, trace_id) posted
        self.settled = 0
        self.timed_out = 0            # live entries at the front whose deadline passed at the backend
        self.timer = None
        self.t0 = 0.0

    def start(self) -> bool:
        """Post the batch; False when nothing was left to post (each message settled, popped)."""
        fwd, session, live = self.fwd, self.session, self.live
        try:
            now = fwd._loop.time()
            for i in range(self.n):
                env, deadline = self.queue[i]
                trace_id = session.next_trace_id()
                if now >= deadline:
                    fwd._fail(session, env, trace_id, "timeout", "timed out while queued behind earlier messages")
                    self.settled += 1
                else:
                    live.append((env, deadline, trace_id))
            if live:
                body = _encode_request(BatchRequest(fwd.tenant_id, session.user, session.sid,
                                                    [BatchItem(t, env) for env, _, t in live]))
                self.t0 = perf_counter()
                fwd.http.post(fwd.url, body, live[-1][1], MAX_ANSWER_BYTES, self._done)
                # Each message keeps its own deadline: one whose time is up while the batch
                # is at the backend is answered TIMEOUT then; the POST itself runs until the
                # last message's deadline. Armed once posted: a batch that never started has none.
                if len(live) > 1:
                    self.timer = fwd._loop.call_at(live[0][1], self._expire)
                return True
        except Exception:                     # a bug must not stop the queue or leak out
            self._crashed()
        self._pop()
        return False

    def _expire(self) -> None:
        fwd, live = self.fwd, self.live
        k = self.timed_out
        env, _, trace_id = live[k]
        fwd._fail(self.session, env, trace_id, "timeout", f"no answer within {int(fwd.timeout * 1000)} ms")
        self.settled += 1
        self.timed_out = k = k + 1
        self.timer = fwd._loop.call_at(live[k][1], self._expire) if k < len(live) - 1 else None

    def _done(self, result) -> None:
        fwd = self.fwd
        fwd.latency.observe(perf_counter() - self.t0)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            self._answered(result)
        except Exception:                     # a bug must not stop the queue or leak out
            self._crashed()
        self._pop()
        # the next batch a turn later (as the first): what this turn's reads bring joins it
        fwd._loop.call_soon(fwd._next, self.session, self.queue)

    def _answered(self, result) -> None:
        fwd, session = self.fwd, self.session
        k = self.timed_out
        waiting = self.live[k:]
        if type(result) is not tuple:
            self._fail_all(waiting, result.outcome, result.detail)
            return
        if not waiting:
            return
        status, raw = result
        if not 200 <= status < 300:
            self._fail_all(waiting, "bad_status", f"HTTP {status}")
            return
        try:
            answers = _batch_decoder.decode(raw).batch
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self._fail_all(waiting, "bad_answer", f"invalid batch answer: {str(exc)[:200]}")
            return
        if len(answers) != len(self.live):
            self._fail_all(waiting, "bad_answer",
                           f"batch answer has {len(answers)} entries for {len(self.live)} messages")
            return
        for (env, _, trace_id), answer in zip(waiting, answers[k:]):
            fwd._answered(session, env, trace_id, answer)
            self.settled += 1

    def _fail_all(self, waiting: list, outcome: str, detail: str) -> None:
        for env, _, trace_id in waiting:
            self.fwd._fail(self.session, env, trace_id, outcome, detail)
            self.settled += 1

    def _crashed(self) -> None:
        queue = self.queue
        self.fwd._crashed(self.session, [queue[i][0] for i in range(self.settled, self.n)])

    def _pop(self) -> None:
        queue = self.queue
        for _ in range(self.n):
            queue.popleft()


def build_forwarders(tenant_id: str, services: dict, current: dict, http) -> dict:
    """Forwarders for the `webhook` entries of `tenants[].services`; a service that keeps
    its name keeps its forwarder (queues and counters), with the new settings."""
    out = {}
    for svc, cfg in services.items():
        if cfg.webhook is None:
            continue
        fwd = current.get(svc)
        if fwd is None:
            fwd = Forwarder(tenant_id, svc, cfg, http)
        else:
            fwd.configure(cfg)
        out[svc] = fwd
    return out

