"""Decides once whether the compiled hot path may be used.

`WSPRISM_NO_EXTENSIONS` (any non-empty value) forces the pure-Python twins, as does
running on anything but CPython.
"""
import os
import platform

NO_EXTENSIONS: bool = bool(os.environ.get("WSPRISM_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)


class cython_shadow:  # noqa: N801 - stands in for the `cython` module
    """What a twin compiled from its own source (hotheader_py.py) asks of `cython` when
    it runs as plain Python without Cython installed."""

    compiled = False
