"""Pre-upgrade checks for `/v1/ws`, cheapest first (SPEC sections 1 and 14).

404 unknown path → 426 not an upgrade → 503 draining → 429 defender → 400 missing
or duplicated Host / 426 WebSocket version not 13 / 400 bad Sec-WebSocket-Key → 400
bad query → 400 unknown tenant → 503 tenant full → 401 ticket refused. Every answer is
a plain HTTP response; nothing is upgraded unless all pass. Also serves `/healthz`,
`/readyz` and the metrics path on the same port, `/v1/ws/check` (the same checks for a
client that was refused: browsers only see close 1006, SPEC 16), with `gateway.demo`
the JavaScript client and the demo page, and answers a method other than GET with 405
(`other_method`, called by the reader before picows parses the request).
"""
import re
from typing import NamedTuple
from urllib.parse import parse_qsl

from .. import names
from ..auth import AuthError
from ..ops import health
from ..ops.metrics import render
from . import http

WS_PATH = b"/v1/ws"
CHECK_PATH = b"/v1/ws/check"
# what /v1/ws/check tells a client, by the handshake rejection reason (metrics' label)
CHECK_REASONS = {"rate_limited_global": "rate_limited", "rate_limited_ip": "rate_limited"}
TICKET_RE = re.compile(r"[\x20-\x7e]{1,4096}")
_KEYS = ("tenant", "ticket", "sid")
_ALLOW_GET = {"Allow": "GET"}


class BadQuery(Exception):
    pass


def _split_plain(text: str) -> list:
    """parse_qsl's pairs for a query with no escapes ('%', '+'): split, nothing to decode.
    The usual query of every connect, at a fraction of parse_qsl's cost."""
    pairs = []
    for field in text.split("&"):
        if field:
            key, _, value = field.partition("=")
            pairs.append((key, value))
    return pairs


# The usual query, `tenant=<id>&ticket=<ticket>[&sid=<sid>]` with no escapes, in one
# match: what the general path below gives for it (tests/unit/test_query.py checks it).
# The ticket leaves out '%' and '+' (escapes) and '&' (a field's end).
_USUAL_QUERY = re.compile(
    r"tenant=(%s)&ticket=([\x20-\x24\x27-\x2a\x2c-\x7e]{1,4096})(?:&sid=(%s))?"
    % (names.TENANT_ID_PATTERN, names.SID_PATTERN))


