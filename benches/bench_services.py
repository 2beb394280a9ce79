"""Micro-benchmarks of one Ext Lane message through a real assembled tenant, in process
(compiled path): what a Python service costs next to `sys:ping`.

    pytest benches/bench_services.py --benchmark-columns=min,median,mean,ops --benchmark-group-by=group

Each round hands one text message to a real Session (`on_text`: size, rate limit, UTF-8,
strict decode, allowlist, the dispatcher's handler table, the service, its reply and the
ack, each encoded and queued for the session's write), then drops what was queued. The
difference between a service and `ping` is what the service call itself costs: building
`ctx`/`msg`, calling `on_message` (started eagerly: no task when it does not await),
encoding its reply. benches/services_bench.py measures the same over real sockets.
"""
import asyncio
import types

import pytest

from wsprism import _fast
from wsprism.assembly import build_tenant
from wsprism.config import parse_config
from wsprism.core.session import Session

YAML = """
version: 1
tenants:
  - id: bench
    policy:
      rate_limit_rps: 1000000000
      rate_limit_burst: 1000000000
      ext_allowlist: ["sys:*", "reply:*", "replysync:*"]
    services:
      reply: {python: "benches.services_app:Reply"}
      replysync: {python: "benches.services_app:ReplySync"}
"""

MESSAGES = {
    "ping": b'{"v":1,"svc":"sys","type":"ping","seq":7,"flags":4}',
    "python async": b'{"v":1,"svc":"reply","type":"x","seq":7,"flags":4}',
    "python def": b'{"v":1,"svc":"replysync","type":"x","seq":7,"flags":4}',
}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.skipif(not _fast.USING_EXTENSIONS, reason="measures the compiled path")
@pytest.mark.parametrize("name", list(MESSAGES))
def test_ext_message(benchmark, loop, name):
    benchmark.group = "ext_message_to_service"
    benchmark.name = name
    cfg = parse_config(YAML)
    corker = _fast.Corker(loop)
    host = types.SimpleNamespace(corker=corker)
    tenant = build_tenant(0, cfg.tenants[0], cfg.gateway, None, host)
    session = Session(host, tenant, "u", "s", "", None)
    session.state = _fast.OPEN
    payload = MESSAGES[name]
    dirty = corker.dirty

    def one():
        session.on_text(payload)
        session.flush()                # no transport: drops the queued frames
        dirty.clear()

    def in_a_callback():              # as picows calls the listener: loop running, no task
        try:
            benchmark(one)
        finally:
            loop.stop()

    loop.call_soon(in_a_callback)
    loop.run_forever()
    assert tenant.stats.service_errors_ext == 0
    assert tenant.lane.snapshot()[_fast.Counter.C_EXT_ALLOW_OK] > 0
