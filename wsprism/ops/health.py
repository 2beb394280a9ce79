"""Health, readiness and metrics endpoints' fixed parts, and the files `gateway.demo`
serves: the demo page and the JavaScript client (clients/js, packaged in wsprism/ops/static)."""
import functools

from prometheus_client import CONTENT_TYPE_LATEST

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

# URL path -> (file in wsprism/ops/static, content type)
STATIC_FILES = {
    b"/demo/": ("demo.html", "text/html; charset=utf-8"),
    b"/client/wsprism.js": ("wsprism.js", "text/javascript; charset=utf-8"),
    b"/client/wsprism.d.ts": ("wsprism.d.ts", "text/plain; charset=utf-8"),
}
# a page of another origin may import the client as a module (which needs CORS)
_STATIC_HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"}


def static_file(path: bytes) -> tuple[bytes, str, dict] | None:
    """(body, content type, headers) for one of STATIC_FILES, else None."""
    entry = STATIC_FILES.get(path)
    if entry is None:
        return None
    return _read(entry[0]), entry[1], _STATIC_HEADERS


@functools.cache
def _read(name: str) -> bytes:
    from importlib.resources import files

    return files("wsprism.ops").joinpath("static", name).read_bytes()
