"""Checks that msgspec cannot express: formats and rules spanning several keys.

Every failure is a ConfigError whose text is one line, "<path>: <reason>". Messages
name the offending key and, where it is not secret, the value; secrets (auth.secret,
static tickets) and URLs (which may carry credentials) are never echoed.
"""
import ipaddress
import math
import re
from urllib.parse import urlsplit

from .. import names
from .schema import AuthConfig, Config, GatewayConfig, Policy, ServiceConfig, TenantConfig

__all__ = ["ConfigError", "check_version", "split_listen", "validate"]

SUPPORTED_VERSION = 1
EXT_PART_RE = re.compile(r"[A-Za-z0-9_.-]+")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
BUILTIN_SERVICES = frozenset({"room", "sys", "chat"})
RESERVED_HTTP_PATHS = frozenset({"/v1/ws", "/v1/ws/check", "/healthz", "/readyz", "/demo"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
PYTHON_TARGET_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
HOT_SVC_IDS = range(2, 256)      # 0 is reserved, 1 is the built-in relay


class ConfigError(Exception):
    """An invalid configuration. str(e) is one line: "<path>: <reason>"."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        if reason is None:  # ConfigError("whole message")
            path, reason = "", path
        self.path = path
        self.reason = " ".join(str(reason).splitlines())  # always one line
        super().__init__(f"{path}: {self.reason}" if path else self.reason)


def split_listen(value: str, path: str = "listen") -> tuple[str, int]:
    """Split "host:port" or "[ipv6]:port" into (host, port); port 0 means any free port."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected \"host:port\", got {type(value).__name__}")
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ConfigError(path, f"expected \"[ipv6]:port\", got {value!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(path, f"{value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(path, f"expected \"host:port\", got {value!r}")
        if ":" in host:
            raise ConfigError(path, f"{value!r}: put an IPv6 address in brackets, e.g. \"[::1]:8080\"")
        if not HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise ConfigError(path, f"{value!r}: {host!r} is not a valid host")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and int(port_text) <= 65535):
        raise ConfigError(path, f"{value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def check_version(raw: dict) -> None:
    """Refuse a missing or unsupported `version` before looking at anything else."""
    if "version" not in raw:
        raise ConfigError("version", f"required key missing (this gateway reads version {SUPPORTED_VERSION})")
    version = raw["version"]
    if type(version) is not int:
        raise ConfigError("version", f"expected int, got {type(version).__name__}")
    if version != SUPPORTED_VERSION:
        raise ConfigError("version", f"unsupported config version {version} (expected {SUPPORTED_VERSION})")


def validate(cfg: Config) -> Config:
    """Run every cross-field and format check; return cfg unchanged."""
    _check_gateway(cfg.gateway, has_broker=cfg.broker is not None)
    if not cfg.tenants:
        raise ConfigError("tenants", "at least one tenant is required")
    _check_outbound(cfg)
    seen: dict[str, int] = {}
    for i, tenant in enumerate(cfg.tenants):
        path = f"tenants[{i}]"
        if not names.TENANT_ID.fullmatch(tenant.id):
            raise ConfigError(f"{path}.id", f"invalid tenant id {tenant.id!r} (expected 1-64 of A-Z a-z 0-9 _ . -)")
        if tenant.id in seen:
            raise ConfigError(f"{path}.id", f"duplicate tenant id {tenant.id!r} (also tenants[{seen[tenant.id]}])")
        seen[tenant.id] = i
        _check_tenant(tenant, path)
    if cfg.gateway.api is not None:
        for tenant_id in cfg.gateway.api.keys:
            if tenant_id not in seen:
                raise ConfigError(f"gateway.api.keys.{tenant_id}", "no tenant with this id")
    if cfg.broker is not None:
        _check_url(cfg.broker.url, "broker.url", ("redis://", "rediss://"))
        _check_redis_url(cfg.broker.url)
        if not names.TENANT_ID.fullmatch(cfg.broker.prefix):
            raise ConfigError("broker.prefix", f"invalid key prefix {cfg.broker.prefix!r} (expected 1-64 of A-Z a-z 0-9 _ . -)")
    return cfg


# --- gateway -------------------------------------------------------------------------


def _check_gateway(gw: GatewayConfig, has_broker: bool) -> None:
    host, port = split_listen(gw.listen, "gateway.listen")
    if gw.idle_timeout_ms <= gw.ping_interval_ms:
        raise ConfigError(
            "gateway.idle_timeout_ms",
            f"must be greater than gateway.ping_interval_ms ({gw.idle_timeout_ms} <= {gw.ping_interval_ms})",
        )
    if gw.workers > 1 and not has_broker:
        raise ConfigError(
            "gateway.workers",
            f"{gw.workers} workers need a shared broker: "
            "add a top-level `broker: {url: redis://...}` or set workers: 1",
        )
    hl = gw.handshake_limit
    _check_finite(hl.global_rps, "gateway.handshake_limit.global_rps")
    _check_finite(hl.per_ip_rps, "gateway.handshake_limit.per_ip_rps")
    mpath = gw.metrics.path
    if not mpath.startswith("/"):
        raise ConfigError("gateway.metrics.path", f"must start with '/', got {mpath!r}")
    if mpath in RESERVED_HTTP_PATHS or mpath.startswith(("/demo/", "/client/")):
        raise ConfigError("gateway.metrics.path", f"{mpath!r} is already used by the gateway")
    for i, entry in enumerate(gw.trusted_proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"gateway.trusted_proxies[{i}]", f"{entry!r} is not an IP address or CIDR") from None
    if gw.api is not None:
        api_host, api_port = split_listen(gw.api.listen, "gateway.api.listen")
        same_host = api_host == host or api_host in WILDCARD_HOSTS or host in WILDCARD_HOSTS
        if port != 0 and api_port == port and same_host:
            raise ConfigError("gateway.api.listen", f"port {port} is already used by gateway.listen")
        for tenant_id, key in gw.api.keys.items():
            kpath = f"gateway.api.keys.{tenant_id}"
            if (key.env is None) == (key.file is None):
                raise ConfigError(kpath, "set exactly one of `env` or `file`")
            if key.env is not None:
                _check_env_name(key.env, f"{kpath}.env")


def _check_outbound(cfg: Config) -> None:
    """The memory caps of SPEC 5 must leave room for what the gateway is configured to send."""
    gw = cfg.gateway
    cap = gw.outbound_max
    how = "" if gw.outbound_max_bytes is not None else " (4 x outbound_high_water_bytes)"
    if cap < gw.outbound_high_water_bytes:
        raise ConfigError(
            "gateway.outbound_max_bytes",
            f"{cap} is below gateway.outbound_high_water_bytes ({gw.outbound_high_water_bytes})",
        )
    if gw.outbound_total_max_bytes < cap:
        raise ConfigError(
            "gateway.outbound_total_max_bytes",
            f"{gw.outbound_total_max_bytes} is below gateway.outbound_max_bytes ({cap}{how})",
        )
    for i, tenant in enumerate(cfg.tenants):
        frame = tenant.limits.max_frame_bytes
        if cap < 2 * frame:
            raise ConfigError(
                "gateway.outbound_max_bytes",
                f"{cap}{how} is less than twice tenants[{i}].limits.max_frame_bytes ({frame}): "
                f"a session sent two such messages would be closed 4005; set it to at least {2 * frame}",
            )


# --- tenants -------------------------------------------------------------------------


def _check_tenant(tenant: TenantConfig, path: str) -> None:
    _check_policy(tenant.policy, f"{path}.policy")
    _check_auth(tenant.auth, f"{path}.auth")
    hot_ids: dict[int, str] = {}
    for name, svc in tenant.services.items():
        spath = f"{path}.services.{name}"
        if not names.SERVICE_NAME.fullmatch(name):
            raise ConfigError(spath, f"invalid service name {name!r} (expected 1-64 of A-Z a-z 0-9 _ . -)")
        if name in BUILTIN_SERVICES:
            raise ConfigError(spath, f"{name!r} is a built-in service; choose another name")
        _check_service(svc, spath)
        if svc.hot_svc_id is not None:
            other = hot_ids.get(svc.hot_svc_id)
            if other is not None:
                raise ConfigError(f"{spath}.hot_svc_id",
                                  f"hot_svc_id {svc.hot_svc_id} is also used by {path}.services.{other}")
            hot_ids[svc.hot_svc_id] = name


def _check_service(svc: ServiceConfig, spath: str) -> None:
    if (svc.webhook is None) == (svc.python is None):
        raise ConfigError(spath, "set exactly one of `webhook` (forwarded over HTTP) or `python` (in-process)")
    if svc.webhook is not None:
        _check_url(svc.webhook, f"{spath}.webhook", ("http://", "https://"))
        for key, value, unset in (("hot_svc_id", svc.hot_svc_id, None), ("options", svc.options, {})):
            if value != unset:
                raise ConfigError(f"{spath}.{key}", "only a `python` service takes this key")
        return
    if svc.batch_max_messages != 1:
        raise ConfigError(f"{spath}.batch_max_messages", "only a `webhook` service takes this key")
    if not PYTHON_TARGET_RE.fullmatch(svc.python):
        raise ConfigError(f"{spath}.python", f"expected \"module:attribute\", got {svc.python!r}")
    if svc.hot_svc_id is not None and svc.hot_svc_id not in HOT_SVC_IDS:
        raise ConfigError(f"{spath}.hot_svc_id",
                          f"must be 2-255, got {svc.hot_svc_id} (0 is reserved, 1 is the built-in relay)")


def _check_policy(policy: Policy, path: str) -> None:
    _check_finite(policy.rate_limit_rps, f"{path}.rate_limit_rps")
    for i, entry in enumerate(policy.ext_allowlist):
        svc, sep, typ = entry.partition(":")
        if not (sep and EXT_PART_RE.fullmatch(svc) and (typ == "*" or EXT_PART_RE.fullmatch(typ))):
            raise ConfigError(
                f"{path}.ext_allowlist[{i}]", f"malformed entry {entry!r} (expected <svc>:<type> or <svc>:*)"
            )
    for i, entry in enumerate(policy.hot_allowlist):
        if not _is_hot_entry(entry):
            raise ConfigError(
                f"{path}.hot_allowlist[{i}]",
                f"malformed entry {entry!r} (expected <svc_id 0-255>:<opcode 0-255 or *>)",
            )
    sessions = policy.sessions
    if sessions.mode == "single" and sessions.max_sessions_per_user != 1:
        raise ConfigError(
            f"{path}.sessions.max_sessions_per_user",
            f"mode single requires max_sessions_per_user 1, got {sessions.max_sessions_per_user}",
        )


def _is_hot_entry(entry: str) -> bool:
    svc_id, sep, opcode = entry.partition(":")
    return bool(sep) and _is_byte(svc_id) and (opcode == "*" or _is_byte(opcode))


def _is_byte(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 3 and int(text) <= 255


def _check_auth(auth: AuthConfig, path: str) -> None:
    if auth.secret_env is not None:
        _check_env_name(auth.secret_env, f"{path}.secret_env")
    if auth.mode == "static":
        if not auth.tickets:
            raise ConfigError(f"{path}.tickets", "mode static needs at least one ticket")
        for user in auth.tickets.values():
            if not user:  # the ticket (the key) is a secret: never name it
                raise ConfigError(f"{path}.tickets", "a ticket maps to an empty user id")
    elif auth.mode == "jwt":
        if not auth.algorithms:
            raise ConfigError(f"{path}.algorithms", "mode jwt needs at least one algorithm")
        if any(a.startswith("HS") for a in auth.algorithms):
            if auth.secret_env is None and auth.secret is None:
                raise ConfigError(f"{path}.secret_env", "HS256 needs `secret_env` (preferred) or `secret`")
            if auth.secret_env is not None and auth.secret is not None:
                raise ConfigError(f"{path}.secret", "set only one of `secret_env` or `secret`")
        if any(not a.startswith("HS") for a in auth.algorithms) and auth.public_key_file is None:
            raise ConfigError(f"{path}.public_key_file", "RS256/ES256 need `public_key_file`")
    elif auth.mode == "webhook":
        if auth.url is None:
            raise ConfigError(f"{path}.url", "mode webhook needs `url`")
        _check_url(auth.url, f"{path}.url", ("http://", "https://"))


# --- helpers -------------------------------------------------------------------------


def _check_url(url: str, path: str, schemes: tuple[str, ...]) -> None:
    # The URL is not echoed: it may hold a password (redis://:pw@host, https://user:pw@...).
    if not url.startswith(schemes) or url.endswith("://"):
        raise ConfigError(path, f"expected a URL starting with {' or '.join(schemes)}")


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ConfigError("broker.url", "the port must be a number from 0 to 65535") from None
    db = parts.path.lstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigError("broker.url", "the database (after the last /) must be a number")


def _check_env_name(name: str, path: str) -> None:
    if not ENV_NAME_RE.fullmatch(name):
        raise ConfigError(path, f"{name!r} is not a valid environment variable name")


def _check_finite(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise ConfigError(path, "must be a finite number")
