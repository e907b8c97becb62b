"""Test setup: a fresh Numba cache, a fresh tape per test, central differences."""

import atexit
import os
import shutil
import sys
import tempfile

# Test modules import their helpers (programs, regressions, snippets) by module name or as
# ``tests.<name>``: make both work whatever directory pytest runs from (a clone, an sdist).
_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (_HERE, os.path.dirname(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Before anything imports numba: Numba's cache does not notice edits to njit functions in
# other files and freezes globals, so every test session compiles into an empty cache.
_CACHE = tempfile.mkdtemp(prefix="jitad-numba-cache-")
os.environ["NUMBA_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jitad  # noqa: E402


@pytest.fixture
def tape():
    """A fresh tape, active in this thread for the duration of the test."""
    with jitad.Tape() as t:
        yield t


def central_gradient(f, x, h=1e-6):
    """Central differences of f: R^n -> R at x, with steps scaled to |x_i|."""
    x = np.asarray(x, dtype=float)
    g = np.empty(x.size)
    for i in range(x.size):
        step = h * max(1.0, abs(x[i]))
        up = x.copy()
        down = x.copy()
        up[i] += step
        down[i] -= step
        g[i] = (f(*up) - f(*down)) / (up[i] - down[i])
    return g
