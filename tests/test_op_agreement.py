"""Recording and replay compute the same bits: every op of the op table, evaluated the way
recording evaluates it (Python ``math``, NumPy where Python raises) and by the compiled
kernels, on ~10^5 adversarial inputs per op; values and both first partials must agree
bit for bit (any NaN equals any NaN). A guard re-checked in replay can then never go the
other way than it went while recording at the same point.
"""

import math

import numpy as np
import pytest

from jitad import kernels, ops
from jitad.value import _ieee

COMPUTED = [op for op in ops.OPS if op.formula is not None]
POINTS = 100_000  # per op



def recorded(code, x, y):
    """Value and first partials as ``value._record`` computes them while recording, and
    whether Python raised so that the IEEE fallback computed them."""
    try:
        v, dx, dy, _, _, _ = ops.OPS[code].formula(x, y)
        return v, dx, dy, False
    except (ArithmeticError, ValueError):
        v, dx, dy, _, _, _ = _ieee(code, x, y)
        return v, dx, dy, True


def _specials():
    tiny = np.finfo(float).tiny
    big = np.finfo(float).max
    base = [0.0, 1.0, 2.0, 0.5, 1.5, 2.5, 3.0, 10.0, 1e-300, 5e-324, tiny, big, 1e300, 1e154, 1e-154]
    base += [math.pi, math.pi / 2, math.e, 709.78, 710.0, 745.0, 1 - 2**-53, 1 + 2**-52, 2**53, 2**53 + 2]
    base += [math.inf, math.nan]
    return np.array(sorted(set(base)) + [-v for v in base])


SPECIALS = _specials()


def _pool(rng, size):
    """Inputs of every kind: random, near zero, huge, tiny, integers, halves, specials."""
    sign = rng.choice([-1.0, 1.0], size)
    kinds = [
        rng.standard_normal(size),
        rng.uniform(-4.0, 4.0, size),
        sign * 10.0 ** rng.uniform(-320.0, 308.0, size),  # every magnitude, subnormals too
        sign * 10.0 ** rng.uniform(-20.0, -5.0, size),  # near zero
        sign * 10.0 ** rng.uniform(150.0, 308.0, size),  # huge: squares overflow
        rng.integers(-50, 51, size).astype(float),
        rng.integers(-50, 51, size) + 0.5,
        rng.uniform(-1.0, 1.0, size),  # asin/acos domain, near the unit circle
        rng.choice(SPECIALS, size),
    ]
    return np.concatenate(kinds)


