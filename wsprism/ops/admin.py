"""The admin page's data: `GET /v1/admin/state` on the server API's listener.

One JSON document per tenant, read by the page at `/admin/` every 2 s and by the tests.
It holds what an operator looks at first (sessions, users, rooms, inbound messages per
second per lane, the biggest rooms, recent rejections by reason, process and scale-out
state) and one page of sessions: all of them in registry order, or those whose user or
sid matches a search (exact matches first, then prefixes).

Bounded whatever the tenant's size: the biggest rooms are a top-N (`heapq.nlargest`, one
pass over the rooms), sessions come `limit` at a time (at most SESSIONS_MAX, from
`offset`), and each listed session shows at most ROOMS_PER_SESSION of its rooms. A
request costs one pass over the rooms and, with a search, one over the users; nothing
in it depends on traffic. Only the key's own tenant is visible: handshakes refused
before a tenant was known (`_unknown` in the metrics) belong to no tenant and are not
shown here (Prometheus has them).

Rates and "recent" counts come from a `Sampler` that copies every tenant's counters once a
second (a few dozen integers per tenant) and keeps RECENT_WINDOW seconds of them.
"""
import asyncio
import heapq
import time
from collections import deque
from itertools import islice

import psutil

from .. import __version__
from .._fast import CLOSING, OPEN, PENDING, USING_EXTENSIONS, Counter
from ..broker.redis import STATE_NAMES
from ..core.stats import HANDSHAKE_REASONS, POLICY_LABELS

TOP_ROOMS = 20
TOP_ROOMS_MAX = 100
SESSIONS_LIMIT = 50
SESSIONS_MAX = 200
ROOMS_PER_SESSION = 20
SAMPLE_EVERY = 1.0         # seconds between two copies of the counters
RATE_WINDOW = 10.0         # messages/s are averaged over this long
RECENT_WINDOW = 300.0      # "recent" rejections: over this long

_POLICY = list(POLICY_LABELS.items())       # (counter, (lane, decision, reason)), in counter order
_EXT = [i for i, (_, key) in enumerate(_POLICY) if key[0] == "ext"]
_HOT = [i for i, (_, key) in enumerate(_POLICY) if key[0] == "hot"]
_REFUSED = [(i, key) for i, (_, key) in enumerate(_POLICY) if key[1] != "allow"]
_STATE_NAMES = {PENDING: "pending", OPEN: "open", CLOSING: "closing"}
_STARTED = psutil.Process().create_time()


def counters(tenant) -> tuple:
    """What the page shows as rates or recent counts, copied from the tenant's counters:
    (policy counters in POLICY_LABELS order, handshake rejections in HANDSHAKE_REASONS order,
    slow-consumer closes (every 4005, whichever rule), egress drops, service errors)."""
    stats = tenant.stats
    lane = stats.lane.snapshot()
    rej = stats.handshake_rejections
    return (
        tuple(lane[c] for c, _ in _POLICY),
        tuple(rej[r] for r in HANDSHAKE_REASONS),
        stats.slow_consumer_closes,
        lane[Counter.C_EGRESS_DROPS],
        stats.service_errors_ext + stats.service_errors_hot,
    )


