"""Strict UTF-8 validation for Ext Lane text frames (pure-Python twin of `utf8_c`).

RFC 3629 UTF-8, exactly what CPython's strict decoder accepts: no overlong forms, no
surrogates (U+D800..U+DFFF), nothing above U+10FFFF. A text frame that fails is closed
with 1007. The compiled module checks 8 ASCII bytes at a time without building a str.
"""


def utf8_valid(data: bytes) -> bool:
    """True when `data` (bytes, bytearray or memoryview) is valid UTF-8."""
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True
