"""The gateway's log lines: text for a terminal, JSON lines for a log pipeline (SPEC 8).

Standard-library `logging` with one handler on stderr and one of two formatters:

- `TextFormatter`: `2026-11-23 19:44:46,160 INFO  wsprism > wsPrism Gateway active at ...`
- `JsonFormatter`: one JSON object per line with `ts` (RFC 3339, UTC, milliseconds),
  `level`, `logger`, `msg`, and, when the line is about one session, room, service or
  error, the context fields of `CONTEXT_FIELDS`; a traceback goes in `exc`.

Context rides on the call: `log.warning("...", extra=about(session, svc=svc))`. Only the
fields named in `CONTEXT_FIELDS` are ever written, whatever `extra` holds, so an
object handed to a log call by mistake cannot spill its attributes (a pending ticket,
a key) into the log. `code` is always a string (`"AUTH_FAILED"`, `"4005"`), so a log
store maps the field to one type.

Every line is one line: in JSON, client-chosen text (a room name, a user id, an
exception message) is escaped by the encoder; in text, control characters in the
message are written as escapes (`\\n`), so a client cannot forge a second line.
Both formats pass the message and traceback through `redact`, which blanks what looks
like a credential (`ticket=...`, `Bearer ...`, a JWT, a URL's password): a second
line of defence, since no call site logs a secret in the first place.
"""
import logging
import re
import sys
import time

import msgspec

from ..core.session import about  # noqa: F401  (log context of a session: lives with the session)

CONTEXT_FIELDS = ("tenant", "user", "sid", "trace_id", "room", "svc", "code")
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

_SECRET = re.compile(
    r"(?i)\b(ticket|token|secret|password|passwd|api_key|apikey)=[^\s&\"',;]+"
    r"|\b(bearer)\s+[^\s\"',;]+"
    r"|\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"
    r"|(://[^/\s:@]+):[^/\s@]+@"
)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# JSON allows these raw, but many line readers (Python's splitlines, JavaScript) break on them
_JSON_BREAKS = re.compile("[\x85\u2028\u2029]")


def _redact_one(m: re.Match) -> str:
    if m.group(1):
        return f"{m.group(1)}=<redacted>"
    if m.group(2):
        return f"{m.group(2)} <redacted>"
    if m.group(3):
        return f"{m.group(3)}:<redacted>@"
    return "<redacted-jwt>"


def redact(text: str) -> str:
    """`text` with anything shaped like a credential replaced by `<redacted>`."""
    return _SECRET.sub(_redact_one, text)


def _escape_control(m: re.Match) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")




class _Base(logging.Formatter):
    def _message(self, record: logging.LogRecord) -> str:
        try:
            msg = record.getMessage()
        except Exception as exc:        # a bad format string must not lose the line
            msg = f"{record.msg!r} (unformattable: {type(exc).__name__})"
        return redact(msg)

    def _traceback(self, record: logging.LogRecord) -> str | None:
        text = None
        if record.exc_info:
            text = self.formatException(record.exc_info)
        elif record.exc_text:
            text = record.exc_text
        if record.stack_info:
            text = (text + "\n" if text else "") + self.formatStack(record.stack_info)
        return redact(text) if text else None


class TextFormatter(_Base):
    """Time, level, logger, message; a traceback follows on its own lines."""

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        msg = _CONTROL.sub(_escape_control, self._message(record))
        name = record.name if _worker is None else f"{record.name} [w{_worker}]"
        line = f"{self.formatTime(record)} {record.levelname:<5} {name} > {msg}"
        tb = self._traceback(record)
        return f"{line}\n{tb}" if tb else line


_encode = msgspec.json.Encoder(enc_hook=str).encode


class JsonFormatter(_Base):
    """One JSON object per line (see the module's docstring for the fields)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def _ts(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self._ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self._message(record),
        }
        if _worker is not None:
            out["worker"] = _worker
        d = record.__dict__
        for name in CONTEXT_FIELDS:
            value = d.get(name)
            if value is not None:
                out[name] = value if type(value) is str else str(value)
        tb = self._traceback(record)
        if tb:
            out["exc"] = tb
        try:
            line = _encode(out).decode()
        except UnicodeEncodeError:      # lone surrogates (e.g. bytes decoded with surrogateescape)
            for key, value in out.items():
                if isinstance(value, str):
                    out[key] = value.encode("utf-8", "backslashreplace").decode()
            line = _encode(out).decode()
        if _JSON_BREAKS.search(line) is not None:
            line = _JSON_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
        return line


_handler: logging.Handler | None = None
_worker: str | None = None      # the worker's index under `gateway.workers` > 1 (SPEC 11)
_overrides: dict[str, str | None] = {"format": None, "level": None}   # from the command line


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def setup(fmt: str = "text", level: str = "info", stream=None) -> logging.Handler:
    """Send every log line to stderr (or `stream`) in `fmt` at `level` and above.
    Called again (reload), it swaps the formatter and level in place."""
    global _handler
    root = logging.getLogger()
    if _handler is None or stream is not None:
        if _handler is not None:
            root.removeHandler(_handler)
        _handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        root.addHandler(_handler)
    _handler.setFormatter(make_formatter(fmt))
    root.setLevel(getattr(logging, level.upper()))
    # picows logs every connection at INFO and its frames at DEBUG (raw upgrade requests
    # included, tickets and all): only its warnings and errors come through.
    logging.getLogger("wsprism.picows").setLevel(logging.WARNING)
    return _handler


def start(fmt: str | None = None, level: str | None = None) -> None:
    """At process start, before the config is read: the command line's choices (which
    win over `gateway.log` for the whole run), else the defaults."""
    _overrides["format"], _overrides["level"] = fmt, level.lower() if level else None
    setup(fmt or "text", _overrides["level"] or "info")


def tag_worker(index: int) -> None:
    """Every line of this process names its worker: `wsprism [w2] > ...`, `"worker": "2"`."""
    global _worker
    _worker = str(index)


def apply(cfg) -> None:
    """`gateway.log` of a (re)loaded config, where the command line did not decide.
    Does nothing unless `start` installed the handler (an embedded gateway, e.g. in the
    tests, keeps its host's logging)."""
    if _handler is None:
        return
    setup(_overrides["format"] or cfg.format, _overrides["level"] or cfg.level)
