"""Build script: compiles the hot-path modules in wsprism/_fast/.

Switches (read from the environment, as aiohttp and asyncpg do):
  WSPRISM_NO_EXTENSIONS=1   build no extension ("pure build"); the Python twins run.
  WSPRISM_CYTHON_DEBUG=1    annotate, line tracing, bounds/wraparound checks back on.
"""
import os
import platform
import sys

from setuptools import Extension, setup

# module -> source. Twins that are pure logic are compiled from their own Python source,
# typed by the module's augmenting .pxd (bucket_c.pxd, hotheader_c.pxd), as aiohttp builds
# reader_c from reader_py.py: the pair cannot drift.
FAST_MODULES = {
    "codes_c": "codes_c.pyx",
    "bucket_c": "bucket_py.py",
    "utf8_c": "utf8_c.pyx",
    "hotheader_c": "hotheader_py.py",
    "fanout_c": "fanout_c.pyx",
    "framer_c": "framer_c.pyx",
    "reader_c": "reader_c.pyx",
}

NO_EXTENSIONS = bool(os.environ.get("WSPRISM_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"
DEBUG = bool(os.environ.get("WSPRISM_CYTHON_DEBUG"))


def _extensions():
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
    exts = [
        Extension(
            f"wsprism._fast.{name}",
            [f"wsprism/_fast/{source}"],
            define_macros=macros,
            # Same IEEE results as the Python twins: no fused multiply-add contraction.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
        for name, source in FAST_MODULES.items()
    ]
    directives = {
        "language_level": 3,
        "embedsignature": True,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "nonecheck": False,
        "cdivision": True,
        "auto_pickle": False,   # sessions and buckets are never pickled
    }
    if DEBUG:
        directives["linetrace"] = True
        directives["profile"] = True
    return cythonize(exts, compiler_directives=directives, annotate=DEBUG)


if NO_EXTENSIONS:
    print("wsprism: pure build (WSPRISM_NO_EXTENSIONS set), no compiled modules", file=sys.stderr)
    setup()
else:
    print("wsprism: accelerated build, compiling " + ", ".join(FAST_MODULES), file=sys.stderr)
    setup(ext_modules=_extensions())
