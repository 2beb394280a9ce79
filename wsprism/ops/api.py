"""The server API for backends (SPEC section 10): an aiohttp.web app on `gateway.api.listen`.

    POST /v1/publish     {"tenant","room","svc","type","data"?}      → {"delivered": n, "offset"?, "epoch"?}
    POST /v1/send        {"tenant","user","svc","type","data"?}      → {"delivered": n}
    POST /v1/disconnect  {"tenant","user","code"?,"reason"?}         → {"delivered": n}
    GET  /v1/presence?tenant=&room=&limit=                           → {"count": n, "users": [...]}
    GET  /v1/stats?tenant=                                           → {"sessions","rooms","users"}
    GET  /v1/history?tenant=&room=&since=&epoch=&limit=              → {"epoch","offset","complete","messages"}
    GET  /v1/admin/state?tenant=&q=&offset=&limit=&top=              → the admin page's data (ops/admin.py)
    GET  /admin/                                                     → the admin page (static, no data)

`Authorization: Bearer <key>`; each key belongs to one tenant (`gateway.api.keys`, read
from env or file at start and again after each reload, so a key file can be rotated). No or an unknown
key → 401; a key of another tenant (or of no configured tenant) → 403. Bodies are strict
JSON (unknown fields, wrong types → 400 naming the field), at most MAX_BODY bytes (413).
Every answer but the admin page's files is JSON; errors are `{"error": "...", "field"?: "..."}`. A request is
checked completely before anything is delivered, and delivery runs without yielding to
the event loop, so nothing is ever half-applied.

With a broker (SPEC 11) every route spans every node: publish, send and disconnect
reach the other nodes' sessions too, and `delivered` counts them (sessions in the room
on other nodes as those nodes last told Redis, within a loop turn of any join; sessions
of the user on other nodes, as Redis has them); presence and stats come from Redis. While
the broker is down, each answers for this node alone.
"""
import asyncio
import functools
import hmac
import logging
import os
import re
from importlib.resources import files
from typing import Annotated

import msgspec
from aiohttp import web

from .. import names
from ..config import ConfigError, split_listen
from ..core import codes
from ..core.history import U64_MAX
from . import admin

log = logging.getLogger("wsprism.api")

MAX_BODY = 1024 * 1024
PRESENCE_DEFAULT = 1000
PRESENCE_MAX = 10_000
HISTORY_DEFAULT = 100
HISTORY_MAX = 10_000
UNKNOWN_TENANT = "_unknown"
ROUTES = {"/v1/publish": "publish", "/v1/send": "send", "/v1/disconnect": "disconnect",
          "/v1/presence": "presence", "/v1/stats": "stats", "/v1/history": "history",
          "/v1/admin/state": "admin_state"}

TenantId = names.TenantIdStr
RoomName = names.RoomStr
Name = names.NameStr
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_UNSET = msgspec.UNSET


class _Req(msgspec.Struct, forbid_unknown_fields=True):
    pass


class PublishReq(_Req):
    tenant: TenantId
    room: RoomName
    svc: Name
    type: Name
    data: msgspec.Raw | msgspec.UnsetType = _UNSET


class SendReq(_Req):
    tenant: TenantId
    user: UserId
    svc: Name
    type: Name
    data: msgspec.Raw | msgspec.UnsetType = _UNSET


class DisconnectReq(_Req):
    tenant: TenantId
    user: UserId
    code: Annotated[int, msgspec.Meta(ge=4000, le=4999)] = codes.CLOSE_BY_BACKEND
    reason: str = ""


class PresenceQuery(_Req):
    tenant: TenantId
    room: RoomName
    limit: Annotated[int, msgspec.Meta(ge=0, le=PRESENCE_MAX)] = PRESENCE_DEFAULT


class StatsQuery(_Req):
    tenant: TenantId


class HistoryQuery(_Req):
    tenant: TenantId
    room: RoomName
    since: Annotated[int, msgspec.Meta(ge=0)] = 0              # u64: the upper bound checked below
    epoch: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=HISTORY_MAX)] = HISTORY_DEFAULT


class AdminStateQuery(_Req):
    tenant: TenantId | None = None      # default: the key's tenant
    q: Annotated[str, msgspec.Meta(max_length=256)] = ""
    offset: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=admin.SESSIONS_MAX)] = admin.SESSIONS_LIMIT
    top: Annotated[int, msgspec.Meta(ge=0, le=admin.TOP_ROOMS_MAX)] = admin.TOP_ROOMS


