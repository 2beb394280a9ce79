"""The broker's counters, rendered at scrape time (`broker_metrics`), bumped as plain ints.

- `wsprism_broker_up` 1 while both links are up and the node is registered.
- `wsprism_broker_published_total{lane}` / `wsprism_broker_published_frames_total{lane}`:
  publishes this node sent (a publish packs every frame for one room of one loop turn).
- `wsprism_broker_received_total{lane}` / `..._frames_total{lane}`: from other nodes.
- `wsprism_broker_local_frames_total{lane}`: frames for a room no other node had members
  in, so not published at all (a room kept on one node costs Redis nothing per message).
- `wsprism_broker_dropped_total{lane,reason}`: frames not sent to other nodes; reason
  `down` (no link) or `backlog` (the link is over its mark; lossy frames only, or
  reliable ones past the hard cap).
- `wsprism_broker_roundtrip_seconds{op}`: request to answer: `admit` (a session), `join`
  (a room membership), `query` (presence, stats, the server API's counts) and `probe`
  (a publish coming back through Redis to this node: the pub/sub lag).
- `wsprism_broker_subscriptions`: room channels this node is subscribed to (with the ones
  lingering after their last member).
- `wsprism_broker_link_lost_total{link,reason}`: a link that went away; reason
  `closed` (Redis or the network closed it), `evicted` (Redis closed the subscriber while
  the command link stayed up: this node fell behind, client-output-buffer-limit pubsub),
  `timeout` (owed answers did not come), `probe` (subscribed but our probe never came back).
- `wsprism_broker_reconciliations_total{outcome}`: re-registrations after an outage or a
  Redis that came back empty; `wsprism_broker_reconciled_total{what,outcome}` their items
  (`session`/`membership`: `added`, `refused` (undone by the policy), `removed`).
- `wsprism_broker_nodes_reaped_total`: dead nodes this node cleaned up.
"""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..core.stats import Histogram

LANES = ("ext", "hot")
DROP_REASONS = ("down", "backlog")
LINKS = ("command", "subscriber")
LOSS_REASONS = ("closed", "evicted", "timeout", "probe")
OPS = ("admit", "join", "query", "probe")
RECONCILED = [(what, outcome) for what in ("session", "membership") for outcome in ("added", "refused", "removed")]
RTT_BUCKETS = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
)


class BrokerStats:
    __slots__ = (
        "published", "published_frames", "received", "received_frames", "local_frames", "dropped", "rtt",
        "link_lost", "reconciliations", "reconciled", "reaped",
    )

    def __init__(self) -> None:
        self.published = [0, 0]            # by lane: 0 ext, 1 hot
        self.published_frames = [0, 0]
        self.received = [0, 0]
        self.received_frames = [0, 0]
        self.local_frames = [0, 0]         # not published: no other node had members in the room
        self.dropped = {(lane, r): 0 for lane in LANES for r in DROP_REASONS}
        self.rtt = {op: Histogram(RTT_BUCKETS) for op in OPS}
        self.link_lost = {(link, r): 0 for link in LINKS for r in LOSS_REASONS}
        self.reconciliations = {"ok": 0, "failed": 0}
        self.reconciled: dict[tuple[str, str], int] = dict.fromkeys(RECONCILED, 0)
        self.reaped = 0


def broker_metrics(broker):
    s = broker.stats
    up = GaugeMetricFamily("wsprism_broker_up", "1 while this node's links to Redis are up")
    up.add_metric([], 1 if broker.up else 0)
    pub = CounterMetricFamily("wsprism_broker_published", "Publishes to other nodes", labels=["lane"])
    pubf = CounterMetricFamily("wsprism_broker_published_frames", "Frames published to other nodes", labels=["lane"])
    rcv = CounterMetricFamily("wsprism_broker_received", "Messages received from other nodes", labels=["lane"])
    rcvf = CounterMetricFamily("wsprism_broker_received_frames", "Frames received from other nodes", labels=["lane"])
    local = CounterMetricFamily("wsprism_broker_local_frames",
                                "Frames not published: no other node had members in the room", labels=["lane"])
    for i, lane in enumerate(LANES):
        pub.add_metric([lane], s.published[i])
        pubf.add_metric([lane], s.published_frames[i])
        rcv.add_metric([lane], s.received[i])
        rcvf.add_metric([lane], s.received_frames[i])
        local.add_metric([lane], s.local_frames[i])
    drop = CounterMetricFamily("wsprism_broker_dropped", "Frames not sent to other nodes", labels=["lane", "reason"])
    for (lane, reason), n in s.dropped.items():
        drop.add_metric([lane, reason], n)
    rtt = HistogramMetricFamily("wsprism_broker_roundtrip_seconds", "Broker round trips", labels=["op"])
    for op, h in s.rtt.items():
        rtt.add_metric([op], h.cumulative(), h.sum)
    lost = CounterMetricFamily("wsprism_broker_link_lost", "Links to Redis lost", labels=["link", "reason"])
    for (link, reason), n in s.link_lost.items():
        lost.add_metric([link, reason], n)
    rec = CounterMetricFamily("wsprism_broker_reconciliations", "Re-registrations with Redis", labels=["outcome"])
    for outcome, n in s.reconciliations.items():
        rec.add_metric([outcome], n)
    items = CounterMetricFamily("wsprism_broker_reconciled", "Items re-registered", labels=["what", "outcome"])
    for (what, outcome), n in sorted(s.reconciled.items()):
        items.add_metric([what, outcome], n)
    reaped = CounterMetricFamily("wsprism_broker_nodes_reaped", "Dead nodes cleaned up by this node")
    reaped.add_metric([], s.reaped)
    subs = GaugeMetricFamily("wsprism_broker_subscriptions", "Room channels this node is subscribed to")
    subs.add_metric([], len(broker.subs) + len(broker.lingering))
    yield from (up, pub, pubf, rcv, rcvf, local, drop, rtt, lost, rec, items, reaped, subs)
