"""Shared fixtures: a real gateway on 127.0.0.1 (free port), real clients.

`gateway(yaml_text)` starts a gateway in a background thread with its own uvloop
event loop; tests drive it with real WebSocket clients (tests/client.py) and may read
its state through `gw.call(fn)`, which runs `fn` inside the gateway's loop.
"""
import asyncio
import os
import threading

import pytest

from wsprism.config import parse_config

BASE_YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*", "2:10"]
"""


class RunningGateway:
    def __init__(self, yaml_text: str) -> None:
        self.config = parse_config(yaml_text)
        self.loop = None
        self.gw = None
        self.port = None
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("gateway did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        import uvloop

        from wsprism.app import serve

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop

        def ready(gw, server) -> None:
            self.gw = gw
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        try:
            loop.run_until_complete(serve(self.config, None, ready))
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    def url(self, tenant: str = "acme", ticket: str = "dev", sid: str | None = None, path: str = "/v1/ws") -> str:
        q = f"tenant={tenant}&ticket={ticket}"
        if sid is not None:
            q += f"&sid={sid}"
        return f"ws://127.0.0.1:{self.port}{path}?{q}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn, *args):
        """Run fn(*args) in the gateway's loop thread and return its result."""
        async def _run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_run(), self.loop).result(5)

    def tenant(self, tid: str = "acme"):
        return self.gw.tenants[tid]

    def stop(self) -> None:
        if self.gw is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.gw.request_stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def gateway_factory():
    started: list[RunningGateway] = []

    def start(yaml_text: str = BASE_YAML) -> RunningGateway:
        gw = RunningGateway(yaml_text)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gw(gateway_factory) -> RunningGateway:
    """The default gateway: tenant acme, dev auth, rooms/chat/sys allowed, hot 1:* and 2:10."""
    return gateway_factory(BASE_YAML)


@pytest.fixture(params=["cython", "python"])
def fast_impl(request):
    """Both implementations of the _fast kernels, as namespaces with the same names."""
    import types

    if request.param == "cython":
        if os.environ.get("WSPRISM_NO_EXTENSIONS"):
            pytest.fail("cython implementation requested while WSPRISM_NO_EXTENSIONS is set")
        from wsprism._fast import bucket_c, utf8_c

        return types.SimpleNamespace(name="cython", TokenBucket=bucket_c.TokenBucket, utf8_valid=utf8_c.utf8_valid)
    from wsprism._fast import bucket_py, utf8_py

    return types.SimpleNamespace(name="python", TokenBucket=bucket_py.TokenBucket, utf8_valid=utf8_py.utf8_valid)


def pytest_collection_modifyitems(config, items):
    # Without extensions only the python twin can run: drop the cython parametrization.
    if os.environ.get("WSPRISM_NO_EXTENSIONS"):
        items[:] = [i for i in items if "[cython" not in i.nodeid and "-cython" not in i.nodeid]


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free port for the module (tests use their own key prefix)."""
    from tests.redisproc import RedisProc

    proc = RedisProc()
    yield proc
    proc.stop()


@pytest.fixture
def redis_factory():
    """Fresh redis-servers for one test (to kill and restart them)."""
    from tests.redisproc import RedisProc

    started: list = []

    def start(*extra: str) -> "RedisProc":
        proc = RedisProc(None, *extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
