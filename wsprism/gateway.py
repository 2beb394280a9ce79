"""The gateway of one process: the composition root.

`Gateway.__init__` builds every part once and holds it; nothing is attached later.

    corker, http           the write corker of the loop, the pooled HTTP client
    lifecycle              the host of every session's listener (lifecycle.py)
    tenants                one assembled Tenant per configured tenant (assembly.py)
    defender, router       the handshake defender and picows' listener factory
    metrics_registry, api  /metrics, and the server API (ops/api.py; None when off)
    cluster                the broker's side (cluster.py; None without `broker`), handed
                           to every tenant

It also runs what concerns the whole process: starting and stopping the Python
services, drain and reload.
"""
import asyncio
import logging

from . import _fast
from .assembly import apply, build_tenant
from .auth import make_authenticator
from .backend.http import HttpClient
from .backend.metrics import backend_metrics
from .broker.metrics import broker_metrics
from .cluster import Cluster
from .core import codes
from .core.history import SWEEP_BATCH
from .core.session import Session
from .core.stats import TenantStats
from .lifecycle import Lifecycle
from .ops.api import ApiServer
from .ops.metrics import make_registry
from .policy.defender import Defender
from .transport.handshake import Router

log = logging.getLogger("wsprism.gateway")

HISTORY_SWEEP_INTERVAL = 1.0    # seconds: a history record expires at most this late


class StartupError(Exception):
    """Something the config names could not start (a Python service's on_start raised)."""


def restart_changes(old, new):
    """The settings that changed and that only a restart applies."""
    og, ng = old.gateway, new.gateway
    pairs = [
        ("gateway.listen", og.listen, ng.listen),
        ("gateway.workers", og.workers, ng.workers),
        ("gateway.tls", og.tls, ng.tls),
        ("gateway.api.listen", og.api and og.api.listen, ng.api and ng.api.listen),
        ("gateway.api.tls", og.api and og.api.tls, ng.api and ng.api.tls),
        ("broker.url", old.broker and old.broker.url, new.broker and new.broker.url),
    ]
    return [key for key, a, b in pairs if a != b]


