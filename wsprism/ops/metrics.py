"""Prometheus metrics (SPEC section 8).

The per-message path only bumps plain integers in a tenant's `TenantStats`; the
`GatewayCollector` turns them into metric families when `/metrics` is scraped, so no
lock or label lookup is paid per message. Label values are tenant ids from the config
and the fixed enums below, never anything a client sent.
"""
from bisect import bisect_left

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

UNKNOWN_TENANT = "_unknown"

# policy decision keys: (lane, decision, reason)
EXT_ALLOW = ("ext", "allow", "ok")
EXT_NOT_ALLOWED = ("ext", "deny", "not_allowed")
EXT_RATE_LIMITED = ("ext", "drop", "rate_limited")
EXT_TOO_LARGE = ("ext", "deny", "too_large")
EXT_BAD_REQUEST = ("ext", "deny", "bad_request")
EXT_UNKNOWN_SERVICE = ("ext", "deny", "unknown_service")
HOT_ALLOW = ("hot", "allow", "ok")
HOT_NOT_ALLOWED = ("hot", "drop", "not_allowed")
HOT_RATE_LIMITED = ("hot", "drop", "rate_limited")
HOT_TOO_LARGE = ("hot", "deny", "too_large")
HOT_BAD_REQUEST = ("hot", "drop", "bad_request")
HOT_NO_ACTIVE_ROOM = ("hot", "drop", "no_active_room")
# in the order of the framer's counters (C_EXT_ALLOW = 0 ... C_HOT_NO_ACTIVE_ROOM = 11)
POLICY_KEYS = (
    EXT_ALLOW, EXT_NOT_ALLOWED, EXT_RATE_LIMITED, EXT_TOO_LARGE, EXT_BAD_REQUEST,
    EXT_UNKNOWN_SERVICE, HOT_ALLOW, HOT_NOT_ALLOWED, HOT_RATE_LIMITED, HOT_TOO_LARGE,
    HOT_BAD_REQUEST, HOT_NO_ACTIVE_ROOM,
)
DECODE_ERRORS = 12     # C_DECODE_ERRORS
EGRESS_DROPS = 13      # C_EGRESS_DROPS

HANDSHAKE_REASONS = (
    "not_found", "not_upgrade", "draining", "rate_limited_global", "rate_limited_ip",
    "bad_request", "unknown_tenant", "tenant_full", "auth_failed", "too_many_sessions",
)

# dispatch duration buckets: 5 µs .. 1 s
DISPATCH_BUCKETS = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
)


class Histogram:
    """Bucket counts for one (tenant, lane); `observe` is a bisect and two adds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DISPATCH_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(DISPATCH_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip(DISPATCH_BUCKETS, self.counts):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class TenantStats:
    """Every counter of one tenant. The per-message decisions are C counters in the
    tenant's LanePolicy (bumped by the framer); the rest are plain ints here."""

    __slots__ = (
        "lane", "upgrades", "handshake_rejections", "service_errors_ext", "service_errors_hot",
        "writer_timeouts", "outbound_max_closes", "outbound_total_closes", "dispatch_ext", "dispatch_hot",
    )

    def __init__(self, lane=None) -> None:
        self.lane = lane
        self.upgrades: dict[str, int] = {}
        self.handshake_rejections = dict.fromkeys(HANDSHAKE_REASONS, 0)
        self.service_errors_ext = 0
        self.service_errors_hot = 0
        self.writer_timeouts = 0          # slow consumers: over the high-water mark too long
        self.outbound_max_closes = 0      # ... past gateway.outbound_max_bytes
        self.outbound_total_closes = 0    # ... among the largest when the process passed its total
        self.dispatch_ext = Histogram()
        self.dispatch_hot = Histogram()
        if lane is not None:
            lane.hist_hot = self.dispatch_hot

    @property
    def policy(self) -> dict:
        """{(lane, decision, reason): count}, read from the lane's counters."""
        return dict(zip(POLICY_KEYS, self.lane.snapshot()))

    @property
    def slow_consumer_closes(self) -> int:
        """Every 4005: the time rule and both memory rules."""
        return self.writer_timeouts + self.outbound_max_closes + self.outbound_total_closes

    @property
    def decode_errors(self) -> int:
        return self.lane.snapshot()[DECODE_ERRORS]

    @property
    def egress_drops(self) -> int:
        return self.lane.snapshot()[EGRESS_DROPS]

    def count_upgrade(self, status: int, reason: str | None) -> None:
        key = str(status)
        self.upgrades[key] = self.upgrades.get(key, 0) + 1
        if reason is not None:
            self.handshake_rejections[reason] += 1


