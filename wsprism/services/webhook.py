"""Ext Lane services forwarded to the tenant's backend over HTTP (SPEC section 10).

One `Forwarder` per `tenants[].services` entry with a `webhook`, registered in the
tenant's handler table (`handle`) when the tenant is assembled. The backend gets
`{"tenant","user","sid","trace_id","msg":<the client's envelope, byte for byte>}` and
answers (2xx) `{"reply"?, "publish"?: [{"room","svc","type","data"?}], "error"?: {"code","msg"}}`.

Order: per session, messages to one service reach the backend one at a time, in the
order they arrived, and their answers come back in that order. Each session has a queue
per service (the message being answered included) of at most `max_inflight_per_session`;
beyond that, RESOURCE_EXHAUSTED. A task drains the queue while it is non-empty.

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
import time
from collections import deque
from typing import Annotated

import msgspec

from .. import names
from ..backend.http import BackendFailure
from ..backend.metrics import WEBHOOK_BUCKETS, WEBHOOK_OUTCOMES
from ..core import codes
from ..core.dispatcher import DEFERRED, ServiceError
from ..core.envelope import FLAG_ACK_REQUESTED, Envelope, encode_ack, encode_error, encode_reply, reply_head
from ..core.session import OPEN, about
from ..core.stats import Histogram
from .queues import SessionQueues
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


class Forwarder(SessionQueues):
    """One forwarded service of one tenant; kept across reloads while its name stays.
    Queue entries are `(env, deadline)`."""

    __slots__ = ("tenant_id", "svc", "http", "url", "timeout", "max_inflight", "batch_max", "outcomes",
                 "latency", "_reply_head", "_throttle")

    def __init__(self, tenant_id: str, svc: str, cfg, http) -> None:
        super().__init__(http.spawn)
        self.tenant_id = tenant_id
        self.svc = svc
        self.http = http
        self._reply_head = reply_head(svc)
        self.outcomes = dict.fromkeys(WEBHOOK_OUTCOMES, 0)
        self.latency = Histogram(WEBHOOK_BUCKETS)
        self._throttle = Throttle()
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
        if self.pending(session) >= self.max_inflight:
            self.outcomes["rejected"] += 1
            raise ServiceError(codes.RESOURCE_EXHAUSTED,
                               f"more than {self.max_inflight} messages waiting for service {self.svc}")
        self.push(session, (env, _now() + self.timeout))
        return DEFERRED

    # -- the per-session task ----------------------------------------------------------
    async def _drain(self, session, queue: deque) -> None:
        """SessionQueues' drain, taking up to `batch_max` messages at a time."""
        try:
            while queue:
                if session.state != OPEN:
                    break                      # gone: what is still queued is dropped
                if self.batch_max > 1:
                    items = [queue[i] for i in range(min(len(queue), self.batch_max))]
                    settled: list = []
                    try:
                        await self._call_batch(session, items, settled)
                    except Exception:         # a bug must not stop the queue or leak out
                        log.exception('tenant "%s" service "%s": forwarding failed', self.tenant_id, self.svc,
                                      extra=about(session, svc=self.svc, code=codes.INTERNAL))
                        for env, _ in items[len(settled):]:
                            session.send_error(codes.INTERNAL, "internal error", env.seq)
                    for _ in items:
                        queue.popleft()
                    continue
                env, deadline = queue[0]
                try:
                    await self._call(session, env, deadline)
                except Exception:             # a bug must not stop the queue or leak out
                    log.exception('tenant "%s" service "%s": forwarding failed', self.tenant_id, self.svc,
                                  extra=about(session, svc=self.svc, code=codes.INTERNAL))
                    session.send_error(codes.INTERNAL, "internal error", env.seq)
                queue.popleft()
        finally:
            if self.queues.get(session) is queue:
                del self.queues[session]

    async def _call(self, session, env, deadline: float) -> None:
        trace_id = session.next_trace_id()
        if _now() >= deadline:
            self._fail(session, env, trace_id, "timeout", "timed out while queued behind earlier messages")
            return
        body = _encode_request(WebhookRequest(self.tenant_id, session.user, session.sid, trace_id, env))
        t0 = time.perf_counter()
        try:
            status, raw = await self.http.post_json(self.url, body, deadline, MAX_ANSWER_BYTES)
        except BackendFailure as exc:
            self._fail(session, env, trace_id, exc.outcome, exc.detail)
            return
        finally:
            self.latency.observe(time.perf_counter() - t0)
        if not 200 <= status < 300:
            self._fail(session, env, trace_id, "bad_status", f"HTTP {status}")
            return
        try:
            answer = _answer_decoder.decode(raw or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self._fail(session, env, trace_id, "bad_answer", f"invalid answer: {str(exc)[:200]}")
            return
        self._answered(session, env, trace_id, answer)

    async def _call_batch(self, session, items: list, settled: list) -> None:
        """Several queued messages of one session in one POST. Each message's outcome is
        appended to `settled` as it is decided, so the caller knows which are answered."""
        now = _now()
        live = []                                     # (env, deadline, trace_id) sent
        for env, deadline in items:
            trace_id = session.next_trace_id()
            if now >= deadline:
                self._fail(session, env, trace_id, "timeout", "timed out while queued behind earlier messages")
                settled.append(env)
            else:
                live.append((env, deadline, trace_id))
        if not live:
            return
        body = _encode_request(BatchRequest(self.tenant_id, session.user, session.sid,
                                            [BatchItem(t, env) for env, _, t in live]))
        loop = asyncio.get_running_loop()
        last = len(live) - 1
        timed_out = 0           # entries at the front whose deadline passed while at the backend

        def expire() -> None:
            # Each message keeps its own deadline: one whose time is up while the batch
            # is at the backend is answered TIMEOUT then; the POST itself runs until the
            # last message's deadline.
            nonlocal timed_out, timer
            env, _, trace_id = live[timed_out]
            self._fail(session, env, trace_id, "timeout", f"no answer within {int(self.timeout * 1000)} ms")
            settled.append(env)
            timed_out += 1
            timer = loop.call_at(live[timed_out][1], expire) if timed_out < last else None

        timer = loop.call_at(live[0][1], expire) if last else None
        t0 = time.perf_counter()
        try:
            status, raw = await self.http.post_json(self.url, body, live[-1][1], MAX_ANSWER_BYTES)
        except BackendFailure as exc:
            self._fail_all(session, live[timed_out:], settled, exc.outcome, exc.detail)
            return
        finally:
            if timer is not None:
                timer.cancel()
            self.latency.observe(time.perf_counter() - t0)
        k = timed_out
        waiting = live[k:]
        if not waiting:
            return
        if not 200 <= status < 300:
            self._fail_all(session, waiting, settled, "bad_status", f"HTTP {status}")
            return
        try:
            answers = _batch_decoder.decode(raw).batch
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self._fail_all(session, waiting, settled, "bad_answer", f"invalid batch answer: {str(exc)[:200]}")
            return
        if len(answers) != len(live):
            self._fail_all(session, waiting, settled, "bad_answer",
                           f"batch answer has {len(answers)} entries for {len(live)} messages")
            return
        for (env, _, trace_id), answer in zip(waiting, answers[k:]):
            self._answered(session, env, trace_id, answer)
            settled.append(env)

    def _fail_all(self, session, waiting: list, settled: list, outcome: str, detail: str) -> None:
        for env, _, trace_id in waiting:
            self._fail(session, env, trace_id, outcome, detail)
            settled.append(env)

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
        skipped = self._throttle.due(_now())
        if skipped is None:
            return
        more = f" ({skipped} more failures since the last report)" if skipped else ""
        log.warning('tenant "%s" service "%s": %s: %s%s', self.tenant_id, self.svc, outcome, detail, more,
                    extra={"tenant": self.tenant_id, "svc": self.svc,
                           "code": codes.TIMEOUT if outcome == "timeout" else codes.INTERNAL})


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


def _now() -> float:
    return asyncio.get_running_loop().time()     # the clock asyncio.timeout_at uses