class Sampler:
    """Every tenant's `counters` once a second, kept for RECENT_WINDOW seconds."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.samples: dict[str, deque] = {}      # tenant id -> deque of (loop time, counters)
        self._of: dict[str, object] = {}         # tenant id -> the TenantRuntime sampled

    def sample(self, now: float) -> None:
        tenants = self.gateway.tenants
        for tid in [t for t in self.samples if t not in tenants]:
            del self.samples[tid], self._of[tid]
        for tid, tenant in tenants.items():
            ring = self.samples.get(tid)
            if ring is None or self._of[tid] is not tenant:     # new, or removed and added again
                ring = self.samples[tid] = deque()
                self._of[tid] = tenant
            ring.append((now, counters(tenant)))
            horizon = now - RECENT_WINDOW - SAMPLE_EVERY
            while ring[0][0] < horizon:
                ring.popleft()

    def since(self, tid: str, now: float, age: float):
        """The newest sample at least `age` seconds old (else the oldest one), or None."""
        ring = self.samples.get(tid)
        if not ring:
            return None
        found = ring[0]
        for entry in ring:
            if entry[0] > now - age:
                break
            found = entry
        return found

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.sample(loop.time())
            await asyncio.sleep(SAMPLE_EVERY)


def _session_info(session) -> dict:
    rooms = session.rooms
    names = list(islice(reversed(rooms), ROOMS_PER_SESSION))      # most recently joined first
    return {
        "user": session.user,
        "sid": session.sid,
        "trace_id": session.trace_id,
        "state": _STATE_NAMES.get(session.state, "closed"),
        "ip": session.ip or None,
        "active_room": names[0] if names else None,
        "rooms": names,
        "rooms_total": len(rooms),
    }


def _find(registry, q: str) -> list:
    """Sessions whose user or sid is `q` (first), or starts with it."""
    exact, prefix = [], []
    for user, sessions in registry.by_user.items():
        if user == q:
            exact.extend(sessions)
            continue
        user_hit = user.startswith(q)
        for s in sessions:
            if s.sid == q:
                exact.append(s)
            elif user_hit or s.sid.startswith(q):
                prefix.append(s)
    return exact + prefix


def scale_out(gateway) -> dict:
    """`process.scale_out`: workers, this worker, the broker link (SPEC 11)."""
    workers = gateway.config.gateway.workers
    worker = gateway.worker
    cluster = gateway.cluster
    mode = "workers" if workers > 1 else "broker" if cluster is not None else "single"
    here = f"worker {worker} of {workers}" if worker is not None else "one process"
    if cluster is None:
        return {"mode": mode, "workers": workers, "worker": worker, "broker": None,
                "summary": "single process, no broker"}
    b = cluster.broker
    state = STATE_NAMES[b.state]
    broker = {"url": repr(b.url), "state": state, "up": b.up, "node": b.node, "lease_ms": b.lease_ms,
              "subscriptions": len(b.subs) + len(b.lingering)}
    if b.up:
        summary = f"{here}, broker up at {broker['url']} (node {b.node})"
    else:
        summary = f"{here}, broker {state} at {broker['url']}: local delivery only, limits per node"
    if worker is not None:
        summary += "; sessions and rooms below are this worker's"
    return {"mode": mode, "workers": workers, "worker": worker, "broker": broker, "summary": summary}


def tenant_state(gateway, tenant, sampler: Sampler | None, q: str = "", offset: int = 0,
                 limit: int = SESSIONS_LIMIT, top: int = TOP_ROOMS) -> dict:
    now = asyncio.get_running_loop().time()
    tid = tenant.id
    reg = tenant.sessions
    rooms = tenant.rooms.rooms
    cur = counters(tenant)
    policy, rejections = cur[0], cur[1]

    ext_total = sum(policy[i] for i in _EXT)
    hot_total = sum(policy[i] for i in _HOT)
    ext_rate = hot_rate = None
    base = sampler.since(tid, now, RATE_WINDOW) if sampler is not None else None
    if base is not None and now - base[0] >= 0.5:
        dt = now - base[0]
        ext_rate = round((ext_total - sum(base[1][0][i] for i in _EXT)) / dt, 1)
        hot_rate = round((hot_total - sum(base[1][0][i] for i in _HOT)) / dt, 1)
    old = sampler.since(tid, now, RECENT_WINDOW) if sampler is not None else None
    window = round(now - old[0], 1) if old is not None else 0.0
    old_c = old[1] if old is not None else cur

    handshake = [
        {"reason": reason, "recent": n - old_c[1][i], "total": n}
        for i, (reason, n) in enumerate(zip(HANDSHAKE_REASONS, rejections)) if n
    ]
    refused = [
        {"lane": lane, "decision": decision, "reason": reason, "recent": policy[i] - old_c[0][i], "total": policy[i]}
        for i, (lane, decision, reason) in _REFUSED if policy[i]
    ]
    biggest = heapq.nlargest(top, rooms.values(), key=lambda r: (len(r.users), r.size))

    if q:
        matches = _find(reg, q)
        total = len(matches)
        page = matches[offset:offset + limit]
    else:
        total = reg.admitted
        page = list(islice((s for lst in reg.by_user.values() for s in lst), offset, offset + limit))

    scale = scale_out(gateway)
    return {
        "tenant": tid,
        "time": round(time.time(), 3),
        "process": {
            "version": __version__,
            "compiled": USING_EXTENSIONS,
            "uptime_s": round(time.time() - _STARTED, 1),
            "draining": gateway.draining,
            "scale_out": scale,
        },
        "tenants": [{"id": tid, "sessions": reg.count, "users": reg.users, "rooms": len(rooms)}],
        "sessions": reg.count,
        "users": reg.users,
        "rooms": len(rooms),
        "lanes": {
            "ext": {"messages_total": ext_total, "per_s": ext_rate},
            "hot": {"messages_total": hot_total, "per_s": hot_rate},
        },
        "delivery": {
            "writer_timeouts": {"recent": cur[2] - old_c[2], "total": cur[2]},
            "egress_drops": {"recent": cur[3] - old_c[3], "total": cur[3]},
            "service_errors": {"recent": cur[4] - old_c[4], "total": cur[4]},
        },
        "top_rooms": [{"room": r.name, "users": len(r.users), "sessions": r.size} for r in biggest],
        "rejections": {"window_s": window, "handshake": handshake, "policy": refused},
        "search": {
            "q": q,
            "offset": offset,
            "limit": limit,
            "total": total,
            "sessions": [_session_info(s) for s in page],
        },
    }
