"""Scans of Ext Lane text frames (pure-Python twin of `utf8_c`).

- `utf8_valid`: RFC 3629 UTF-8, exactly what CPython's strict decoder accepts: no
  overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF. A text frame
  that fails is closed with 1007. The compiled module checks 8 ASCII bytes at a time
  without building a str.
- `json_too_deep`: whether the JSON text nests arrays and objects more than `limit`
  levels deep, counted on the brackets outside strings (a backslash in a string skips
  the byte after it; a string left open runs to the end). It does not validate the JSON:
  it runs before the decoder, so the decoder never recurses past the limit, whatever the
  interpreter's recursion limit (SPEC 14: 64 levels in `data`).
"""
import re
from itertools import accumulate

# a string, as the compiled scan reads one: to its closing quote, or to the end. Written
# as an unrolled loop (runs of plain bytes, then an escape and its byte): the same matches
# as `"(?:[^"\\]|\\[\s\S])*...`, whose alternation per byte took 3.6 s on a 10 MB string
# (the pure-Python twin then missed the hostile tests' 5 s answer deadline); this takes 0.08 s
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def utf8_valid(data: bytes) -> bool:
    """True when `data` (bytes, bytearray or memoryview) is valid UTF-8."""
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def json_too_deep(data, limit: int) -> bool:
    """True when `data` nests `[`/`{` more than `limit` levels deep outside strings."""
    outside = _STRING.sub(b"", bytes(data)).translate(None, _NOT_BRACKET)
    if outside.count(b"[") + outside.count(b"{") <= limit:
        return False
    return max(accumulate(_STEP[c] for c in outside)) > limit
