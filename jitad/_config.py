"""Numba settings for every jitad kernel, read in this one module.

``JITAD_CACHE=0`` turns Numba's on-disk cache off (``NUMBA_CACHE_DIR`` moves it);
kernels never use fastmath, and use NumPy's error model so ``1/0`` is ``inf``, not an exception.
"""

import hashlib
import os
from pathlib import Path

import numba
from numba.core.caching import FunctionCache

CACHE = os.environ.get("JITAD_CACHE", "1") != "0"

_OPTIONS = dict(nogil=True, fastmath=False, error_model="numpy")

# Numba keys a cached kernel on its own source file only, but the op table (ops.py) is
# compiled into every kernel: key the cache on the sources kernels are built from as well,
# so an edited op can never run stale machine code.
_HERE = Path(__file__).parent
_SOURCES = hashlib.sha256(
    b"".join((_HERE / name).read_bytes() for name in ("ops.py", "kernels.py", "_config.py"))
).hexdigest()


class _Cache(FunctionCache):
    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), _SOURCES)


def kernel(fn=None, **overrides):
    """``numba.njit`` with jitad's settings; ``@kernel`` or ``@kernel(parallel=True)``."""
    if fn is None:
        return lambda f: kernel(f, **overrides)
    dispatcher = numba.njit(**{**_OPTIONS, **overrides})(fn)
    if CACHE:
        dispatcher._cache = _Cache(fn)
    return dispatcher


def inline(fn):
    """Compile a helper that kernels inline; never called from Python on a hot path."""
    return numba.njit(inline="always", error_model="numpy", fastmath=False)(fn)
