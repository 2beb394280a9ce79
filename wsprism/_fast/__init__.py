"""Hot-path kernels: the compiled (Cython) modules, or their pure-Python twins.

Selection happens once, here (the aiohttp/yarl habit): with `WSPRISM_NO_EXTENSIONS`
set, or off CPython, every `*_py` twin is used; otherwise every `*_c` module, falling
back to all twins if any one of them fails to import. The two are never mixed.
Nothing else in wsprism imports a `_c` or `_py` module by name.
"""
from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS

USING_EXTENSIONS = False

if TYPE_CHECKING or NO_EXTENSIONS:
    from .bucket_py import TokenBucket
    from .utf8_py import utf8_valid
else:
    try:
        from .bucket_c import TokenBucket
        from .utf8_c import utf8_valid

        USING_EXTENSIONS = True
    except ImportError:  # not built: run on the twins
        from .bucket_py import TokenBucket
        from .utf8_py import utf8_valid

__all__ = ["USING_EXTENSIONS", "NO_EXTENSIONS", "TokenBucket", "utf8_valid"]
