"""wsprism.yaml: schema (msgspec Structs), loading and validation.

    cfg = load_config("wsprism.yaml")   # or parse_config(text); both raise ConfigError
    host, port = split_listen(cfg.gateway.listen)
"""
from .load import load_config, parse_config
from .schema import (
    ApiConfig,
    ApiKey,
    AuthConfig,
    BrokerConfig,
    Config,
    GatewayConfig,
    HandshakeLimit,
    HistoryConfig,
    Limits,
    LogConfig,
    MetricsConfig,
    Policy,
    ServiceConfig,
    SessionsPolicy,
    TenantConfig,
    TlsConfig,
)
from .validate import ConfigError, split_listen

__all__ = [
    "ApiConfig",
    "ApiKey",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "ConfigError",
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
    "load_config",
    "parse_config",
    "split_listen",
]