# The admin page's files: no data in them, so no key needed to fetch them; the page asks
# for the key and sends it as a bearer header to the JSON routes (docs/operations.md).
ADMIN_FILES = {"": ("index.html", "text/html"), "admin.js": ("admin.js", "text/javascript"),
               "admin.css": ("admin.css", "text/css")}
ADMIN_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _admin_file(name: str) -> bytes:
    return files("wsprism.ops").joinpath("static", "admin", name).read_bytes()


_encode = msgspec.json.Encoder().encode
KEY_TENANT = web.RequestKey("tenant", str)    # the tenant of the request's bearer key
_FIELD = re.compile(r"field `([^`]+)`|at `\$\.([^`.\[]+)")


class ApiError(Exception):
    def __init__(self, status: int, msg: str, field: str | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.field = field


def _json(data, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def _error(status: int, msg: str, field: str | None = None) -> web.Response:
    out = {"error": msg}
    if field is not None:
        out["field"] = field
    return _json(out, status)


def _invalid(exc: Exception) -> ApiError:
    text = str(exc)
    m = _FIELD.search(text)
    return ApiError(400, f"invalid request: {text}", (m.group(1) or m.group(2)) if m else None)


def read_keys(cfg) -> dict[str, str]:
    """{key: tenant id} from `gateway.api.keys`; ConfigError if one cannot be read."""
    keys: dict[str, str] = {}
    for tenant_id, src in cfg.keys.items():
        path = f"gateway.api.keys.{tenant_id}"
        if src.env is not None:
            key = os.environ.get(src.env, "").strip()
            if not key:
                raise ConfigError(f"{path}.env", f"environment variable {src.env} is not set or empty")
        else:
            try:
                with open(src.file, encoding="utf-8") as fh:
                    key = fh.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}.file", f"cannot read the key file: {type(exc).__name__}") from None
            if not key:
                raise ConfigError(f"{path}.file", "the key file is empty")
        if key in keys:
            raise ConfigError(path, f"the same key is also used by tenant {keys[key]!r}")
        keys[key] = tenant_id
    return keys


class ApiServer:
    """The listener and its handlers. `counts[(tenant, route, status)]` feed the metrics."""

    def __init__(self, gateway, cfg) -> None:
        self.gateway = gateway
        self.cfg = cfg
        self.keys = read_keys(cfg)              # may raise ConfigError: fail at start
        self.counts: dict[tuple[str, str, str], int] = {}
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self.sampler = admin.Sampler(gateway)
        self._sampling: asyncio.Task | None = None
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.router.add_post("/v1/publish", self.publish)
        app.router.add_post("/v1/send", self.send)
        app.router.add_post("/v1/disconnect", self.disconnect)
        app.router.add_get("/v1/presence", self.presence)
        app.router.add_get("/v1/stats", self.stats)
        app.router.add_get("/v1/history", self.history)
        app.router.add_get("/v1/admin/state", self.admin_state)
        app.router.add_get("/admin", self.admin_redirect)
        app.router.add_get("/admin/{name:[a-z.]*}", self.admin_page)
        self.app = app

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, ssl=None, reuse_port: bool = False) -> None:
        host, port = split_listen(self.cfg.listen, "gateway.api.listen")
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl, backlog=1024, reuse_port=reuse_port or None)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        self._sampling = asyncio.get_running_loop().create_task(self.sampler.run())

    async def stop(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
            self._sampling = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- checks shared by every route ------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        route = ROUTES.get(path) or ("admin_page" if path == "/admin" or path.startswith("/admin/") else "other")
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = _error(exc.status, exc.msg, exc.field)
        except web.HTTPException as exc:        # 404, 405 and 413 from aiohttp itself
            resp = _error(exc.status, exc.reason)
        key = (request.get(KEY_TENANT, UNKNOWN_TENANT), route, str(resp.status))
        self.counts[key] = self.counts.get(key, 0) + 1
        return resp

    def _key_tenant(self, request: web.Request) -> str:
        """The tenant of the bearer key, or 401."""
        self._maybe_reload_keys()
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "missing bearer key (Authorization: Bearer <key>)")
        found = None
        for known, tenant_id in self.keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = tenant_id
        if found is None:
            raise ApiError(401, "invalid key")
        request[KEY_TENANT] = found
        return found

    def _maybe_reload_keys(self) -> None:
        cfg = self.gateway.config.gateway.api
        if cfg is None or cfg is self.cfg:
            return
        try:
            self.keys = read_keys(cfg)
        except ConfigError as exc:
            log.error("server API keys not reloaded, keeping the previous ones: %s", exc)
        self.cfg = cfg

    def _tenant(self, key_tenant: str, wanted: str):
        if wanted != key_tenant:
            raise ApiError(403, "this key is not valid for that tenant", "tenant")
        tenant = self.gateway.tenants.get(wanted)
        if tenant is None:
            raise ApiError(403, "tenant is not configured", "tenant")
        return tenant

    async def _body(self, request: web.Request, typ):
        key_tenant = self._key_tenant(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes") from None
        try:
            req = msgspec.json.decode(raw, type=typ)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise _invalid(exc) from None
        return req, self._tenant(key_tenant, req.tenant)

    def _query(self, request: web.Request, typ):
        key_tenant = self._key_tenant(request)
        query = request.query
        if len(set(query.keys())) != len(query):
            raise ApiError(400, "a query parameter is given twice")
        try:
            req = msgspec.convert(dict(query), typ, strict=False)
        except msgspec.ValidationError as exc:
            raise _invalid(exc) from None
        return req, self._tenant(key_tenant, req.tenant or key_tenant)   # optional only in AdminStateQuery

    # -- routes ------------------------------------------------------------------------------
    async def publish(self, request: web.Request) -> web.Response:
        req, tenant = await self._body(request, PublishReq)
        out = {"delivered": tenant.publish(req.room, req.svc, req.type, req.data)}
        if tenant.history is not None:          # the message's position (same turn: it is the top)
            out["offset"], out["epoch"] = tenant.history.position(req.room)
        out["delivered"] += await tenant.remote_sessions(req.room)      # other nodes' (a broker)
        return _json(out)

    async def send(self, request: web.Request) -> web.Response:
        req, tenant = await self._body(request, SendReq)
        return _json({"delivered": await tenant.send_to_user_counted(req.user, req.svc, req.type, req.data)})

    async def disconnect(self, request: web.Request) -> web.Response:
        req, tenant = await self._body(request, DisconnectReq)
        if req.code != 4000 and req.code < codes.CLOSE_BY_BACKEND:
            raise ApiError(400, "code must be 4000 or 4006-4999", "code")
        reason = req.reason.encode()
        if len(reason) > 120:
            raise ApiError(400, "reason longer than 120 bytes (UTF-8)", "reason")
        return _json({"delivered": await tenant.disconnect_user_counted(req.user, req.code, req.reason)})

    async def presence(self, request: web.Request) -> web.Response:
        req, tenant = self._query(request, PresenceQuery)
        count, users = await tenant.presence_everywhere(req.room, req.limit)
        return _json({"count": count, "users": users})

    async def stats(self, request: web.Request) -> web.Response:
        req, tenant = self._query(request, StatsQuery)
        sessions, rooms, users = await tenant.totals()
        return _json({"sessions": sessions, "rooms": rooms, "users": users})

    async def history(self, request: web.Request) -> web.Response:
        """The room's messages after `since` (oldest first, at most `limit`), the room's
        position, and `complete`: false when some after `since` are gone (trimmed, or
        `epoch` given and not the room's). The next page: since = the last one's offset."""
        req, tenant = self._query(request, HistoryQuery)
        if req.since > U64_MAX:
            raise ApiError(400, "since out of range (u64)", "since")
        if tenant.history is None:
            raise ApiError(404, "history is not enabled for this tenant (policy.history)")
        epoch, top, payloads, complete = tenant.history.read(req.room, req.since, req.epoch, req.limit)
        return _json({"epoch": epoch, "offset": top, "complete": complete,
                      "messages": [msgspec.Raw(p) for p in payloads]})

    async def admin_state(self, request: web.Request) -> web.Response:
        req, tenant = self._query(request, AdminStateQuery)
        state = admin.tenant_state(self.gateway, tenant, self.sampler, req.q, req.offset, req.limit, req.top)
        resp = _json(state)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def admin_redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": "admin/"})   # relative: behind a prefix too

    async def admin_page(self, request: web.Request) -> web.Response:
        found = ADMIN_FILES.get(request.match_info["name"])
        if found is None:
            raise ApiError(404, "not found")
        name, ctype = found
        return web.Response(body=_admin_file(name), content_type=ctype, charset="utf-8", headers=ADMIN_HEADERS)
