"""The counters of one tenant that the per-message path bumps (read by ops/metrics.py
at scrape time), and the one bucket histogram every duration metric uses.

The per-message decisions are C counters in the tenant's `LanePolicy` (bumped by the
framer, named by `Counter` in wsprism/_fast/codes_c.pxd), and so are the sessions closed
4005 as slow consumers, by rule (`C_SLOW_*`: the framer and the corker bump two of them
from C); the rest are plain ints here, so no lock or label lookup is paid per message.
"""
from bisect import bisect_left

from .._fast import Counter

# dispatch duration buckets: 5 µs .. 1 s (SPEC 8)
DISPATCH_BUCKETS = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
)

HANDSHAKE_REASONS = (
    "not_found", "not_upgrade", "draining", "rate_limited_global", "rate_limited_ip",
    "bad_request", "unknown_tenant", "tenant_full", "auth_failed", "too_many_sessions",
)


class Histogram:
    """Bucket counts over fixed upper bounds; `observe` is a bisect and two adds."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = DISPATCH_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound as text, count up to it)], ending with +Inf (Prometheus' shape)."""
        out, total = [], 0
        for bound, n in zip(self.buckets, self.counts):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class TenantStats:
    """Every counter of one tenant (`lane` holds the per-message decision counters)."""

    __slots__ = (
        "lane", "upgrades", "handshake_rejections", "service_errors_ext", "service_errors_hot",
        "dispatch_ext", "dispatch_hot",
    )

    def __init__(self, lane=None) -> None:
        self.lane = lane
        self.upgrades: dict[str, int] = {}
        self.handshake_rejections = dict.fromkeys(HANDSHAKE_REASONS, 0)
        self.service_errors_ext = 0
        self.service_errors_hot = 0
        self.dispatch_ext = Histogram()
        self.dispatch_hot = Histogram()
        if lane is not None:
            lane.hist_hot = self.dispatch_hot

    def counter(self, c: Counter) -> int:
        return self.lane.snapshot()[c]

    @property
    def policy(self) -> dict:
        """{(lane, decision, reason): count} of `wsprism_policy_decisions_total`."""
        counts = self.lane.snapshot()
        return {labels: counts[c] for c, labels in POLICY_LABELS.items()}

    @property
    def writer_timeouts(self) -> int:
        """Slow consumers closed for staying over the high-water mark (writer_send_timeout_ms)."""
        return self.counter(Counter.C_SLOW_SEND_TIMEOUT)

    @property
    def outbound_max_closes(self) -> int:
        """... for passing gateway.outbound_max_bytes."""
        return self.counter(Counter.C_SLOW_OUTBOUND_MAX)

    @property
    def outbound_total_closes(self) -> int:
        """... for being among the largest holders when the process passed outbound_total_max_bytes."""
        return self.counter(Counter.C_SLOW_OUTBOUND_TOTAL_MAX)

    @property
    def slow_consumer_closes(self) -> int:
        """Every 4005: the time rule and both memory rules."""
        counts = self.lane.snapshot()
        return sum(counts[c] for c in SLOW_CONSUMER_REASONS)

    @property
    def decode_errors(self) -> int:
        return self.counter(Counter.C_DECODE_ERRORS)

    @property
    def egress_drops(self) -> int:
        return self.counter(Counter.C_EGRESS_DROPS)

    def count_upgrade(self, status: int, reason: str | None) -> None:
        key = str(status)
        self.upgrades[key] = self.upgrades.get(key, 0) + 1
        if reason is not None:
            self.handshake_rejections[reason] += 1


def _policy_labels() -> dict:
    """(lane, decision, reason) of each decision counter, read off its name:
    C_EXT_DENY_NOT_ALLOWED -> ("ext", "deny", "not_allowed")."""
    out = {}
    for c in Counter:
        parts = c.name.lower().split("_", 3)           # c, lane, decision, reason
        if len(parts) == 4 and parts[1] in ("ext", "hot"):
            out[c] = (parts[1], parts[2], parts[3])
    return out


POLICY_LABELS = _policy_labels()


def _slow_consumer_reasons() -> dict:
    """`reason` of `wsprism_writer_timeouts_total` for each slow-consumer counter, read off
    its name: C_SLOW_OUTBOUND_MAX -> "outbound_max"."""
    return {c: c.name.lower()[len("c_slow_"):] for c in Counter if c.name.startswith("C_SLOW_")}


SLOW_CONSUMER_REASONS = _slow_consumer_reasons()
