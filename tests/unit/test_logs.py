"""SPEC 8 logs: the two formatters, one line per event, context fields, redaction."""
import io
import json
import logging
import re

import pytest

from wsprism.ops import logs

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def emit(fmt: str, level=logging.INFO, msg="hello %s", args=("world",), exc=False, **extra) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.make_formatter(fmt))
    logger = logging.Logger("wsprism.test")
    logger.addHandler(handler)
    if exc:
        try:
            raise ValueError("boom ticket=s3cret")
        except ValueError:
            logger.exception(msg, *args, extra=extra)
    else:
        logger.log(level, msg, *args, extra=extra)
    return stream.getvalue().splitlines()


def test_json_line_has_the_spec_fields():
    (line,) = emit("json", logging.WARNING, "room %s is full", ("lobby",),
                   tenant="acme", user="alice", sid="tab-1", trace_id="abc", room="lobby", svc="room", code=4005)
    obj = json.loads(line)
    assert RFC3339_UTC.match(obj["ts"]), obj["ts"]
    assert obj == {"ts": obj["ts"], "level": "warning", "logger": "wsprism.test", "msg": "room lobby is full",
                   "tenant": "acme", "user": "alice", "sid": "tab-1", "trace_id": "abc", "room": "lobby",
                   "svc": "room", "code": "4005"}


def test_json_only_named_fields_are_written():
    (line,) = emit("json", pending_ticket="tkA-secret", key="k", tenant=None)
    obj = json.loads(line)
    assert set(obj) == {"ts", "level", "logger", "msg"}
    assert "tkA-secret" not in line


def test_json_ts_is_utc_with_milliseconds():
    fmt = logs.JsonFormatter()
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    rec.created = 1_800_000_000.123456          # 2027-01-15T08:00:00.123Z
    assert json.loads(fmt.format(rec))["ts"] == "2027-01-15T08:00:00.123Z"
    rec.created = 1_800_000_001.0
    assert json.loads(fmt.format(rec))["ts"] == "2027-01-15T08:00:01.000Z"


@pytest.mark.parametrize("text", [
    'match:"1"\nFAKE {"level":"error"}',
    "a\r\nb\x00c\x1b[31m\u2028d",
    "q" * 4096 + '"\\',
    "lone \udc80 surrogate",
])
def test_client_text_stays_one_valid_json_line(text):
    lines = emit("json", logging.DEBUG, "join refused for %s", (text,), room=text, user=text)
    assert len(lines) == 1
    obj = json.loads(lines[0])
    if "\udc80" not in text:
        assert obj["room"] == text and obj["user"] == text
        assert obj["msg"] == f"join refused for {text}"


@pytest.mark.parametrize("text", ['match:"1"\nFAKE INFO wsprism > forged', "a\rb\x00c"])
def test_client_text_stays_one_text_line(text):
    lines = emit("text", logging.DEBUG, "join refused for %s", (text,))
    assert len(lines) == 1
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG wsprism\.test > join refused for ", lines[0])


def test_text_format_is_unchanged_for_ordinary_lines():
    (line,) = emit("text", logging.INFO, "wsPrism Gateway active at %s", ("0.0.0.0:8080",), tenant="acme")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO  wsprism\.test > wsPrism Gateway active at 0\.0\.0\.0:8080", line)


def test_traceback_in_exc_field_redacted():
    (line,) = emit("json", msg="service %s failed", args=("chat:send",), exc=True, code="INTERNAL")
    obj = json.loads(line)
    assert obj["level"] == "error" and obj["code"] == "INTERNAL"
    assert "Traceback" in obj["exc"] and "ValueError: boom ticket=<redacted>" in obj["exc"]
    assert "s3cret" not in line
    text = emit("text", msg="service %s failed", args=("chat:send",), exc=True)
    assert text[0].endswith("> service chat:send failed") and text[1].startswith("Traceback")
    assert "s3cret" not in "\n".join(text)


@pytest.mark.parametrize("raw, shown", [
    ("GET /v1/ws?tenant=acme&ticket=tkA-123 HTTP/1.1", "GET /v1/ws?tenant=acme&ticket=<redacted> HTTP/1.1"),
    ("Authorization: Bearer acme-0123456789", "Authorization: Bearer <redacted>"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl here", "token <redacted-jwt> here"),
    ("POST http://svc:hunter2@10.0.0.1/auth failed", "POST http://svc:<redacted>@10.0.0.1/auth failed"),
    ("password=pw1; secret=x", "password=<redacted>; secret=<redacted>"),
    ("configuration reloaded: 3 tenants", "configuration reloaded: 3 tenants"),
    ('gateway.api.keys.acme.env: environment variable ACME_KEY is not set', None),
])
def test_redact(raw, shown):
    assert logs.redact(raw) == (raw if shown is None else shown)


def test_unformattable_message_keeps_the_line():
    (line,) = emit("json", msg="%d sessions", args=("many",))
    assert "unformattable" in json.loads(line)["msg"]


def test_setup_and_apply(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(logs, "_handler", None)
    monkeypatch.setattr(logs, "_overrides", {"format": None, "level": None})
    stream = io.StringIO()
    try:
        logs.setup("text", "info", stream)
        logs._overrides["level"] = "warning"          # as if --log-level WARNING was given
        from wsprism.config.schema import LogConfig
        logs.apply(LogConfig(format="json", level="debug"))
        assert root.level == logging.WARNING
        logging.getLogger("wsprism.x").warning("one", extra={"tenant": "acme"})
        logging.getLogger("wsprism.x").info("hidden")
        assert [json.loads(ln)["tenant"] for ln in stream.getvalue().splitlines()] == ["acme"]
        assert logging.getLogger("wsprism.picows").level == logging.WARNING
    finally:
        root.removeHandler(logs._handler)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
