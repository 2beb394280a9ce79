"""The shape of wsprism.yaml as msgspec Structs.

Attribute names are the YAML keys. Defaults and single-value ranges live here (msgspec
checks them during conversion); checks that involve more than one value, or a format
(listen addresses, allowlist entries, URLs), live in validate.py.
"""
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

__all__ = [
    "ApiConfig",
    "ApiKey",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "GatewayConfig",
    "HandshakeLimit",
    "HistoryConfig",
    "Limits",
    "LogConfig",
    "MetricsConfig",
    "Policy",
    "ServiceConfig",
    "SessionsPolicy",
    "TenantConfig",
    "TlsConfig",
]

MIB = 1024 * 1024
INT64_MAX = 2**63 - 1  # counts end up in C integers on the fast path

NonEmptyStr = Annotated[str, Meta(min_length=1)]
Positive = Annotated[int, Meta(gt=0, le=INT64_MAX)]
NonNegative = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Rate = Annotated[float, Meta(gt=0)]  # YAML ints are accepted; validate.py rejects .inf
TimeoutMs = Annotated[int, Meta(ge=1, le=60_000)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every section: unknown keys are an error, values do not change.

    (`kw_only` is not inherited, so each subclass sets it.)
    """


# --- gateway -------------------------------------------------------------------------


class HandshakeLimit(_Section, kw_only=True):
    """Token buckets in front of the upgrade: one global, one per client IP."""

    enabled: bool = False
    global_rps: Rate = 100.0
    global_burst: Positive = 200
    per_ip_rps: Rate = 10.0
    per_ip_burst: Positive = 50
    max_ip_entries: Positive = 50_000


class MetricsConfig(_Section, kw_only=True):
    """Prometheus endpoint on the gateway's own port."""

    enabled: bool = True
    path: NonEmptyStr = "/metrics"


class LogConfig(_Section, kw_only=True):
    """Log lines on stderr: `text` for a terminal, `json` (one object per line) for a
    log pipeline; lines below `level` are not written."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class TlsConfig(_Section, kw_only=True):
    """PEM files for wss:// (or https:// on the API listener)."""

    cert_file: NonEmptyStr
    key_file: NonEmptyStr


class ApiKey(_Section, kw_only=True):
    """Where a tenant's server-API bearer key comes from: an env var or a file."""

    env: NonEmptyStr | None = None
    file: NonEmptyStr | None = None


class ApiConfig(_Section, kw_only=True):
    """Server API for backends, on its own listener (off unless this section exists)."""

    listen: NonEmptyStr = "127.0.0.1:8090"
    keys: dict[str, ApiKey] = {}
    tls: TlsConfig | None = None


class GatewayConfig(_Section, kw_only=True):
    """Process-wide settings."""

    listen: NonEmptyStr = "0.0.0.0:8080"
    ping_interval_ms: Annotated[int, Meta(ge=5_000, le=120_000)] = 20_000
    idle_timeout_ms: Annotated[int, Meta(ge=10_000, le=600_000)] = 60_000
    writer_send_timeout_ms: Annotated[int, Meta(ge=50, le=60_000)] = 1_500
    drain_grace_ms: Annotated[int, Meta(ge=0, le=600_000)] = 2_000
    handshake_limit: HandshakeLimit = field(default_factory=HandshakeLimit)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    outbound_high_water_bytes: Positive = MIB
    outbound_max_bytes: Positive | None = None     # per session; None: 4 x outbound_high_water_bytes
    outbound_total_max_bytes: Positive = 256 * MIB  # all sessions of the process together
    trusted_proxies: list[str] = []
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    api: ApiConfig | None = None
    tls: TlsConfig | None = None
    demo: bool = False

    @property
    def outbound_max(self) -> int:
        """The per-session outbound cap in effect (SPEC 5: 4 x the high-water mark by default)."""
        if self.outbound_max_bytes is not None:
            return self.outbound_max_bytes
        return 4 * self.outbound_high_water_bytes


# --- tenants -------------------------------------------------------------------------


class Limits(_Section, kw_only=True):
    """Per-tenant resource caps; 0 means unlimited (except max_frame_bytes)."""

    max_frame_bytes: Annotated[int, Meta(gt=0, le=64 * MIB)] = 4096
    max_sessions_total: NonNegative = 0
    max_rooms_total: NonNegative = 0
    max_users_per_room: NonNegative = 0
    max_rooms_per_user: NonNegative = 0


class SessionsPolicy(_Section, kw_only=True):
    """How many sessions one user may hold, and what happens past that."""

    mode: Literal["single", "multi"] = "multi"
    max_sessions_per_user: Positive = 4
    on_exceed: Literal["deny", "kick_oldest"] = "deny"


class HistoryConfig(_Section, kw_only=True):
    """Per-room message history for recovery after a reconnect."""

    size: Annotated[int, Meta(ge=1, le=100_000)] = 100
    ttl_ms: Annotated[int, Meta(ge=1_000, le=INT64_MAX)] = 300_000


class Policy(_Section, kw_only=True):
    """Rate limits, allowlists and session rules of a tenant."""

    rate_limit_rps: Rate = 200.0
    rate_limit_burst: Positive = 400
    rate_limit_scope: Literal["connection", "tenant", "both"] = "connection"
    ext_allowlist: list[str] = field(default_factory=lambda: ["room:join", "room:leave"])
    hot_allowlist: list[str] = []
    hot_error_mode: Literal["sys_error", "silent"] = "sys_error"
    hot_requires_active_room: bool = True
    sessions: SessionsPolicy = field(default_factory=SessionsPolicy)
    presence_events: bool = False
    history: HistoryConfig | None = None


class AuthConfig(_Section, kw_only=True):
    """How a ticket becomes a user id. Only the keys of the chosen mode are used."""

    mode: Literal["dev", "static", "jwt", "webhook"] = "dev"
    # static
    tickets: dict[str, str] = {}
    # jwt
    algorithms: list[Literal["HS256", "RS256", "ES256"]] = field(default_factory=lambda: ["HS256"])
    secret_env: NonEmptyStr | None = None
    secret: NonEmptyStr | None = None
    public_key_file: NonEmptyStr | None = None
    audience: NonEmptyStr | None = None
    issuer: NonEmptyStr | None = None
    leeway_ms: NonNegative = 5_000
    require_exp: bool = True
    # webhook
    url: NonEmptyStr | None = None
    timeout_ms: TimeoutMs = 2_000


class ServiceConfig(_Section, kw_only=True):
    """A service of the tenant: forwarded to the backend over HTTP (`webhook`, SPEC 10),
    or a Python class run inside the gateway (`python`, SPEC 15). Exactly one of the two."""

    webhook: NonEmptyStr | None = None
    python: NonEmptyStr | None = None        # "module:attribute"
    hot_svc_id: int | None = None            # python only: 2-255, unique per tenant
    options: dict[str, Any] = {}             # python only: handed to the class
    timeout_ms: TimeoutMs | None = None      # default 2000 (webhook), 5000 (python)
    max_inflight_per_session: Positive = 16
    # > 1: a session's queued messages go to the backend together, up to this many per
    # POST, in the batch shape of docs/backend.md (opt-in: the backend must speak it)
    batch_max_messages: Annotated[int, Meta(ge=1, le=1000)] = 1


class TenantConfig(_Section, kw_only=True):
    """One isolated tenant."""

    id: str
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    auth: AuthConfig = field(default_factory=AuthConfig)
    services: dict[str, ServiceConfig] = {}


# --- root ----------------------------------------------------------------------------


class BrokerConfig(_Section, kw_only=True):
    """Redis shared by every worker and node (needed for workers > 1)."""

    url: NonEmptyStr
    lease_ms: Annotated[int, Meta(ge=1_000, le=60_000)] = 5_000
    prefix: str = "wsp"


class Config(_Section, kw_only=True):
    """The whole file."""

    version: int
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tenants: list[TenantConfig]
    broker: BrokerConfig | None = None