def _inputs(seed, n=POINTS):
    """n pairs (x, y): independent draws, ties (y = x, y = -x), near ties, crossed specials."""
    rng = np.random.default_rng(seed)
    pool = _pool(rng, n // 9 + 1)
    x = rng.permutation(pool)[:n]
    y = rng.permutation(pool)[:n]
    q = n // 8
    y[:q] = x[:q]
    y[q : 2 * q] = -x[q : 2 * q]
    with np.errstate(over="ignore"):
        y[2 * q : 3 * q] = np.nextafter(x[2 * q : 3 * q], rng.choice([-np.inf, np.inf], q))
    # the unit circle: hypot(x, y) == 1 is a guard's boundary
    t = rng.uniform(0.0, 2 * math.pi, q)
    x[3 * q : 4 * q] = np.cos(t)
    y[3 * q : 4 * q] = np.sin(t)
    cross = np.array(np.meshgrid(SPECIALS, SPECIALS)).reshape(2, -1)[:, : n // 4]
    x[-cross.shape[1] :] = cross[0]
    y[-cross.shape[1] :] = cross[1]
    return x, y


def _compiled_sequential(code, x, y):
    """Through ``kernels.forward``: leaves x and y, then one op entry per pair. A failed
    guard stops the sweep (as in replay), so the sweep resumes after it."""
    n = x.size
    op = np.concatenate([np.full(2 * n, ops.LEAF, np.uint8), np.full(n, code, np.uint8)])
    a = np.concatenate([np.full(2 * n, -1, np.int32), np.arange(n, dtype=np.int32)])
    b = np.concatenate([np.full(2 * n, -1, np.int32), np.arange(n, 2 * n, dtype=np.int32)])
    c = np.zeros(3 * n)
    val = np.concatenate([x, y, np.zeros(n)])
    da = np.zeros(3 * n)
    db = np.zeros(3 * n)
    start = 2 * n
    while start < 3 * n:
        failed = kernels.forward(op, a, b, c, val, da, db, start, 3 * n)
        if failed < 0:
            break
        start = failed + 1
    return val[2 * n :], da[2 * n :], db[2 * n :]


def _compiled_lanes(code, x, y):
    """Through ``kernels.forward_lanes`` (the batch kernels): one op entry, one lane per pair."""
    op = np.array([ops.LEAF, ops.LEAF, code], np.uint8)
    a = np.array([-1, -1, 0], np.int32)
    b = np.array([-1, -1, 1], np.int32)
    V = np.zeros((3, x.size))
    V[0] = x
    V[1] = y
    DA = np.zeros_like(V)
    DB = np.zeros_like(V)
    kernels.forward_lanes(op, a, b, np.zeros(3), V, DA, DB, np.empty(x.size, np.int64))
    return V[2], DA[2], DB[2]


def _disagreements(expected, actual):
    e = np.asarray(expected, dtype=np.float64)
    same = (e.view(np.uint64) == actual.view(np.uint64)) | (np.isnan(e) & np.isnan(actual))
    return np.flatnonzero(~same)


def _evaluate(op, n=POINTS):
    """Inputs, the recorded results, and which points took the IEEE fallback."""
    x, y = _inputs(op.code, n)
    if op.code == ops.GUARD:
        y = np.where(np.arange(y.size) % 2 == 0, 1.0, 0.0)  # the recorded outcome: 0 or 1
    rows = [recorded(op.code, xi, yi) for xi, yi in zip(x.tolist(), y.tolist())]
    python = np.array([r[:3] for r in rows]).T
    fell_back = np.array([r[3] for r in rows])
    return x, y, python, fell_back


def _first_disagreement(op, x, y, python):
    """A message for the first point where a compiled sweep differs, or None."""
    for name, compiled in (("forward", _compiled_sequential), ("forward_lanes", _compiled_lanes)):
        results = compiled(op.code, x, y)
        for what, expected, actual in zip(("value", "d/dx", "d/dy"), python, results):
            bad = _disagreements(expected, actual)
            if bad.size:
                k = bad[0]
                return (
                    f"{op.name}: {what} differs between recording and {name} at {bad.size} of {x.size} "
                    f"points, first at x = {x[k]!r}, y = {y[k]!r}: {expected[k]!r} vs {actual[k]!r}"
                )
    return None


@pytest.mark.parametrize("op", COMPUTED, ids=lambda op: op.name)
def test_recording_and_replay_compute_the_same_bits(op):
    x, y, python, fell_back = _evaluate(op)
    # Points where Python's math gives the answer (the vast majority): no exception.
    ok = ~fell_back
    problem = _first_disagreement(op, x[ok], y[ok], python[:, ok])
    assert problem is None, problem
    # Points where Python raises (log(0), 1/0, overflow) and recording falls back to IEEE.
    problem = _first_disagreement(op, x[fell_back], y[fell_back], python[:, fell_back])
    assert problem is None, problem


@pytest.mark.parametrize("op", COMPUTED, ids=lambda op: op.name)
def test_compiled_fallback_agrees_with_replay(op):
    # kernels.evaluate_op, the compiled IEEE route for recording, is replay's own formula.
    x, y = _inputs(op.code, 2000)
    single = np.array([kernels.evaluate_op(op.code, xi, yi)[:3] for xi, yi in zip(x, y)]).T
    for expected, actual in zip(single, _compiled_lanes(op.code, x, y)):
        assert _disagreements(expected, actual).size == 0, op.name


def test_every_op_is_covered():
    # The parametrization iterates the op table: an op added later is checked automatically.
    assert {op.name for op in COMPUTED} | {"leaf", "param"} == set(ops.NAMES)
