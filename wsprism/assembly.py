"""Tenant assembly: builds a tenant's runtime from its config, beside the gateway.

The realtime core (core/tenant.py) holds a tenant's live state; this module hands it
everything it calls, so the core imports nothing from above it:

- the lane policy (wsprism/_fast): limits, buckets, the Hot Lane allowlist, and the
  entries the framer hands messages to: `ext_entry` (the tenant's ExtLane,
  policy/ext_lane.py), `encode_error`, and the Hot Lane table (svc_id -> handler:
  1 the built-in relay, each Python service's `hot_svc_id` its `on_hot`);
- the dispatcher's handler table (svc -> handler): the built-ins (room, chat, sys),
  webhook forwarders and Python services, all registered the same way;
- the admission rule (policy/sessions.py), the membership listeners (Python services'
  hooks), the tenant's auth (session_auth.py) and the shared HTTP client;
- with `policy.history`, its history store (core/history.py; in memory).

`apply` re-runs on reload: policy objects change for the next check; live state
(sessions, rooms, counters, forwarders' queues, Python service instances) stays. The
history store stays too, with the new size and ttl_ms; turning history off drops it,
turning it on starts a new one (new epochs: clients recovering hear `recovered: false`).
"""
import logging

from ._fast import N_HOT_SERVICES
from .auth import make_authenticator
from .core.dispatcher import Dispatcher, HandlerTable
from .core.envelope import encode_error
from .core.history import HistoryStore
from .core.tenant import Tenant
from .policy.allowlist import ExtAllowlist, HotAllowlist
from .policy.ext_lane import ExtLane
from .policy.ratelimit import new_session_bucket, new_tenant_bucket
from .policy.sessions import over_limit
from .services import BUILTIN_EXT, relay
from .services.python import PythonService, ServiceGateway, build_python_services
from .services.webhook import build_forwarders
from .session_auth import SessionAuth

log = logging.getLogger("wsprism.gateway")


def build_tenant(index: int, cfg, gateway_cfg, http, lifecycle, python: bool = True, cluster=None) -> Tenant:
    """A new tenant from `tenants[index]`. Raises AuthSetupError, or ConfigError for a
    Python service that cannot be loaded (naming `tenants[index].services...`).
    `python=False` (a tenant added by a reload) builds no Python service. `cluster`:
    the broker's side (wsprism/cluster.py), when the config has a broker."""
    tenant = Tenant(cfg.id)
    tenant.http = http
    tenant.cluster = cluster
    if cluster is not None:
        tenant.lane.relay_tap = cluster.relay_tap     # the relay (in the framer) to other nodes
    tenant.auth = SessionAuth(cfg.id, None, http, lifecycle)     # apply() gives it the authenticator
    tenant.admission_rule = over_limit
    if python:
        tenant.services = build_python_services(tenant, f"tenants[{index}]", cfg.services, ServiceGateway(tenant))
    tenant.listeners = tuple(s for s in tenant.services.values() if s.listens)
    tenant.lane.encode_error = encode_error
    apply(tenant, cfg, gateway_cfg)
    return tenant


