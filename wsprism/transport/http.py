"""Plain HTTP answers sent by picows instead of an upgrade (status, short text body)."""
import json as _json

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

_TEXT = {"Content-Type": "text/plain; charset=utf-8"}


def plain(status: int, body: str, headers: dict | None = None) -> WSUpgradeResponseWithListener:
    hdrs = dict(_TEXT)
    if headers:
        hdrs.update(headers)
    data = (body + "\n").encode()
    if status == 200:
        resp = WSUpgradeResponse.create_ok_response(data, hdrs)
    else:
        resp = WSUpgradeResponse.create_error_response(status, data, hdrs)
    return WSUpgradeResponseWithListener(resp, None)


def ok(body: bytes, content_type: str, headers: dict | None = None) -> WSUpgradeResponseWithListener:
    resp = WSUpgradeResponse.create_ok_response(body, {"Content-Type": content_type, **(headers or {})})
    return WSUpgradeResponseWithListener(resp, None)


def redirect(location: str) -> WSUpgradeResponseWithListener:
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_redirect_response(308, location), None)


# /v1/ws/check answers: readable by a page of any origin (it tells nothing the WebSocket
# would not), never cached (its URL holds a ticket)
_CHECK = {"Content-Type": "application/json", "Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"}


def json(status: int, obj, headers: dict | None = None) -> WSUpgradeResponseWithListener:
    """A JSON answer of /v1/ws/check (with the headers above)."""
    data = _json.dumps(obj).encode()
    hdrs = {**_CHECK, **(headers or {})}
    if status == 200:
        resp = WSUpgradeResponse.create_ok_response(data, hdrs)
    else:
        resp = WSUpgradeResponse.create_error_response(status, data, hdrs)
    return WSUpgradeResponseWithListener(resp, None)
