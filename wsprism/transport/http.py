"""Plain HTTP answers sent by picows instead of an upgrade (status, short text body)."""
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


def ok(body: bytes, content_type: str) -> WSUpgradeResponseWithListener:
    resp = WSUpgradeResponse.create_ok_response(body, {"Content-Type": content_type})
    return WSUpgradeResponseWithListener(resp, None)
