"""Cost of one log line, JSON vs text (SPEC 8 / docs/operations.md "Logs").

    pytest benches/bench_logs.py --benchmark-columns=min,median,mean,ops --benchmark-group-by=group

Each round is one `logger.<level>(...)` call through a real `logging.Logger` with the
gateway's handler setup (a StreamHandler with our formatter) writing to /dev/null, so
the numbers hold the whole path: record creation, formatting, redaction, the write.

Groups:
- line_plain: a startup-style line, no context.
- line_context: a line about one session (`extra=about(...)`: tenant, user, sid,
  trace_id, svc, code), the shape of the webhook and auth lines.
- line_disabled: a DEBUG call at level INFO (what every guarded call site pays when the
  line is off), and the `isEnabledFor` guard itself.
"""
import logging
import os
import types

import pytest

from wsprism.ops import logs

SESSION = types.SimpleNamespace(tenant=types.SimpleNamespace(id="acme"), user="alice",
                                sid="tab-7f3a", trace_id="9c1e55d0b2a34f18")


@pytest.fixture(params=["text", "json"])
def logger(request):
    sink = open(os.devnull, "w")
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logs.make_formatter(request.param))
    lg = logging.Logger(f"wsprism.bench.{request.param}", logging.INFO)
    lg.addHandler(handler)
    yield request.param, lg
    sink.close()


def test_line_plain(benchmark, logger):
    fmt, lg = logger
    benchmark.group = "line_plain"
    benchmark.extra_info["format"] = fmt
    benchmark(lg.info, 'Loaded configuration for tenant: "%s"', "acme")


def test_line_context(benchmark, logger):
    fmt, lg = logger
    benchmark.group = "line_context"
    benchmark.extra_info["format"] = fmt

    def line():
        lg.warning('tenant "%s" service "%s": %s: %s%s', "acme", "match", "timeout", "no answer in time", "",
                   extra=logs.about(SESSION, svc="match", code="TIMEOUT"))
    benchmark(line)


def test_line_disabled(benchmark, logger):
    fmt, lg = logger
    benchmark.group = "line_disabled"
    benchmark.extra_info["format"] = fmt
    benchmark(lg.debug, "session opened")


def test_guard_disabled(benchmark, logger):
    fmt, lg = logger
    benchmark.group = "line_disabled"
    benchmark.extra_info["format"] = fmt

    def guarded():
        if lg.isEnabledFor(logging.DEBUG):
            lg.debug("session opened", extra=logs.about(SESSION))
    benchmark(guarded)
