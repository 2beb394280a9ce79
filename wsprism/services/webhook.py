"""Ext Lane services forwarded to the tenant's backend over HTTP (SPEC section 10).

One `Forwarder` per `tenants[].services` entry; the dispatcher calls `forward` for an
allowed message whose `svc` it holds. The backend gets
`{"tenant","user","sid","trace_id","msg":<the client's envelope, byte for byte>}` and
answers (2xx) `{"reply"?, "publish"?: [{"room","svc","type","data"?}], "error"?: {"code","msg"}}`.

Order: per session, messages to one service reach the backend one at a time, in the
order they arrived, and their answers come back in that order. Each session has a queue
per service (the message being answered included) of at most `max_inflight_per_session`;
beyond that, RESOURCE_EXHAUSTED. A task drains the queue while it is non-empty.

Time: a message is answered within `timeout_ms` of its arrival, time spent queued
included (then TIMEOUT), so a dead or hanging backend costs each message at most its
timeout; the session stays open and the event loop never waits on the backend.
"""
import asyncio
import logging
import time
from collections import deque
from typing import Annotated

import msgspec

from ..backend.http import BackendFailure
from ..backend.metrics import WEBHOOK_OUTCOMES, Histogram
from ..core import codes
from ..core.envelope import FLAG_ACK_REQUESTED, Envelope, encode_ack, encode_error, encode_message
from ..core.rooms import ROOM_NAME
from ..core.session import OPEN
from ..ops.logs import about

log = logging.getLogger("wsprism.webhook")

MAX_ANSWER_BYTES = 1024 * 1024     # a longer answer is INTERNAL (and is not read further)
MAX_ERROR_MSG = 500                 # characters of a backend error message passed to the client
LOG_EVERY_S = 10.0                  # a failing backend is logged at most this often per service

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
    room: Annotated[str, msgspec.Meta(pattern=f"^{ROOM_NAME.pattern}$")]
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


_encode_request = msgspec.json.Encoder().encode
_answer_decoder = msgspec.json.Decoder(Answer)


class Forwarder:
    """One forwarded service of one tenant; kept across reloads while its name stays."""

    __slots__ = ("tenant_id", "svc", "url", "timeout", "max_inflight", "queues", "outcomes", "latency",
                 "_log_at", "_log_skipped")

    def __init__(self, tenant_id: str, svc: str, cfg) -> None:
        self.tenant_id = tenant_id
        self.svc = svc
        self.queues: dict = {}                   # Session -> deque of (env, payload, deadline)
        self.outcomes = dict.fromkeys(WEBHOOK_OUTCOMES, 0)
        self.latency = Histogram()
        self._log_at = -LOG_EVERY_S
        self._log_skipped = 0
        self.configure(cfg)

    def configure(self, cfg) -> None:
        self.url = cfg.webhook
        self.timeout = cfg.timeout_ms / 1000.0
        self.max_inflight = cfg.max_inflight_per_session

    # -- called by the dispatcher ------------------------------------------------------
    def forward(self, session, env, payload: bytes) -> None:
        queue = self.queues.get(session)
        http = session.gateway.http
        if queue is None:
            queue = self.queues[session] = deque()
            queue.append((env, payload, _now() + self.timeout))
            http.spawn(self._drain(session, queue))
        elif len(queue) >= self.max_inflight:
            self.outcomes["rejected"] += 1
            session.tenant.stats.service_errors_ext += 1
            session.send_error(codes.RESOURCE_EXHAUSTED,
                               f"more than {self.max_inflight} messages waiting for service {self.svc}", env.seq)
        else:
            queue.append((env, payload, _now() + self.timeout))

    # -- the per-session task ----------------------------------------------------------
    async def _drain(self, session, queue: deque) -> None:
        try:
            while queue:
                if session.state != OPEN:
                    break                      # gone: what is still queued is dropped
                env, payload, deadline = queue[0]
                try:
                    await self._call(session, env, payload, deadline)
                except Exception:             # a bug must not stop the queue or leak out
                    log.exception('tenant "%s" service "%s": forwarding failed', self.tenant_id, self.svc,
                                  extra=about(session, svc=self.svc, code=codes.INTERNAL))
                    session.send_error(codes.INTERNAL, "internal error", env.seq)
                queue.popleft()
        finally:
            if self.queues.get(session) is queue:
                del self.queues[session]

    async def _call(self, session, env, payload: bytes, deadline: float) -> None:
        trace_id = session.next_trace_id()
        if _now() >= deadline:
            self._fail(session, env, trace_id, "timeout", "timed out while queued behind earlier messages")
            return
        body = _encode_request(WebhookRequest(self.tenant_id, session.user, session.sid, trace_id, env))
        t0 = time.perf_counter()
        try:
            status, raw = await session.gateway.http.post_json(self.url, body, deadline, MAX_ANSWER_BYTES)
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
        if answer.error is not None:
            self.outcomes["error"] += 1
            if session.state == OPEN:
                err = answer.error
                session.tenant.stats.service_errors_ext += 1
                code = err.code if err.code in codes.ERROR_CODES else codes.INTERNAL
                session.send(encode_error(code, err.msg[:MAX_ERROR_MSG], env.seq, trace_id))
            return
        self.outcomes["ok"] += 1
        if session.state == OPEN:
            self._apply(session, env, answer)

    def _apply(self, session, env, answer: Answer) -> None:
        """Publish to rooms, then the reply, then the ack (the sender's own copy of a
        publish to a room it is in arrives before its reply and ack)."""
        rooms = session.tenant.rooms
        for pub in answer.publish:
            room = rooms.get(pub.room)
            if room is not None:
                rooms.broadcast(room, encode_message(pub.svc, pub.type, pub.room, pub.data))
        seq = env.seq
        if answer.reply is not _UNSET:
            if seq is _UNSET:
                session.send(encode_message(self.svc, "reply", None, answer.reply))
            else:
                session.send(encode_message(self.svc, "reply", None, answer.reply, seq=seq))
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
        now = _now()
        if now - self._log_at < LOG_EVERY_S:
            self._log_skipped += 1
            return
        skipped, self._log_skipped = self._log_skipped, 0
        self._log_at = now
        more = f" ({skipped} more failures since the last report)" if skipped else ""
        log.warning('tenant "%s" service "%s": %s: %s%s', self.tenant_id, self.svc, outcome, detail, more,
                    extra={"tenant": self.tenant_id, "svc": self.svc,
                           "code": codes.TIMEOUT if outcome == "timeout" else codes.INTERNAL})


def build_forwarders(tenant_id: str, services: dict, current: dict) -> dict:
    """Forwarders for `tenants[].services`; a service that keeps its name keeps its
    forwarder (queues and counters), with the new settings."""
    out = {}
    for svc, cfg in services.items():
        fwd = current.get(svc)
        if fwd is None:
            fwd = Forwarder(tenant_id, svc, cfg)
        else:
            fwd.configure(cfg)
        out[svc] = fwd
    return out


def _now() -> float:
    return asyncio.get_running_loop().time()     # the clock asyncio.timeout_at uses
