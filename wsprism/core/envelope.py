"""Ext Lane envelopes: the one inbound decoder and the outbound encoders.

Inbound text frames decode straight into `Envelope` (strict: unknown fields, wrong types
and out-of-range integers are errors). `data` stays raw JSON (`msgspec.Raw`) until a
service asks for it, so a message that is routed or forwarded is never rebuilt.

Before the decoder runs, the nesting depth is checked (`MAX_DATA_DEPTH` levels in
`data`, SPEC 14), so the answer to a deep message never depends on the interpreter's
recursion limit.
"""
import re
from typing import Annotated, Any

import msgspec

from .._fast import ExtFlag, json_too_deep

U64_MAX = 2**64 - 1

FLAG_ACK_REQUESTED = int(ExtFlag.EXT_ACK_REQUESTED)     # the one flag that changes what we do


class Envelope(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    v: int
    svc: Annotated[str, msgspec.Meta(min_length=1)]
    type: Annotated[str, msgspec.Meta(min_length=1)]
    flags: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    seq: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET
    room: str | msgspec.UnsetType = msgspec.UNSET
    data: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class DecodeFailed(Exception):
    """The text frame is not a valid envelope (BAD_REQUEST, close 1008)."""


MAX_DATA_DEPTH = 64                   # levels of arrays/objects inside `data`
_MAX_DEPTH = MAX_DATA_DEPTH + 1       # counted from the envelope's own braces
TOO_DEEP = f"JSON nested too deep (more than {MAX_DATA_DEPTH} levels in data)"

_decoder = msgspec.json.Decoder(Envelope)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def decode_envelope(payload: bytes) -> Envelope:
    """Decode one Ext Lane message; raises DecodeFailed with a short reason."""
    if json_too_deep(payload, _MAX_DEPTH):
        raise DecodeFailed(TOO_DEEP)
    try:
        env = _decoder.decode(payload)
    except _DECODE_ERRORS as exc:
        raise DecodeFailed(_short_reason(exc, payload)) from None
    if env.seq is not msgspec.UNSET and env.seq > U64_MAX:
        raise DecodeFailed("seq out of range (u64)")
    return env


class _VersionOnly(msgspec.Struct):
    """Lenient: only what decides UNSUPPORTED_VERSION for a message v1 cannot decode.
    `v` stays raw, so an integer of any size is still an integer."""

    v: msgspec.Raw
    seq: Any = None


_version_decoder = msgspec.json.Decoder(_VersionOnly)
_JSON_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")


def peek_version(payload: bytes) -> tuple[int, int | None] | None:
    """(v, seq) of a message that is not a valid v1 envelope, when it is at least a JSON
    object with an integer `v`; None otherwise. Used on the error path only: a message of
    another version may carry fields v1 does not know, and must hear about its version.
    A `v` too long to be a Python int is reported as 2 (any version but 1 is refused the
    same way)."""
    if json_too_deep(payload, _MAX_DEPTH):
        return None
    try:
        found = _version_decoder.decode(payload)
    except _DECODE_ERRORS:
        return None
    raw = bytes(found.v)
    if not _JSON_INT.fullmatch(raw):
        return None
    v = int(raw) if len(raw) <= 20 else 2
    seq = found.seq
    if type(seq) is not int or not 0 <= seq <= U64_MAX:
        seq = None
    return v, seq


# \uD800-\uDBFF not followed by \uDC00-\uDFFF, or \uDC00-\uDFFF not preceded by one
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![0-9a-fA-F]{2})(?<!\\u[dD][89abAB])\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _short_reason(exc: Exception, payload: bytes) -> str:
    if isinstance(exc, RecursionError):
        return TOO_DEEP
    text = str(exc)
    if ("truncated" in text or "surrogate" in text) and _LONE_SURROGATE.search(payload):
        # msgspec reports a lone high surrogate as "Input data was truncated"
        return "JSON string has a lone UTF-16 surrogate escape (\\uD800-\\uDFFF must come in pairs)"
    return text if len(text) <= 200 else text[:200]


# --- outbound ---------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
encode = _encoder.encode

PONG = b'{"v":1,"svc":"sys","type":"pong"}'


def encode_error(code: str, msg: str, seq: Any = msgspec.UNSET, trace_id: str | None = None) -> bytes:
    out: dict[str, Any] = {"v": 1, "svc": "sys", "type": "error", "data": {"code": code, "msg": msg}}
    if seq is not msgspec.UNSET and seq is not None:
        out["seq"] = seq
    if trace_id is not None:
        out["trace_id"] = trace_id
    return _encoder.encode(out)


def encode_ack(seq: int) -> bytes:
    return b'{"v":1,"svc":"sys","type":"ack","seq":%d}' % seq


def encode_sys(type_: str, room: str | None = None, data: Any = msgspec.UNSET, **extra: Any) -> bytes:
    """A `sys` message: `{"v":1,"svc":"sys","type":...,"room"?:...,"data"?:...}`."""
    return encode_message("sys", type_, room, data, **extra)


_AUTHED_HEAD = b'{"v":1,"svc":"sys","type":"authed","trace_id":'


def encode_authed(tenant: str, user: Any, sid: str, trace_id: str) -> bytes:
    """`encode_sys("authed", data={"tenant":..,"user":..,"sid":..}, trace_id=..)` byte
    for byte (tests/unit/test_envelope.py checks it), without the dicts: every connect
    sends one."""
    enc = _encoder.encode
    return b'%s%s,"data":{"tenant":%s,"user":%s,"sid":%s}}' % (_AUTHED_HEAD, enc(trace_id), enc(tenant), enc(user), enc(sid))


def reply_head(svc: str) -> bytes:
    """The fixed start of a service's replies, for `encode_reply` (built once per service)."""
    return b'{"v":1,"svc":' + _encoder.encode(svc) + b',"type":"reply"'


def encode_reply(head: bytes, seq: Any, data: Any) -> bytes:
    """`{"v":1,"svc":<svc>,"type":"reply","seq"?:<seq>,"data":<data>}`, `head` from
    `reply_head(svc)`: a service's answer to the sender (webhook and Python services)."""
    body = _encoder.encode(data)
    if seq is msgspec.UNSET:
        return b'%s,"data":%s}' % (head, body)
    return b'%s,"seq":%d,"data":%s}' % (head, seq, body)


def encode_message(svc: str, type_: str, room: str | None, data: Any, **extra: Any) -> bytes:
    """A service message to clients (chat.msg, room.user_joined, backend publish ...)."""
    out: dict[str, Any] = {"v": 1, "svc": svc, "type": type_}
    if room is not None:
        out["room"] = room
    out.update(extra)
    if data is not msgspec.UNSET:
        out["data"] = data
    return _encoder.encode(out)


def encode_room_parts(svc: str, type_: str, room: str, data: Any) -> tuple[bytes, bytes]:
    """A room message in two parts, `head` = `{"v":1,"svc":..,"type":..,"room":..` and
    `tail` = `,"data":..}` (or `}`): `head + tail` is `encode_message`'s output, and the
    history's position (`,"offset":17,"epoch":"..."`) is spliced between them without
    encoding the message again."""
    head = _encoder.encode({"v": 1, "svc": svc, "type": type_, "room": room})[:-1]
    if data is msgspec.UNSET:
        return head, b"}"
    return head, b',"data":%s}' % _encoder.encode(data)
