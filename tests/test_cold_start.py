"""A new machine's first gradient: kernels compile once, say so on stderr while they do,
and a later process loads them from the cache silently (fresh processes, fresh caches)."""

import os
import subprocess
import sys
import tempfile

import numba
import pytest

INTERPRETED = bool(numba.config.DISABLE_JIT)

FIRST_GRADIENT = """
import numpy as np, jitad
def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))
x = np.array([-1.2, 1.0, 0.5])
g = jitad.grad(rosen)(x)
exact = np.array([
    -400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]),
    200 * (x[1] - x[0] ** 2) - 400 * x[1] * (x[2] - x[1] ** 2) - 2 * (1 - x[1]),
    200 * (x[2] - x[1] ** 2),
])
assert np.allclose(g, exact, rtol=1e-13), (g, exact)
"""


def _first_gradient(cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-c", FIRST_GRADIENT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.skipif(INTERPRETED, reason="nothing compiles under NUMBA_DISABLE_JIT")
def test_a_cold_compile_says_so_once_and_a_warm_start_says_nothing():
    with tempfile.TemporaryDirectory() as cache:
        cold = _first_gradient(cache)
        lines = [line for line in cold.splitlines() if line.startswith("jitad: compiling")]
        assert lines, cold  # the first gradient compiles for more than a second
        assert len(lines) == len(set(lines)), cold  # once per kernel
        assert all("once per machine" in line and cache in line for line in lines)
        assert _first_gradient(cache) == ""  # loaded from the cache: silent
