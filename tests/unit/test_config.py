"""wsprism.config: defaults, ranges, strictness and error messages of wsprism.yaml."""
import re
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from wsprism.config import (
    Config,
    ConfigError,
    GatewayConfig,
    TenantConfig,
    load_config,
    parse_config,
    split_listen,
)
from wsprism.config import schema

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SECRET = "s3cr3t-VALUE"


# --- helpers -------------------------------------------------------------------------


def base() -> dict:
    return {"version": 1, "tenants": [{"id": "acme"}]}


def put(data: dict, path: str, value) -> dict:
    """Set `value` at a config path like "tenants[0].policy.history.size" (creating mappings)."""
    keys = [k for part in path.split(".") for k in re.split(r"\[(\d+)\]", part) if k]
    node = data
    for key, nxt in zip(keys, keys[1:]):
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def config_with(**values) -> dict:
    """base() with each value put at its path (pass paths with `**{path: value}`)."""
    data = base()
    for path, value in values.items():
        put(data, path, value)
    return data


def dump(data) -> str:
    return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def parse(data: dict) -> Config:
    return parse_config(dump(data))


def error_of(data) -> str:
    text = data if isinstance(data, str) else dump(data)
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def uncomment_examples(text: str) -> str:
    """Turn the commented-out YAML examples of wsprism.yaml into live config."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"(\s*)# (\s*(?:[A-Za-z_]+:(?:\s|$)|- ).*)", line)
        out.append(m[1] + m[2] if m else line)
    return "\n".join(out) + "\n"


# --- files ---------------------------------------------------------------------------


def test_reference_copy_is_unchanged():
    seed = Path("/work/shared/seeds/reference-wsprism.yaml")
    if seed.exists():  # only in the development workspace
        assert (DATA / "reference-wsprism.yaml").read_bytes() == seed.read_bytes()


def test_reference_yaml_loads_with_its_values():
    cfg = load_config(DATA / "reference-wsprism.yaml")
    gw = cfg.gateway
    assert cfg.version == 1 and cfg.broker is None
    assert (gw.listen, gw.ping_interval_ms, gw.idle_timeout_ms) == ("0.0.0.0:8080", 20000, 60000)
    assert (gw.writer_send_timeout_ms, gw.drain_grace_ms) == (1500, 5000)
    hl = gw.handshake_limit
    assert (hl.enabled, hl.global_rps, hl.global_burst) == (True, 500, 1000)
    assert (hl.per_ip_rps, hl.per_ip_burst, hl.max_ip_entries) == (10, 20, 50000)
    assert [t.id for t in cfg.tenants] == ["starter_plan", "enterprise_game", "internal_sys"]

    starter, game, internal = cfg.tenants
    assert msgspec.to_builtins(starter.limits) == {
        "max_frame_bytes": 4096,
        "max_sessions_total": 1000,
        "max_rooms_total": 500,
        "max_users_per_room": 50,
        "max_rooms_per_user": 5,
    }
    assert (starter.policy.rate_limit_rps, starter.policy.rate_limit_burst) == (50, 100)
    assert starter.policy.sessions == schema.SessionsPolicy(mode="single", max_sessions_per_user=1, on_exceed="kick_oldest")
    assert starter.policy.ext_allowlist == ["room:join", "room:leave", "chat:send"]
    assert starter.policy.hot_allowlist == []

    assert game.limits.max_frame_bytes == 65536 and game.limits.max_rooms_per_user == 0
    assert game.policy.hot_error_mode == "silent" and game.policy.hot_requires_active_room is True
    assert game.policy.ext_allowlist == ["room:*", "match:*", "chat:*"]
    assert game.policy.hot_allowlist == ["1:*", "2:10"]
    assert game.policy.sessions == schema.SessionsPolicy(mode="multi", max_sessions_per_user=4, on_exceed="deny")

    assert internal.limits.max_frame_bytes == 1048576
    assert internal.policy.rate_limit_scope == "tenant"
    assert internal.policy.ext_allowlist == ["sys:*", "metrics:subscribe"]
    assert internal.policy.hot_allowlist == []  # key absent: default
    assert all(t.auth.mode == "dev" for t in cfg.tenants)


def test_bundled_dev_config_loads():
    cfg = load_config(REPO / "wsprism.yaml")
    assert cfg.gateway.listen == "0.0.0.0:8080" and cfg.gateway.workers == 1
    (acme,) = cfg.tenants
    assert acme.id == "acme" and acme.auth.mode == "dev"
    assert acme.policy.ext_allowlist == ["room:join", "room:leave", "room:presence", "chat:send", "sys:*"]
    assert acme.policy.hot_allowlist == ["1:*"]
    assert acme.policy.sessions == schema.SessionsPolicy(mode="multi", max_sessions_per_user=4, on_exceed="deny")


def test_bundled_dev_config_examples_are_valid():
    """Uncommenting every example in wsprism.yaml still gives a valid config."""
    text = uncomment_examples((REPO / "wsprism.yaml").read_text())
    cfg = parse_config(text)
    gw = cfg.gateway
    assert gw.workers == 4 and cfg.broker is not None
    assert gw.api is not None and gw.tls is not None and gw.demo is True
    assert gw.handshake_limit.enabled is False and gw.trusted_proxies
    assert [t.auth.mode for t in cfg.tenants] == ["dev", "static", "jwt", "webhook"]
    acme = cfg.tenants[0]
    assert acme.policy.presence_events is True and acme.policy.history is not None
    assert "match" in acme.services


def test_full_fixture_sets_every_key():
    cfg = load_config(DATA / "config_full.yaml")
    gw = cfg.gateway
    assert gw.listen == "[::]:9443" and split_listen(gw.listen) == ("::", 9443)
    assert gw.handshake_limit.global_rps == 250.5 and gw.handshake_limit.per_ip_rps == 2.0
    assert gw.metrics == schema.MetricsConfig(enabled=False, path="/internal/metrics")
    assert gw.log == schema.LogConfig(format="json", level="debug")
    assert gw.api.keys["bank"] == schema.ApiKey(file="/run/secrets/bank_api_key")
    assert gw.api.tls == schema.TlsConfig(cert_file="certs/api.pem", key_file="certs/api.key")
    assert cfg.broker.url.startswith("rediss://")
    acme, bank, game = cfg.tenants
    assert acme.policy.history == schema.HistoryConfig(size=500, ttl_ms=60000)
    assert acme.auth.tickets == {"tkA": "alice", "tkB": "bob"}
    assert acme.services["match"] == schema.ServiceConfig(
        webhook="http://127.0.0.1:9000/ws/match", timeout_ms=500, max_inflight_per_session=4
    )
    assert bank.auth.algorithms == ["HS256", "RS256"] and bank.auth.require_exp is False
    assert game.id == "game.eu-1" and game.auth.timeout_ms == 750
    # every gateway key differs from its default
    defaults = msgspec.to_builtins(GatewayConfig())
    assert all(value != defaults[key] for key, value in msgspec.to_builtins(gw).items())


def test_load_config_missing_file():
    with pytest.raises(ConfigError, match=r"^/no/such/wsprism\.yaml: cannot read file"):
        load_config("/no/such/wsprism.yaml")


def test_load_config_reads_a_path(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("version: 1\ntenants: [{id: t1}]\n")
    assert load_config(path).tenants[0].id == "t1"
    assert load_config(str(path)).tenants[0].id == "t1"


# --- defaults ------------------------------------------------------------------------

DEFAULT_GATEWAY = {
    "listen": "0.0.0.0:8080",
    "ping_interval_ms": 20000,
    "idle_timeout_ms": 60000,
    "writer_send_timeout_ms": 1500,
    "drain_grace_ms": 2000,
    "handshake_limit": {
        "enabled": False,
        "global_rps": 100,
        "global_burst": 200,
        "per_ip_rps": 10,
        "per_ip_burst": 50,
        "max_ip_entries": 50000,
    },
    "metrics": {"enabled": True, "path": "/metrics"},
    "log": {"format": "text", "level": "info"},
    "outbound_high_water_bytes": 1048576,
    "outbound_max_bytes": None,
    "outbound_total_max_bytes": 268435456,
    "trusted_proxies": [],
    "workers": 1,
    "api": None,
    "tls": None,
    "demo": False,
}

DEFAULT_TENANT = {
    "id": "acme",
    "limits": {
        "max_frame_bytes": 4096,
        "max_sessions_total": 0,
        "max_rooms_total": 0,
        "max_users_per_room": 0,
        "max_rooms_per_user": 0,
    },
    "policy": {
        "rate_limit_rps": 200,
        "rate_limit_burst": 400,
        "rate_limit_scope": "connection",
        "ext_allowlist": ["room:join", "room:leave"],
        "hot_allowlist": [],
        "hot_error_mode": "sys_error",
        "hot_requires_active_room": True,
        "sessions": {"mode": "multi", "max_sessions_per_user": 4, "on_exceed": "deny"},
        "presence_events": False,
        "history": None,
    },
    "auth": {
        "mode": "dev",
        "tickets": {},
        "algorithms": ["HS256"],
        "secret_env": None,
        "secret": None,
        "public_key_file": None,
        "audience": None,
        "issuer": None,
        "leeway_ms": 5000,
        "require_exp": True,
        "url": None,
        "timeout_ms": 2000,
    },
    "services": {},
}


def test_every_default():
    cfg = parse(base())
    assert msgspec.to_builtins(cfg) == {
        "version": 1,
        "gateway": DEFAULT_GATEWAY,
        "tenants": [DEFAULT_TENANT],
        "broker": None,
    }
    assert cfg.gateway == GatewayConfig()
    assert cfg.tenants[0] == TenantConfig(id="acme")


def test_defaults_of_optional_sections():
    data = config_with(
        **{
            "gateway.api": {},
            "tenants[0].policy.history": {},
            "tenants[0].services.match": {"webhook": "http://b/x"},
        }
    )
    cfg = parse(data)
    assert msgspec.to_builtins(cfg.gateway.api) == {"listen": "127.0.0.1:8090", "keys": {}, "tls": None}
    assert msgspec.to_builtins(cfg.tenants[0].policy.history) == {"size": 100, "ttl_ms": 300000}
    assert msgspec.to_builtins(cfg.tenants[0].services["match"]) == {
        "webhook": "http://b/x",
        "python": None,
        "hot_svc_id": None,
        "options": {},
        "timeout_ms": None,          # 2000 for a webhook, 5000 for a Python service
        "max_inflight_per_session": 16,
        "batch_max_messages": 1,
    }


def test_defaults_do_not_share_mutable_state():
    a, b = parse(base()), parse(base())
    assert a.tenants[0].policy.ext_allowlist is not b.tenants[0].policy.ext_allowlist


def test_structs_are_strict_frozen_and_keyword_only():
    for name in schema.__all__:
        cls = getattr(schema, name)
        assert issubclass(cls, msgspec.Struct)
        assert cls.__struct_config__.forbid_unknown_fields and cls.__struct_config__.frozen
    with pytest.raises(TypeError):
        schema.Limits(4096)  # positional
    with pytest.raises(AttributeError):
        parse(base()).gateway.workers = 2


# --- ranges --------------------------------------------------------------------------

MIB = 1024 * 1024
SVC = {"tenants[0].services.match.webhook": "http://127.0.0.1:9000/m"}

# (path, values just inside, values just outside, other keys needed for a valid config)
RANGES = [
    ("gateway.ping_interval_ms", [5000, 120000], [4999, 120001], {"gateway.idle_timeout_ms": 600000}),
    ("gateway.idle_timeout_ms", [10000, 600000], [9999, 600001], {"gateway.ping_interval_ms": 5000}),
    ("gateway.writer_send_timeout_ms", [50, 60000], [49, 60001], {}),
    ("gateway.drain_grace_ms", [0, 600000], [-1, 600001], {}),
    ("gateway.handshake_limit.global_rps", [0.001, 1], [0, -1], {}),
    ("gateway.handshake_limit.global_burst", [1], [0], {}),
    ("gateway.handshake_limit.per_ip_rps", [0.001, 1], [0, -1], {}),
    ("gateway.handshake_limit.per_ip_burst", [1], [0], {}),
    ("gateway.handshake_limit.max_ip_entries", [1], [0], {}),
    ("gateway.outbound_high_water_bytes", [1], [0], {"gateway.outbound_max_bytes": 8192}),
    ("gateway.outbound_max_bytes", [8192, 2**63 - 1], [0, 2**63], {"gateway.outbound_high_water_bytes": 1,
                                                                 "gateway.outbound_total_max_bytes": 2**63 - 1}),
    ("gateway.outbound_total_max_bytes", [4 * MIB, 2**63 - 1], [0, 2**63], {}),
    ("gateway.workers", [1, 64], [0, 65], {"broker.url": "redis://127.0.0.1:6379/0"}),
    ("tenants[0].limits.max_frame_bytes", [1, 64 * MIB], [0, 64 * MIB + 1], {"gateway.outbound_max_bytes": 128 * MIB}),
    ("tenants[0].limits.max_sessions_total", [0], [-1], {}),
    ("tenants[0].limits.max_rooms_total", [0], [-1], {}),
    ("tenants[0].limits.max_users_per_room", [0], [-1], {}),
    ("tenants[0].limits.max_rooms_per_user", [0], [-1], {}),
    ("tenants[0].policy.rate_limit_rps", [0.001, 1], [0, -0.5], {}),
    ("tenants[0].policy.rate_limit_burst", [1], [0], {}),
    ("tenants[0].policy.sessions.max_sessions_per_user", [1], [0], {}),
    ("tenants[0].policy.history.size", [1, 100000], [0, 100001], {}),
    ("tenants[0].policy.history.ttl_ms", [1000], [999], {}),
    ("tenants[0].auth.leeway_ms", [0], [-1], {}),
    ("tenants[0].auth.timeout_ms", [1, 60000], [0, 60001], {}),
    ("tenants[0].services.match.timeout_ms", [1, 60000], [0, 60001], SVC),
    ("tenants[0].services.match.max_inflight_per_session", [1], [0], SVC),
    ("tenants[0].services.match.batch_max_messages", [1, 1000], [0, 1001], SVC),
]


def _get(cfg: Config, path: str):
    node = cfg
    for key in [k for part in path.split(".") for k in re.split(r"\[(\d+)\]", part) if k]:
        node = node[int(key)] if key.isdigit() else node[key] if isinstance(node, dict) else getattr(node, key)
    return node


@pytest.mark.parametrize(
    "path, value, extra",
    [(p, v, e) for p, inside, _, e in RANGES for v in inside],
)
def test_range_just_inside(path, value, extra):
    cfg = parse(config_with(**extra, **{path: value}))
    assert _get(cfg, path) == value


@pytest.mark.parametrize(
    "path, value, extra",
    [(p, v, e) for p, _, outside, e in RANGES for v in outside],
)
def test_range_just_outside(path, value, extra):
    message = error_of(config_with(**extra, **{path: value}))
    assert message.startswith(f"{path}: must be ")
    assert message.endswith(f", got {value}")


@pytest.mark.parametrize("path", ["gateway.handshake_limit.global_rps", "tenants[0].policy.rate_limit_rps"])
def test_rates_must_be_finite(path):
    assert error_of(config_with(**{path: float("inf")})) == f"{path}: must be a finite number"


def test_idle_timeout_must_exceed_ping_interval():
    data = config_with(**{"gateway.ping_interval_ms": 30000, "gateway.idle_timeout_ms": 30000})
    assert error_of(data).startswith("gateway.idle_timeout_ms: must be greater than gateway.ping_interval_ms")
    put(data, "gateway.idle_timeout_ms", 30001)
    assert parse(data).gateway.idle_timeout_ms == 30001


# --- strictness ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "gatway",
        "gateway.handshake_limit.enable",
        "gateway.metrics.paht",
        "gateway.log.fmt",
        "gateway.api.keys.acme.envv",
        "gateway.api.tls.cert",
        "gateway.tls.cert",
        "tenants[1].limitz",
        "tenants[0].limits.max_frame_byte",
        "tenants[0].policy.sessions.modes",
        "tenants[0].policy.history.sz",
        "tenants[0].auth.secrets",
        "tenants[0].services.match.timout",
        "broker.uri",
    ],
)
def test_unknown_key_is_named_with_its_path(path):
    data = config_with(
        **{
            "gateway.api.keys.acme.env": "ACME_API_KEY",
            "gateway.api.tls.cert_file": "a.pem",
            "gateway.api.tls.key_file": "a.key",
            "tenants[0].services.ok.webhook": "http://b/ok",
            "tenants[0].services.match.webhook": "http://b/m",
        }
    )
    data["tenants"].append({"id": "bank"})
    if path.startswith("broker"):
        put(data, "broker.url", "redis://r")
    if path.startswith("gateway.tls"):
        put(data, "gateway.tls", {"cert_file": "c.pem", "key_file": "c.key"})
    put(data, path, 1)
    assert error_of(data) == f"{path}: unknown key"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("gateway.listen", 8080, "gateway.listen: expected str, got int"),
        ("gateway.workers", "2", "gateway.workers: expected int, got str"),
        ("gateway.workers", 2.0, "gateway.workers: expected int, got float"),
        ("gateway.demo", "yes", "gateway.demo: expected bool, got str"),
        ("gateway.log.format", "xml", "gateway.log.format: invalid value 'xml' (expected one of: json, text)"),
        ("gateway.log.level", "INFO", "gateway.log.level: invalid value 'INFO' (expected one of: debug, error, info, warning)"),
        ("gateway.handshake_limit.enabled", 1, "gateway.handshake_limit.enabled: expected bool, got int"),
        ("gateway.trusted_proxies", "10.0.0.0/8", "gateway.trusted_proxies: expected list, got str"),
        ("gateway.api", [], "gateway.api: expected mapping or null, got list"),
        (
            "gateway.handshake_limit",
            None,
            "gateway.handshake_limit: expected mapping, got null (an empty section: add keys under it or remove it)",
        ),
        ("tenants", {"id": "a"}, "tenants: expected list, got mapping"),
        ("tenants[0]", "acme", "tenants[0]: expected mapping, got str"),
        ("tenants[0].id", 7, "tenants[0].id: expected str, got int"),
        ("tenants[0].limits.max_frame_bytes", "4k", "tenants[0].limits.max_frame_bytes: expected int, got str"),
        ("tenants[0].policy.ext_allowlist", ["room:join", 5], "tenants[0].policy.ext_allowlist[1]: expected str, got int"),
        ("tenants[0].policy.rate_limit_scope", "global", "tenants[0].policy.rate_limit_scope: invalid value 'global' (expected one of: both, connection, tenant)"),
        ("tenants[0].policy.sessions.on_exceed", "kick", "tenants[0].policy.sessions.on_exceed: invalid value 'kick' (expected one of: deny, kick_oldest)"),
        ("tenants[0].auth.mode", "ldap", "tenants[0].auth.mode: invalid value 'ldap' (expected one of: dev, jwt, static, webhook)"),
        ("tenants[0].auth.algorithms", ["HS512"], "tenants[0].auth.algorithms[0]: invalid value 'HS512' (expected one of: ES256, HS256, RS256)"),
        ("tenants[0].auth.secret_env", "", "tenants[0].auth.secret_env: must not be empty"),
        ("tenants[0].services", {1: {"webhook": "http://b"}}, "tenants[0].services: keys must be strings"),
        ("tenants[0].services.m", {"webhook": 5}, "tenants[0].services.m.webhook: expected str or null, got int"),
        ("tenants[0].services.m", {"python": 5}, "tenants[0].services.m.python: expected str or null, got int"),
        ("tenants[0].services.m", {"python": "a:B", "hot_svc_id": "7"}, "tenants[0].services.m.hot_svc_id: expected int or null, got str"),
        ("tenants[0].services.m", {"python": "a:B", "options": [1]}, "tenants[0].services.m.options: expected mapping, got list"),
    ],
)
def test_wrong_types_name_path_and_expected_type(path, value, expected):
    assert error_of(config_with(**{path: value})) == expected


def test_empty_section_hint():
    message = error_of("version: 1\ngateway:\ntenants: [{id: a}]\n")
    assert message.startswith("gateway: expected mapping, got null (an empty section")


def test_unquoted_hot_entry_gets_a_quoting_hint():
    text = "version: 1\ntenants:\n  - id: a\n    policy:\n      hot_allowlist:\n        - 2:10\n"
    message = error_of(text)  # YAML 1.1 reads 2:10 as the base-60 number 130
    assert message.startswith("tenants[0].policy.hot_allowlist[0]: expected str, got int (quote entries")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "config: the file is empty"),
        ("# only a comment\n\n", "config: the file is empty"),
        ("- version: 1\n", "config: the top level must be a mapping, got a list"),
        ("wsprism\n", "config: the top level must be a mapping, got a string"),
        ("42\n", "config: the top level must be a mapping, got int"),
        ("version: 1\n3: x\ntenants: [{id: a}]\n", "config: keys must be strings"),
    ],
)
def test_bad_documents(text, expected):
    assert error_of(text) == expected


@pytest.mark.parametrize(
    "text, line",
    [
        ("version: 1\ntenants:\n  - id: a\n   limits: {}\n", 4),
        ("version: 1\ntenants: [{id: a}\n", 3),
        ("version: 1\ngateway: {listen: x: y}\n", 2),
        ("version: 1\ntenants:\n\t- id: a\n", 3),
        ("version: 1\ngateway:\n  listen: \"0.0.0.0:8080\n", 4),
    ],
)
def test_yaml_syntax_error_is_one_line_with_line_number(text, line):
    message = error_of(text)
    assert message.startswith(f"config: invalid YAML at line {line}, column ")


def test_duplicate_yaml_key_is_refused():
    text = "version: 1\ntenants:\n  - id: a\n    limits: {max_frame_bytes: 10}\n    limits: {max_frame_bytes: 20}\n"
    assert error_of(text) == "config: duplicate key at line 5, column 5"


def test_yaml_anchors_and_merge_keys_work():
    text = """