class GatewayCollector:
    """Reads the gateway's state at scrape time (a prometheus_client custom collector)."""

    def __init__(self, gateway) -> None:
        self._gw = gateway

    def describe(self):
        return []

    def collect(self):
        gw = self._gw
        stats = [(tid, t.stats, t) for tid, t in gw.tenants.items()] + [(UNKNOWN_TENANT, gw.unknown_stats, None)]
        upgrades = CounterMetricFamily("wsprism_ws_upgrades", "WebSocket upgrade attempts by HTTP status", labels=["tenant", "status"])
        active = GaugeMetricFamily("wsprism_ws_sessions_active", "Sessions currently open", labels=["tenant"])
        policy = CounterMetricFamily("wsprism_policy_decisions", "Policy decisions per message", labels=["tenant", "lane", "decision", "reason"])
        rejections = CounterMetricFamily("wsprism_handshake_rejections", "Handshakes refused before the upgrade", labels=["tenant", "reason"])
        decode = CounterMetricFamily("wsprism_decode_errors", "Ext Lane frames that were not valid envelopes", labels=["tenant"])
        svc_err = CounterMetricFamily("wsprism_service_errors", "Service errors returned to clients", labels=["tenant", "lane"])
        writer = CounterMetricFamily("wsprism_writer_timeouts", "Sessions closed as slow consumers (4005), by reason",
                                     labels=["tenant", "reason"])
        egress = CounterMetricFamily("wsprism_egress_drop", "Lossy frames dropped for sessions over the high-water mark", labels=["tenant"])
        dispatch = HistogramMetricFamily("wsprism_dispatch_duration_seconds", "Time to dispatch one message (Hot Lane sampled 1 in 64)", labels=["tenant", "lane"])
        for tid, s, tenant in stats:
            for status, n in sorted(s.upgrades.items()):
                upgrades.add_metric([tid, status], n)
            for reason, n in s.handshake_rejections.items():
                if n or tenant is not None:
                    rejections.add_metric([tid, reason], n)
            if tenant is None:
                continue
            active.add_metric([tid], tenant.sessions.count)
            counts = s.lane.snapshot()
            for (lane, decision, reason), n in zip(POLICY_KEYS, counts):
                policy.add_metric([tid, lane, decision, reason], n)
            decode.add_metric([tid], counts[DECODE_ERRORS])
            svc_err.add_metric([tid, "ext"], s.service_errors_ext)
            svc_err.add_metric([tid, "hot"], s.service_errors_hot)
            writer.add_metric([tid, "send_timeout"], s.writer_timeouts)
            writer.add_metric([tid, "outbound_max"], s.outbound_max_closes)
            writer.add_metric([tid, "outbound_total_max"], s.outbound_total_closes)
            egress.add_metric([tid], counts[EGRESS_DROPS])
            for lane, h in (("ext", s.dispatch_ext), ("hot", s.dispatch_hot)):
                dispatch.add_metric([tid, lane], h.cumulative(), h.sum)
        draining = GaugeMetricFamily("wsprism_draining", "1 while the gateway drains")
        draining.add_metric([], 1 if gw.draining else 0)
        yield from (upgrades, active, policy, rejections, decode, svc_err, writer, egress, dispatch, draining)
        yield from gw.extra_metrics()


def make_registry(gateway) -> CollectorRegistry:
    """The gateway's metrics, plus the standard `process_*` ones (CPU seconds, resident
    memory, open and maximum file descriptors, start time: read from /proc at scrape time),
    so the dashboard and alerts can show the one core and the descriptor limit a gateway
    lives within without a separate exporter."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
