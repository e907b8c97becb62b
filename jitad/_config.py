"""Numba settings for every jitad kernel, read in this one module.

``JITAD_CACHE=0`` turns Numba's on-disk cache off (``NUMBA_CACHE_DIR`` moves it);
kernels never use fastmath, and use NumPy's error model so ``1/0`` is ``inf``, not an exception.
"""

import os

import numba

CACHE = os.environ.get("JITAD_CACHE", "1") != "0"

_OPTIONS = dict(cache=CACHE, nogil=True, fastmath=False, error_model="numpy")


def kernel(fn=None, **overrides):
    """``numba.njit`` with jitad's settings; ``@kernel`` or ``@kernel(parallel=True)``."""
    options = {**_OPTIONS, **overrides}
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)


def inline(fn):
    """Compile a helper that kernels inline; never called from Python on a hot path."""
    return numba.njit(inline="always", error_model="numpy", fastmath=False)(fn)