def parse_query(raw: bytes) -> tuple[str, str, str | None]:
    """(tenant, ticket, sid) from the query string, or BadQuery with the reason."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadQuery("malformed query string") from None
    usual = _USUAL_QUERY.fullmatch(text)
    if usual is not None:
        return usual.groups()
    return _parse_query(text)


def _parse_query(text: str) -> tuple[str, str, str | None]:
    try:
        if "%" in text or "+" in text:
            pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=32)
        elif text.count("&") >= 32:
            raise ValueError("more than 32 fields")       # parse_qsl's max_num_fields
        else:
            pairs = _split_plain(text)
    except (UnicodeError, ValueError):
        raise BadQuery("malformed query string") from None
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in _KEYS:
            if key in found:
                raise BadQuery(f"{key} given twice")
            found[key] = value
    tenant = found.get("tenant")
    ticket = found.get("ticket")
    sid = found.get("sid")
    if tenant is None or not names.TENANT_ID.fullmatch(tenant):
        raise BadQuery("missing or malformed tenant")
    if ticket is None or not TICKET_RE.fullmatch(ticket):
        raise BadQuery("missing or malformed ticket")
    if sid is not None and not names.SID.fullmatch(sid):
        raise BadQuery("malformed sid")
    return tenant, ticket, sid


def ws_header_problem(headers) -> tuple[int, str, dict | None] | None:
    """RFC 6455 4.2.1, as SPEC 14 decides it: (status, body, extra headers) for an upgrade
    request the gateway refuses, None when Host, version and key are right."""
    hosts = headers.getall("Host", [])
    if len(hosts) != 1 or not hosts[0]:
        return 400, "an upgrade needs exactly one Host header", None
    if headers.getall("Sec-WebSocket-Version", []) != ["13"]:
        return 426, "unsupported WebSocket version: this server speaks version 13", \
            {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    keys = headers.getall("Sec-WebSocket-Key", [])
    if len(keys) != 1 or not _KEY.fullmatch(keys[0]):
        return 400, "an upgrade needs exactly one Sec-WebSocket-Key, the base64 of 16 bytes", None
    return None


# A Sec-WebSocket-Key that is the base64 of 16 bytes: 22 digits and "==" (what
# `b64decode(key, validate=True)` decodes to 16 bytes, which does not check the last
# digit's low bits either: tests/unit/test_upgrade_checks.py)
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def _picows_accepts(upgrade: str, connection: str) -> bool:
    """What picows' `_validate_upgrade_request` checks after the listener factory, beyond
    `ws_header_problem` (version and key are checked there): Upgrade exactly `websocket`
    and Connection exactly `upgrade`, case aside (both given lower-cased, "" when absent).
    The router refuses what picows would, before it creates a session, without computing
    the accept value (a SHA-1) that picows computes again for the 101."""
    return upgrade == "websocket" and connection == "upgrade"


class Router:
    """picows' listener factory: answers HTTP, or returns the new session's listener."""

    def __init__(self, gateway) -> None:
        self.gw = gateway

    def __call__(self, request, proto):
        path, _, query = request.path.partition(b"?")
        if path == WS_PATH:
            return self._upgrade(request, query, proto)
        if path == CHECK_PATH:
            return self._check(request, query, proto)
        gw = self.gw
        if path == b"/healthz":
            return http.plain(200, "ok")
        if path == b"/readyz":
            return http.plain(503, "draining") if gw.draining else http.plain(200, "ready")
        if path == gw.metrics_path:
            return http.ok(render(gw.metrics_registry), health.METRICS_CONTENT_TYPE)
        if gw.config.gateway.demo:
            if path == b"/demo":
                return http.redirect("/demo/")
            static = health.static_file(path)
            if static is not None:
                return http.ok(*static)
        return self._reject(gw.unknown_stats, 404, "not found", "not_found")

    def other_method(self, method: bytes, target: bytes):
        """A request whose method is not GET, whatever its path: 405 with `Allow: GET`
        (a WSUpgradeResponse; the reader writes it and hangs up). Everything this port
        serves is a GET; the server API (POST /v1/publish ...) has its own listener."""
        return self._reject(self.gw.unknown_stats, 405, "method not allowed: this port serves GET only "
                            "(the server API listens on gateway.api.listen)", "bad_request", _ALLOW_GET).response

    def _reject(self, stats, status, body, reason, headers=None):
        stats.count_upgrade(status, reason)
        return http.plain(status, body, headers)

    def _upgrade(self, request, query: bytes, proto):
        upgrade = request.headers.get("Upgrade", "").lower()
        if "websocket" not in upgrade:
            return self._reject(self.gw.unknown_stats, 426, "upgrade required: this endpoint speaks WebSocket",
                                "not_upgrade", {"Upgrade": "websocket"})
        verdict = self._admit(request, query, proto, upgrade)
        if isinstance(verdict, Refusal):
            return self._reject(*verdict)
        tenant, user, sid, ip, exp, ticket = verdict
        tenant.stats.count_upgrade(101, None)
        return self.gw.new_session(tenant, user, sid, ip, exp, ticket if tenant.auth.deferred else None)

    def _check(self, request, query: bytes, proto):
        """`GET /v1/ws/check?<the WebSocket URL's query>`: the upgrade's own checks, same
        defender and counters, answered in JSON with the status the upgrade would get
        (200 instead of 101). A webhook tenant's ticket is judged only after an upgrade
        (4007), so here it passes. Any origin may ask: a page can learn nothing here that
        opening the WebSocket would not tell it."""
        verdict = self._admit(request, query, proto, None)
        if isinstance(verdict, Refusal):
            stats, status, msg, reason, headers = verdict
            stats.count_upgrade(status, reason)
            body = {"reason": CHECK_REASONS.get(reason, reason), "msg": msg}
            if headers and "Retry-After" in headers:
                body["retry_after"] = int(headers["Retry-After"])
            return http.json(status, body, headers)
        verdict[0].stats.count_upgrade(200, None)
        return http.json(200, {"reason": "ok", "msg": "the gateway would accept this handshake now"})

    def _admit(self, request, query: bytes, proto, upgrade: str | None):
        """The checks from draining on: a Refusal, or what the new session needs.
        `upgrade`: the Upgrade header lower-cased for an upgrade, None for /v1/ws/check."""
        gw = self.gw
        unknown = gw.unknown_stats
        headers = request.headers
        if gw.draining:
            return Refusal(unknown, 503, "draining", "draining")
        ip = ""
        defender = gw.defender
        if defender.enabled or gw.needs_peer_ip:
            # the client's address: the TCP peer, or X-Forwarded-For from a trusted proxy
            ip = defender.client_ip(peer_ip(proto), headers.get("X-Forwarded-For"))
            if defender.enabled:
                verdict = defender.check(ip)
                if verdict is not None:
                    reason, retry = verdict
                    return Refusal(unknown, 429, "too many handshakes", reason, {"Retry-After": str(retry)})
        if upgrade is not None:
            connection = headers.get("Connection", "").lower()
            if connection != "upgrade" and "upgrade" in (t.strip() for t in connection.split(",")):
                headers["Connection"] = connection = "upgrade"    # picows wants exactly one token (Firefox sends two)
            problem = ws_header_problem(headers)
            if problem is not None:
                status, body, extra = problem
                return Refusal(unknown, status, body, "bad_request", extra)
            if not _picows_accepts(upgrade, connection):
                return Refusal(unknown, 400, "bad WebSocket upgrade request", "bad_request")
        try:
            tenant_id, ticket, sid = parse_query(query)
        except BadQuery as exc:
            return Refusal(unknown, 400, str(exc), "bad_request")
        tenant = gw.tenants.get(tenant_id)
        if tenant is None:
            return Refusal(unknown, 400, "unknown tenant", "unknown_tenant")
        stats = tenant.stats
        limit = tenant.limits.max_sessions_total
        if limit and tenant.sessions.count >= limit and not _replaces_live(tenant, ticket, sid):
            return Refusal(stats, 503, "tenant at max_sessions_total", "tenant_full", {"Retry-After": "1"})
        auth = tenant.auth.authenticator
        if auth.deferred:
            user, exp = None, None
        else:
            try:
                user, exp = auth.authenticate(ticket)
            except AuthError:
                return Refusal(stats, 401, "ticket rejected", "auth_failed")
        return tenant, user, sid, ip, exp, ticket


class Refusal(NamedTuple):
    """A refused handshake: whose counters, HTTP status, body text, metrics reason, headers."""
    stats: object
    status: int
    msg: str
    reason: str
    headers: dict | None = None


def _replaces_live(tenant, ticket: str, sid: str | None) -> bool:
    """A reconnect of a live (user, sid) replaces it and must not be refused as one
    session too many: "a reconnecting tab never counts twice" (SPEC 1)."""
    auth = tenant.auth.authenticator
    if sid is None or auth.deferred:
        return False
    try:
        user = auth.authenticate(ticket).user
    except AuthError:
        return False
    return tenant.sessions.find(user, sid) is not None


def peer_ip(proto) -> str:
    try:
        peer = proto.transport.underlying_transport.get_extra_info("peername")
    except AttributeError:
        return ""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""