class Gateway:
    def __init__(self, config, config_path: str | None = None) -> None:
        g = config.gateway
        self.config = config
        self.config_path = config_path
        # one write per connection per loop turn, within the outbound memory budget (SPEC 5)
        self.corker = _fast.Corker(None, g.outbound_max, g.outbound_total_max_bytes)
        self.http = HttpClient()                # the one pooled client for webhooks (backend/http.py)
        self.tenants: dict = {}                 # tenant id -> core Tenant
        self.lifecycle = Lifecycle(self.corker, self.tenants, g.outbound_high_water_bytes, self._maybe_stopped)
        self.cluster = Cluster(self.tenants, self.lifecycle, config.broker) if config.broker is not None else None
        for i, tcfg in enumerate(config.tenants):
            # AuthSetupError, or ConfigError for a Python service that does not load
            self.tenants[tcfg.id] = build_tenant(i, tcfg, g, self.http, self.lifecycle, cluster=self.cluster)
        self.unknown_stats = TenantStats()      # handshakes refused before a tenant was known
        self.defender = Defender(g.handshake_limit, g.trusted_proxies)
        self.metrics_path = g.metrics.path.encode() if g.metrics.enabled else None
        self.metrics_registry = make_registry(self)
        self.router = Router(self)
        self.api = ApiServer(self, g.api) if g.api is not None else None   # reads the API keys
        self.stop_requested = asyncio.Event()   # a signal, or request_stop()
        self.stopped = asyncio.Event()          # draining, and the last session is gone
        self.needs_peer_ip = False
        self.worker: int | None = None          # this worker's index under gateway.workers > 1
        self._update_needs_ip()
        # built once, at start (a reload never imports or builds one): (config path, PythonService)
        self.python_services = [
            (f"tenants[{i}].services.{name}", service)
            for i, tenant in enumerate(self.tenants.values()) for name, service in tenant.services.items()
        ]

    @property
    def draining(self) -> bool:
        """True from the stop signal on (held by the lifecycle, which refuses late admissions)."""
        return self.lifecycle.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.lifecycle.draining = value

    def request_stop(self) -> None:
        self.stop_requested.set()

    def _update_needs_ip(self) -> None:
        self.needs_peer_ip = any(t.auth.deferred for t in self.tenants.values())

    # -- sessions ----------------------------------------------------------------------
    def new_session(self, tenant, user, sid, ip, exp, deferred_ticket=None) -> Session:
        """Called by the router once every pre-upgrade check passed."""
        tenant.sessions.reserve()
        session = Session(self.lifecycle, tenant, user, sid, ip, exp)
        session.pending_ticket = deferred_ticket     # held until the auth webhook answers
        return session

    def session_count(self) -> int:
        return sum(t.sessions.count for t in self.tenants.values())

    def _maybe_stopped(self) -> None:
        if self.draining and self.session_count() == 0:
            self.stopped.set()

    # -- metrics beyond the per-tenant counters ----------------------------------------
    def extra_metrics(self):
        yield from backend_metrics(self)
        if self.cluster is not None:
            yield from broker_metrics(self.cluster.broker)

    # -- history -----------------------------------------------------------------------
    async def sweep_history(self, interval: float = HISTORY_SWEEP_INTERVAL) -> None:
        """Expire the tenants' history records that are due (SPEC 13: kept until ttl_ms
        after their last activity), at most SWEEP_BATCH records per loop turn."""
        while True:
            await asyncio.sleep(interval)
            for tenant in list(self.tenants.values()):
                while tenant.history is not None and tenant.history.sweep(SWEEP_BATCH):
                    await asyncio.sleep(0)

    # -- Python services ---------------------------------------------------------------
    async def start_services(self) -> None:
        """Every Python service's on_start, in config order; StartupError on the first
        that raises (those already started are stopped again)."""
        started = []
        for path, service in self.python_services:
            try:
                await service.start()
            except Exception as exc:
                log.error("%s: on_start failed", path, exc_info=True)
                for other in reversed(started):
                    await other.stop()
                raise StartupError(f"{path}: on_start raised {type(exc).__name__}: {exc}") from None
            started.append(service)

    async def stop_services(self) -> None:
        """Timers first, then each service's on_stop, then what is still running."""
        gateways = {id(s.gw): s.gw for _, s in self.python_services}
        for gw in gateways.values():
            await gw.stop()
        for _, service in self.python_services:
            await service.stop()

    # -- drain -------------------------------------------------------------------------
    async def drain(self) -> None:
        """Refuse new upgrades, close every session with 1001 spread over the first half
        of drain_grace_ms, and return when all are gone or the grace is over."""
        if self.draining:
            return
        self.lifecycle.draining = True
        for tenant in self.tenants.values():
            tenant.presence_events = False          # everyone goes: no user_left storm (N²)
        grace = self.config.gateway.drain_grace_ms / 1000.0
        sessions = [s for t in self.tenants.values() for s in t.sessions.all_sessions()]
        log.info("draining %d sessions over %.1fs", len(sessions), grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if sessions:
            spread = grace / 2
            batches = max(1, min(len(sessions), 20))
            per = -(-len(sessions) // batches)
            for i in range(batches):
                for s in sessions[i * per:(i + 1) * per]:
                    s.close(codes.CLOSE_DRAINING, "server draining")
                if spread and i + 1 < batches:
                    await asyncio.sleep(spread / batches)
        # sessions still waiting for their auth webhook close when it answers (1001)
        if self.session_count():
            try:
                await asyncio.wait_for(self.stopped.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.warning("drain grace over with %d sessions left", self.session_count())

    # -- reload ------------------------------------------------------------------------
    def reload(self, new_config) -> None:
        """Apply a new config: tenants' limits and policies change for the next check."""
        new_gw = new_config.gateway
        for key in restart_changes(self.config, new_config):
            log.warning("%s changed: needs a restart to take effect", key)
        # everything that can fail (auth secrets, key files) first, so nothing is half-applied
        for tcfg in new_config.tenants:
            make_authenticator(tcfg.auth)
        staged = {}
        for i, tcfg in enumerate(new_config.tenants):
            if tcfg.id not in self.tenants:
                for name, svc in tcfg.services.items():
                    if svc.python is not None:
                        log.warning('tenant "%s": Python service "%s" needs a restart', tcfg.id, name)
                staged[tcfg.id] = build_tenant(i, tcfg, new_gw, self.http, self.lifecycle, python=False,
                                               cluster=self.cluster)
        for tcfg in new_config.tenants:
            current = self.tenants.get(tcfg.id)
            if current is not None:
                apply(current, tcfg, new_gw)
        removed = [tid for tid in self.tenants if tid not in {t.id for t in new_config.tenants}]
        self.tenants.update(staged)
        for tid in removed:
            tenant = self.tenants.pop(tid)
            tenant.presence_events = False
            for s in tenant.sessions.all_sessions():
                s.close(codes.CLOSE_DRAINING, "tenant removed")
        # listen/workers/tls keep their running values until a restart
        self.config = new_config
        self.defender.reconfigure(new_gw.handshake_limit, new_gw.trusted_proxies)
        self.metrics_path = new_gw.metrics.path.encode() if new_gw.metrics.enabled else None
        self.corker.configure(new_gw.outbound_max, new_gw.outbound_total_max_bytes)
        self.lifecycle.set_high_water(new_gw.outbound_high_water_bytes)
        self._update_needs_ip()
        log.info("configuration reloaded: %d tenants", len(self.tenants))