version: 1
tenants:
  - id: a
    policy: &strict
      rate_limit_rps: 5
      ext_allowlist: ["room:*"]
  - id: b
    policy:
      <<: *strict
      rate_limit_rps: 7
"""
    a, b = parse_config(text).tenants
    assert (a.policy.rate_limit_rps, b.policy.rate_limit_rps) == (5, 7)
    assert b.policy.ext_allowlist == ["room:*"]


# --- version and tenants -------------------------------------------------------------


@pytest.mark.parametrize(
    "version, expected",
    [
        (None, "version: required key missing (this gateway reads version 1)"),
        (2, "version: unsupported config version 2 (expected 1)"),
        (0, "version: unsupported config version 0 (expected 1)"),
        ("1", "version: expected int, got str"),
        (1.0, "version: expected int, got float"),
        (True, "version: expected int, got bool"),
    ],
)
def test_version(version, expected):
    data = base()
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    data["tenants"][0]["limitz"] = 1  # the version is checked before anything else
    assert error_of(data) == expected


@pytest.mark.parametrize(
    "tenants, expected",
    [
        ([], "tenants: at least one tenant is required"),
        ([{"id": "a"}, {"id": "b"}, {"id": "a"}], "tenants[2].id: duplicate tenant id 'a' (also tenants[0])"),
        ([{"id": "a"}, {}], "tenants[1].id: required key missing"),
        ([{"id": ""}], "tenants[0].id: invalid tenant id '' (expected 1-64 of A-Z a-z 0-9 _ . -)"),
        ([{"id": "a b"}], "tenants[0].id: invalid tenant id 'a b' (expected 1-64 of A-Z a-z 0-9 _ . -)"),
        ([{"id": "x" * 65}], f"tenants[0].id: invalid tenant id '{'x' * 65}' (expected 1-64 of A-Z a-z 0-9 _ . -)"),
    ],
)
def test_tenant_list(tenants, expected):
    assert error_of({"version": 1, "tenants": tenants}) == expected


def test_tenants_required():
    assert error_of({"version": 1}) == "tenants: required key missing"


def test_tenant_id_limits():
    assert parse({"version": 1, "tenants": [{"id": "x" * 64}, {"id": "A-z_0.9"}]}).tenants[1].id == "A-z_0.9"


# --- sessions, workers ---------------------------------------------------------------


def test_single_mode_requires_one_session():
    data = config_with(**{"tenants[0].policy.sessions": {"mode": "single", "max_sessions_per_user": 2}})
    assert error_of(data) == (
        "tenants[0].policy.sessions.max_sessions_per_user: mode single requires max_sessions_per_user 1, got 2"
    )
    put(data, "tenants[0].policy.sessions.max_sessions_per_user", 1)
    assert parse(data).tenants[0].policy.sessions.mode == "single"


def test_single_mode_default_max_is_refused():
    data = config_with(**{"tenants[0].policy.sessions.mode": "single"})  # default max is 4
    assert "mode single requires max_sessions_per_user 1, got 4" in error_of(data)


def test_workers_without_broker():
    message = error_of(config_with(**{"gateway.workers": 2}))
    assert message.startswith("gateway.workers: 2 workers need a shared broker")
    cfg = parse(config_with(**{"gateway.workers": 2, "broker.url": "redis://127.0.0.1:6379/0"}))
    assert cfg.gateway.workers == 2 and cfg.broker.url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("url", ["http://r:6379", "redis:/r", "r:6379", "redis://"])
def test_broker_url_scheme(url):
    assert error_of(config_with(**{"broker.url": url})) == (
        "broker.url: expected a URL starting with redis:// or rediss://"
    )


# --- allowlists ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry", ["chat", ":a", "a:", "a:b:c", "*:join", "room join", "room:jo in", "", ":", "é:x"]
)
def test_malformed_ext_entry(entry):
    data = config_with(**{"tenants[0].policy.ext_allowlist": ["room:join", entry]})
    assert error_of(data) == (
        f"tenants[0].policy.ext_allowlist[1]: malformed entry {entry!r} (expected <svc>:<type> or <svc>:*)"
    )


@pytest.mark.parametrize(
    "entry", ["x:1", "1:300", "256:1", "1", ":1", "1:", "-1:2", "1:*:2", "*:*", "1:x", " 1:2", "1:2 ", "1000:1", "²:1"]
)
def test_malformed_hot_entry(entry):
    data = config_with(**{"tenants[0].policy.hot_allowlist": ["1:*", entry]})
    assert error_of(data) == (
        f"tenants[0].policy.hot_allowlist[1]: malformed entry {entry!r} (expected <svc_id 0-255>:<opcode 0-255 or *>)"
    )


def test_valid_allowlist_entries():
    ext = ["room:*", "chat:send", "a.b-c_D:x.Y-z_1", "sys:*"]
    hot = ["0:0", "255:255", "1:*", "2:10", "007:7"]
    policy = parse(config_with(**{"tenants[0].policy.ext_allowlist": ext, "tenants[0].policy.hot_allowlist": hot}))
    assert policy.tenants[0].policy.ext_allowlist == ext
    assert policy.tenants[0].policy.hot_allowlist == hot


def test_empty_allowlists_are_allowed():
    data = config_with(**{"tenants[0].policy.ext_allowlist": [], "tenants[0].policy.hot_allowlist": []})
    assert parse(data).tenants[0].policy.ext_allowlist == []


# --- listen addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:80", ("::", 80)),
        ("localhost:0", ("localhost", 0)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
        ("gw-1.example.com:443", ("gw-1.example.com", 443)),
    ],
)
def test_split_listen(value, expected):
    assert split_listen(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "8080",
        "0.0.0.0",
        ":8080",
        "0.0.0.0:",
        "0.0.0.0:http",
        "0.0.0.0:65536",
        "0.0.0.0:-1",
        "0.0.0.0:+80",
        "0.0.0.0:١٢",
        "::1:8080",
        "[::1]8080",
        "[::1]",
        "[nothost]:80",
        "[127.0.0.1]:80",
        "host name:80",
        "-host:80",
        "",
    ],
)
def test_bad_listen(value):
    with pytest.raises(ConfigError) as info:
        split_listen(value)
    assert str(info.value).startswith("listen: ")
    assert error_of(config_with(**{"gateway.listen": value})).startswith("gateway.listen: ")
    data = config_with(**{"gateway.api.listen": value})
    assert error_of(data).startswith("gateway.api.listen: ")


def test_split_listen_custom_path():
    with pytest.raises(ConfigError, match=r"^gateway\.api\.listen: "):
        split_listen("nope", "gateway.api.listen")


@pytest.mark.parametrize(
    "gw, api, ok",
    [
        ("0.0.0.0:8080", "127.0.0.1:8080", False),
        ("127.0.0.1:8080", "127.0.0.1:8080", False),
        ("127.0.0.1:8080", "[::]:8080", False),
        ("127.0.0.1:8080", "10.0.0.1:8080", True),
        ("0.0.0.0:8080", "127.0.0.1:8090", True),
        ("127.0.0.1:0", "127.0.0.1:0", True),
    ],
)
def test_api_port_must_differ_from_gateway(gw, api, ok):
    data = config_with(**{"gateway.listen": gw, "gateway.api.listen": api})
    if ok:
        assert parse(data).gateway.api.listen == api
    else:
        assert error_of(data).startswith("gateway.api.listen: port 8080 is already used by gateway.listen")


# --- gateway extras ------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["10.0.0.0/8", "127.0.0.1", "fd00::/8", "::1", "192.168.1.7/24"])
def test_trusted_proxies_ok(entry):
    assert parse(config_with(**{"gateway.trusted_proxies": [entry]})).gateway.trusted_proxies == [entry]


@pytest.mark.parametrize("entry", ["proxy.local", "10.0.0.0/33", "300.1.1.1", ""])
def test_trusted_proxies_bad(entry):
    data = config_with(**{"gateway.trusted_proxies": ["10.0.0.1", entry]})
    assert error_of(data) == f"gateway.trusted_proxies[1]: {entry!r} is not an IP address or CIDR"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("metrics", "gateway.metrics.path: must start with '/', got 'metrics'"),
        ("", "gateway.metrics.path: must not be empty"),
        ("/healthz", "gateway.metrics.path: '/healthz' is already used by the gateway"),
        ("/v1/ws", "gateway.metrics.path: '/v1/ws' is already used by the gateway"),
    ],
)
def test_metrics_path(path, expected):
    assert error_of(config_with(**{"gateway.metrics.path": path})) == expected


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"nope": {"env": "K"}}, "gateway.api.keys.nope: no tenant with this id"),
        ({"acme": {}}, "gateway.api.keys.acme: set exactly one of `env` or `file`"),
        ({"acme": {"env": "K", "file": "/k"}}, "gateway.api.keys.acme: set exactly one of `env` or `file`"),
        ({"acme": {"env": "1BAD"}}, "gateway.api.keys.acme.env: '1BAD' is not a valid environment variable name"),
    ],
)
def test_api_keys(keys, expected):
    assert error_of(config_with(**{"gateway.api.keys": keys})) == expected


def test_tls_needs_both_files():
    data = config_with(**{"gateway.tls": {"cert_file": "c.pem"}})
    assert error_of(data) == "gateway.tls.key_file: required key missing"


# --- auth ----------------------------------------------------------------------------

AUTH = "tenants[0].auth"


@pytest.mark.parametrize(
    "auth",
    [
        {"mode": "dev"},
        {"mode": "static", "tickets": {"tkA": "alice"}},
        {"mode": "jwt", "secret_env": "ACME_JWT"},
        {"mode": "jwt", "secret": SECRET},
        {"mode": "jwt", "algorithms": ["RS256"], "public_key_file": "keys/missing.pem"},
        {"mode": "jwt", "algorithms": ["ES256", "HS256"], "public_key_file": "k.pem", "secret_env": "S"},
        {"mode": "webhook", "url": "https://backend/auth"},
        {"mode": "webhook", "url": "http://127.0.0.1:9000/auth", "timeout_ms": 100},
    ],
)
def test_auth_modes_ok(auth):
    """Env vars and key files are not looked at while parsing (auth modules do that at start)."""
    assert parse(config_with(**{AUTH: auth})).tenants[0].auth.mode == auth["mode"]


@pytest.mark.parametrize(
    "auth, expected",
    [
        ({"mode": "static"}, f"{AUTH}.tickets: mode static needs at least one ticket"),
        ({"mode": "static", "tickets": {SECRET: ""}}, f"{AUTH}.tickets: a ticket maps to an empty user id"),
        ({"mode": "jwt"}, f"{AUTH}.secret_env: HS256 needs `secret_env` (preferred) or `secret`"),
        ({"mode": "jwt", "algorithms": []}, f"{AUTH}.algorithms: mode jwt needs at least one algorithm"),
        ({"mode": "jwt", "secret_env": "S", "secret": SECRET}, f"{AUTH}.secret: set only one of `secret_env` or `secret`"),
        ({"mode": "jwt", "algorithms": ["RS256"]}, f"{AUTH}.public_key_file: RS256/ES256 need `public_key_file`"),
        ({"mode": "jwt", "secret_env": "MY-SECRET"}, f"{AUTH}.secret_env: 'MY-SECRET' is not a valid environment variable name"),
        ({"mode": "webhook"}, f"{AUTH}.url: mode webhook needs `url`"),
        ({"mode": "webhook", "url": "ftp://x"}, f"{AUTH}.url: expected a URL starting with http:// or https://"),
    ],
)
def test_auth_cross_checks(auth, expected):
    assert error_of(config_with(**{AUTH: auth})) == expected


# --- services ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, service, expected",
    [
        ("room", {"webhook": "http://b"}, "tenants[0].services.room: 'room' is a built-in service; choose another name"),
        ("chat", {"webhook": "http://b"}, "tenants[0].services.chat: 'chat' is a built-in service; choose another name"),
        ("sys", {"webhook": "http://b"}, "tenants[0].services.sys: 'sys' is a built-in service; choose another name"),
        ("a b", {"webhook": "http://b"}, "tenants[0].services.a b: invalid service name 'a b' (expected 1-64 of A-Z a-z 0-9 _ . -)"),
        ("m", {"webhook": "tcp://b"}, "tenants[0].services.m.webhook: expected a URL starting with http:// or https://"),
        ("m", {"webhook": "http://"}, "tenants[0].services.m.webhook: expected a URL starting with http:// or https://"),
        ("m", {}, "tenants[0].services.m: set exactly one of `webhook` (forwarded over HTTP) or `python` (in-process)"),
        ("m", {"webhook": "http://b", "python": "a:B"}, "tenants[0].services.m: set exactly one of `webhook` (forwarded over HTTP) or `python` (in-process)"),
        ("m", {"webhook": "http://b", "hot_svc_id": 7}, "tenants[0].services.m.hot_svc_id: only a `python` service takes this key"),
        ("m", {"webhook": "http://b", "options": {"a": 1}}, "tenants[0].services.m.options: only a `python` service takes this key"),
        ("m", {"python": "mygame.match"}, "tenants[0].services.m.python: expected \"module:attribute\", got 'mygame.match'"),
        ("m", {"python": "my game:M"}, "tenants[0].services.m.python: expected \"module:attribute\", got 'my game:M'"),
        ("m", {"python": "a:"}, "tenants[0].services.m.python: expected \"module:attribute\", got 'a:'"),
        ("m", {"python": "a:B", "hot_svc_id": 0}, "tenants[0].services.m.hot_svc_id: must be 2-255, got 0 (0 is reserved, 1 is the built-in relay)"),
        ("m", {"python": "a:B", "hot_svc_id": 1}, "tenants[0].services.m.hot_svc_id: must be 2-255, got 1 (0 is reserved, 1 is the built-in relay)"),
        ("m", {"python": "a:B", "hot_svc_id": 256}, "tenants[0].services.m.hot_svc_id: must be 2-255, got 256 (0 is reserved, 1 is the built-in relay)"),
        ("m", {"python": "a:B", "hot_svc_id": -3}, "tenants[0].services.m.hot_svc_id: must be 2-255, got -3 (0 is reserved, 1 is the built-in relay)"),
        ("m", {"python": "a:B", "timeout_ms": 0}, "tenants[0].services.m.timeout_ms: must be >= 1, got 0"),
        ("m", {"python": "a:B", "batch_max_messages": 4}, "tenants[0].services.m.batch_max_messages: only a `webhook` service takes this key"),
    ],
)
def test_services(name, service, expected):
    assert error_of(config_with(**{"tenants[0].services": {name: service}})) == expected


def test_python_services_accepted_with_every_key():
    cfg = parse(config_with(**{"tenants[0].services": {
        "match": {"python": "mygame.match:Match", "hot_svc_id": 7, "options": {"board": 3, "modes": ["a"]},
                  "timeout_ms": 250, "max_inflight_per_session": 2},
        "lobby": {"python": "mygame.lobby:Lobby.Inner", "hot_svc_id": 255},
        "hook": {"webhook": "http://b/h"},
    }}))
    match = cfg.tenants[0].services["match"]
    assert (match.python, match.hot_svc_id, match.options, match.timeout_ms) == ("mygame.match:Match", 7, {"board": 3, "modes": ["a"]}, 250)


def test_hot_svc_id_unique_per_tenant():
    services = {"a": {"python": "m:A", "hot_svc_id": 9}, "b": {"python": "m:B", "hot_svc_id": 9}}
    assert error_of(config_with(**{"tenants[0].services": services})) == \
        "tenants[0].services.b.hot_svc_id: hot_svc_id 9 is also used by tenants[0].services.a"
    # two tenants may each use the same id
    data = config_with(**{"tenants[0].services": {"a": {"python": "m:A", "hot_svc_id": 9}}})
    data["tenants"].append({"id": "other", "services": {"a": {"python": "m:A", "hot_svc_id": 9}}})
    parse(data)


# --- secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        config_with(**{AUTH: {"mode": "jwt", "secret": SECRET, "secret_env": "X"}}),
        config_with(**{AUTH: {"mode": "jwt", "secret": SECRET, "algorithms": ["RS256"]}}),
        config_with(**{AUTH: {"mode": "static", "tickets": {SECRET: 5}}}),
        config_with(**{AUTH: {"mode": "static", "tickets": {SECRET: ""}}}),
        config_with(**{AUTH: {"mode": "static", "tickets": {"a": SECRET, "b": 1}}}),
        config_with(**{AUTH: {"mode": "webhook", "url": f"ftp://u:{SECRET}@h/"}}),
        config_with(**{"broker.url": f"http://:{SECRET}@r:6379"}),
        config_with(**{"tenants[0].services.m.webhook": f"tcp://u:{SECRET}@h/"}),
        f"version: 1\ntenants:\n  - id: a\n    auth:\n      mode: static\n      tickets: {{{SECRET}: a, {SECRET}: b}}\n",
        f"version: 1\ntenants:\n  - id: a\n    auth: {{mode: jwt, secret: {SECRET}: x}}\n",
        f"version: 1\ntenants:\n  - id: a\n    auth: {{mode: jwt, secret: [{SECRET}]}}\n",
    ],
)
def test_secrets_never_appear_in_messages(data):
    assert SECRET not in error_of(data)


# --- ConfigError ---------------------------------------------------------------------


def test_config_error_parts():
    err = ConfigError("tenants[1].limitz", "unknown key")
    assert (err.path, err.reason, str(err)) == ("tenants[1].limitz", "unknown key", "tenants[1].limitz: unknown key")
    assert str(ConfigError("whole\nmessage")) == "whole message"
    assert isinstance(err, Exception)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_config_or_config_error(text):
    try:
        assert isinstance(parse_config(text), Config)
    except ConfigError as e:
        assert "\n" not in str(e)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8))
_value = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_paths = st.sampled_from(
    [p for p, *_ in RANGES]
    + ["gateway", "gateway.api", "gateway.api.keys", "gateway.tls", "broker", "tenants[0]", "tenants[0].auth",
       "tenants[0].auth.tickets", "tenants[0].services", "tenants[0].policy.sessions", "tenants[0].policy.history"]
)


@settings(max_examples=80, deadline=None)
@given(_paths, _value)
def test_any_value_anywhere_gives_config_or_config_error(path, value):
    data = config_with(**{path: value})
    try:
        parse_config(dump(data))
    except ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("url, reason", [
    ("redis://h:99999/0", "the port must be a number from 0 to 65535"),
    ("redis://h:6379/x", "the database (after the last /) must be a number"),
])
def test_broker_url_port_and_db(url, reason):
    assert error_of(config_with(**{"broker.url": url})) == f"broker.url: {reason}"


def test_broker_lease_and_prefix():
    cfg = parse(config_with(**{"broker.url": "redis://h/0"}))
    assert (cfg.broker.lease_ms, cfg.broker.prefix) == (5000, "wsp")
    assert "broker.lease_ms" in error_of(config_with(**{"broker.url": "redis://h/0", "broker.lease_ms": 500}))
    assert error_of(config_with(**{"broker.url": "redis://h/0", "broker.prefix": "a:b"})) == (
        "broker.prefix: invalid key prefix 'a:b' (expected 1-64 of A-Z a-z 0-9 _ . -)")