def apply(tenant: Tenant, cfg, gateway_cfg) -> None:
    """Install (or re-install on reload) the tenant's config. Raises AuthSetupError."""
    authenticator = make_authenticator(cfg.auth)
    policy = cfg.policy
    tenant.cfg = cfg
    tenant.limits = cfg.limits
    tenant.policy = policy
    tenant.auth.authenticator = authenticator
    tenant.writer_send_timeout = gateway_cfg.writer_send_timeout_ms / 1000.0
    tenant.rooms.limits = cfg.limits
    tenant.presence_events = policy.presence_events
    _apply_history(tenant, policy.history)
    if tenant.generation:
        _reconfigure_python_services(tenant, cfg)
    webhooks = {name: svc for name, svc in cfg.services.items() if name not in tenant.services}
    tenant.forwarders = build_forwarders(cfg.id, webhooks, tenant.forwarders, tenant.http)
    table = handler_table(tenant.forwarders, tenant.services)
    tenant.dispatcher = Dispatcher(table, tenant.stats, tenant.lane)
    tenant.ext_allow = ExtAllowlist(policy.ext_allowlist)
    if tenant.ext_lane is None:
        tenant.ext_lane = ExtLane(tenant.ext_allow, tenant.dispatcher.dispatch)
        tenant.lane.ext_entry = tenant.ext_lane.on_envelope
    else:
        tenant.ext_lane.allow = tenant.ext_allow
        tenant.ext_lane.dispatch = tenant.dispatcher.dispatch
    lane = tenant.lane
    shared = lane.bucket
    if shared is not None and policy.rate_limit_scope != "connection":
        shared.configure(policy.rate_limit_rps, policy.rate_limit_burst)
    else:
        shared = new_tenant_bucket(policy)
    lane.configure(cfg.limits.max_frame_bytes, policy.hot_error_mode == "silent",
                   policy.hot_requires_active_room, HotAllowlist(policy.hot_allowlist), shared)
    lane.set_hot_handlers(hot_table(tenant.services))
    if tenant.generation:
        _rebucket_sessions(tenant, policy)
    tenant.generation += 1


def _apply_history(tenant: Tenant, cfg) -> None:
    if cfg is None:
        if tenant.history is not None:
            tenant.set_history(None)
    elif tenant.history is None:
        # with a broker, per node until the shared Redis store (docs/scaling.md)
        tenant.set_history(HistoryStore(cfg.size, cfg.ttl_ms, per_node=tenant.cluster is not None))
    else:
        tenant.history.configure(cfg.size, cfg.ttl_ms)


def handler_table(forwarders: dict, services: dict) -> HandlerTable:
    """svc -> handler: the built-ins, then webhook forwarders and Python services."""
    table = HandlerTable()
    for svc, handlers in BUILTIN_EXT.items():
        table.add_types(svc, handlers)
    for svc, fwd in forwarders.items():
        table.add_service(svc, fwd.handle)
    for svc, service in services.items():
        if service.takes_messages:
            table.add_service(svc, service.handle)
    return table


def hot_table(services: dict) -> list:
    """svc_id -> Hot Lane handler: 1 the built-in relay, then Python services."""
    table = [None] * N_HOT_SERVICES
    table[relay.SVC_ID] = relay.HANDLER
    for service in services.values():
        if service.hot_svc_id is not None:
            table[service.hot_svc_id] = service.on_hot_frame
    return table


def _reconfigure_python_services(tenant: Tenant, cfg) -> None:
    """A reload never re-imports code or rebuilds an instance: new, removed or changed
    `python`/`hot_svc_id`/`options` wait for a restart (logged); timeouts apply now."""
    running: dict[str, PythonService] = tenant.services
    wanted = {name: svc for name, svc in cfg.services.items() if svc.python is not None}
    for name in sorted(set(running) ^ set(wanted)):
        log.warning('tenant "%s": Python service "%s" %s: needs a restart', tenant.id, name,
                    "added" if name in wanted else "removed")
    for name, service in running.items():
        new = wanted.get(name)
        if new is None:
            continue
        old = service.built_cfg
        if (new.python, new.hot_svc_id, new.options) != (old.python, old.hot_svc_id, old.options):
            log.warning('tenant "%s": Python service "%s" changed (python, hot_svc_id or options): '
                        "needs a restart", tenant.id, name)
        service.configure(new)


def _rebucket_sessions(tenant: Tenant, policy) -> None:
    """On reload, live sessions take the new rate limit at their next message."""
    for session in tenant.sessions.all_sessions():
        if session.bucket is not None and policy.rate_limit_scope != "tenant":
            session.bucket.configure(policy.rate_limit_rps, policy.rate_limit_burst)
        else:
            session.bucket = new_session_bucket(policy)
