"""Prometheus metrics (SPEC section 8).

The per-message path only bumps plain integers in a tenant's `TenantStats`; the
`GatewayCollector` turns them into metric families when `/metrics` is scraped, so no
lock or label lookup is paid per message. Label values are tenant ids from the config
and the fixed enums below, never anything a client sent.
"""
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .._fast import Counter
from ..core.history import OUTCOMES
from ..core.stats import POLICY_LABELS, SLOW_CONSUMER_REASONS

UNKNOWN_TENANT = "_unknown"


class GatewayCollector:
    """Reads the gateway's state at scrape time (a prometheus_client custom collector)."""

    def __init__(self, gateway) -> None:
        self._gw = gateway

    def describe(self):
        return []

    def collect(self):
        gw = self._gw
        stats = [(tid, t.stats, t) for tid, t in gw.tenants.items()] + [(UNKNOWN_TENANT, gw.unknown_stats, None)]
        policy_keys = list(POLICY_LABELS.items())
        slow_keys = list(SLOW_CONSUMER_REASONS.items())
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
            for counter, (lane, decision, reason) in policy_keys:
                policy.add_metric([tid, lane, decision, reason], counts[counter])
            decode.add_metric([tid], counts[Counter.C_DECODE_ERRORS])
            svc_err.add_metric([tid, "ext"], s.service_errors_ext)
            svc_err.add_metric([tid, "hot"], s.service_errors_hot)
            for counter, reason in slow_keys:
                writer.add_metric([tid, reason], counts[counter])
            egress.add_metric([tid], counts[Counter.C_EGRESS_DROPS])
            for lane, h in (("ext", s.dispatch_ext), ("hot", s.dispatch_hot)):
                dispatch.add_metric([tid, lane], h.cumulative(), h.sum)
        draining = GaugeMetricFamily("wsprism_draining", "1 while the gateway drains")
        draining.add_metric([], 1 if gw.draining else 0)
        yield from (upgrades, active, policy, rejections, decode, svc_err, writer, egress, dispatch, draining)
        yield from python_service_metrics(gw)
        yield from history_metrics([(tid, t.history) for tid, t in gw.tenants.items() if t.history is not None])
        yield from gw.extra_metrics()


def python_service_metrics(gw):
    """`wsprism_service_calls_total{tenant,service,hook,outcome}` and
    `wsprism_service_duration_seconds{tenant,service}` (on_message calls that awaited:
    the others are in `wsprism_dispatch_duration_seconds{lane="ext"}`) of the
    in-process Python services (SPEC 15); `hook` and `outcome` are fixed sets."""
    calls = CounterMetricFamily("wsprism_service_calls", "Calls into Python services' hooks, by outcome",
                                labels=["tenant", "service", "hook", "outcome"])
    duration = HistogramMetricFamily("wsprism_service_duration_seconds",
                                     "Python services' on_message calls that awaited", labels=["tenant", "service"])
    for tid, tenant in gw.tenants.items():
        for svc, service in tenant.services.items():
            for (hook, outcome), n in service.count_items():
                calls.add_metric([tid, svc, hook, outcome], n)
            duration.add_metric([tid, svc], service.latency.cumulative(), service.latency.sum)
    yield from (calls, duration)


def history_metrics(stores):
    """The tenants' room history (SPEC 13), `stores` = [(tenant id, history store)]:
    `wsprism_history_bytes`, `_messages`, `_rooms` (gauges),
    `wsprism_history_replays_total{tenant,outcome}` (joins with `since`, counted when
    their replay ends; `outcome` from history.OUTCOMES) and
    `wsprism_history_replayed_messages_total`; with a broker also
    `wsprism_history_gaps_total{tenant,outcome}` (repaired | lost) and
    `wsprism_history_unnumbered_total{tenant}` and
    `wsprism_history_epoch_resets_total{tenant}`. With a broker `_bytes` and `_messages`
    are 0 (the messages are in Redis) and `_rooms` counts the rooms this node follows."""
    nbytes = GaugeMetricFamily("wsprism_history_bytes", "Bytes of the room messages kept for recovery", labels=["tenant"])
    count = GaugeMetricFamily("wsprism_history_messages", "Room messages kept for recovery", labels=["tenant"])
    rooms = GaugeMetricFamily("wsprism_history_rooms", "Rooms with a history record (with or without members)", labels=["tenant"])
    replays = CounterMetricFamily("wsprism_history_replays", "Joins with since, by outcome", labels=["tenant", "outcome"])
    replayed = CounterMetricFamily("wsprism_history_replayed_messages", "Messages sent by replays", labels=["tenant"])
    for tid, store in stores:
        nbytes.add_metric([tid], store.nbytes)
        count.add_metric([tid], store.count)
        rooms.add_metric([tid], len(store.rooms))
        for outcome in OUTCOMES:
            replays.add_metric([tid, outcome], store.outcomes[outcome])
        replayed.add_metric([tid], store.replayed)
    out = [nbytes, count, rooms, replays, replayed]
    remote = [(tid, store) for tid, store in stores if store.remote]
    if remote:                          # with a broker (cluster_history.py)
        gaps = CounterMetricFamily("wsprism_history_gaps", "Gaps in a room's broker feed: repaired from the "
                                   "stream, or lost (no longer held)", labels=["tenant", "outcome"])
        unnumbered = CounterMetricFamily("wsprism_history_unnumbered", "History messages delivered on their node "
                                         "only, without a position (the broker was down)", labels=["tenant"])
        resets = CounterMetricFamily("wsprism_history_epoch_resets", "Rooms whose history this node ended after "
                                     "publishing to them while the broker was down (a new epoch)", labels=["tenant"])
        for tid, store in remote:
            for outcome, n in store.gaps.items():
                gaps.add_metric([tid, outcome], n)
            unnumbered.add_metric([tid], store.unnumbered)
            resets.add_metric([tid], store.resets)
        out += [gaps, unnumbered, resets]
    return out


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
