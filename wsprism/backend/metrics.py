"""Metrics of the backend integration, rendered at scrape time by `Gateway.extra_metrics`.

- `wsprism_webhook_requests_total{tenant,service,outcome}`: one per forwarded message;
  outcome ∈ WEBHOOK_OUTCOMES (`rejected`: refused at `max_inflight_per_session`, never sent).
- `wsprism_webhook_duration_seconds{tenant,service}`: backend round trips (histogram).
- `wsprism_auth_webhook_requests_total{tenant,outcome}`: auth webhook calls (connect and refresh).
- `wsprism_api_requests_total{tenant,route,status}`: server API calls (tenant `_unknown`
  before the key is known).

`service` comes from the config, `route` and `status` from fixed sets: never client input.
"""
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

WEBHOOK_OUTCOMES = ("ok", "error", "timeout", "unreachable", "bad_status", "bad_answer", "too_large", "rejected")
AUTH_OUTCOMES = ("ok", "refused", "timeout", "unreachable", "bad_answer", "too_large")

# backend round trip: 0.5 ms .. 60 s (timeout_ms goes up to 60000)
WEBHOOK_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


def backend_metrics(gateway):
    requests = CounterMetricFamily(
        "wsprism_webhook_requests", "Messages forwarded to service webhooks, by outcome",
        labels=["tenant", "service", "outcome"])
    duration = HistogramMetricFamily(
        "wsprism_webhook_duration_seconds", "Service webhook round trips", labels=["tenant", "service"])
    auth = CounterMetricFamily(
        "wsprism_auth_webhook_requests", "Auth webhook calls, by outcome", labels=["tenant", "outcome"])
    for tid, tenant in gateway.tenants.items():
        for svc, fwd in tenant.forwarders.items():
            for outcome, n in fwd.outcomes.items():
                requests.add_metric([tid, svc, outcome], n)
            duration.add_metric([tid, svc], fwd.latency.cumulative(), fwd.latency.sum)
        if tenant.auth.deferred:
            outcomes = tenant.auth.outcomes
            for outcome in AUTH_OUTCOMES:
                auth.add_metric([tid, outcome], outcomes.get(outcome, 0))
    yield from (requests, duration, auth)
    api = gateway.api
    if api is not None:
        calls = CounterMetricFamily(
            "wsprism_api_requests", "Server API requests", labels=["tenant", "route", "status"])
        for (tid, route, status), n in sorted(api.counts.items()):
            calls.add_metric([tid, route, status], n)
        yield calls
