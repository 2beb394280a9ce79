"""Health, readiness and metrics endpoints' fixed parts."""
import functools

from prometheus_client import CONTENT_TYPE_LATEST

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


@functools.cache
def demo_page() -> bytes:
    from importlib.resources import files

    return files("wsprism.ops").joinpath("demo.html").read_bytes()
