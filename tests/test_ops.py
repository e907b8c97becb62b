"""The op table, one row per op: each formula against an independent NumPy formula,
central differences, and its own Numba-compiled self.

A row gives the op's reference ``(x, y) -> (value, d/dx, d/dy)`` written with NumPy and
the op's valid input domain. A unary op receives its constant in ``y`` (only ``powc``
reads it: ``x ** y``); its d/dy is 0.
"""

import functools
import itertools
import math
import zlib
from typing import Callable, NamedTuple

import numba
import numpy as np
import pytest
from scipy import special

import jitad
from jitad import Value, kernels, ops

ANY = (-3.0, 3.0)
AWAY_FROM_0 = ((-3.0, -0.3), (0.3, 3.0))


class Row(NamedTuple):
    ref: Callable  # (x, y) -> (value, d/dx, d/dy), with NumPy
    x: tuple  # domain of x: an interval, or a tuple of intervals
    y: tuple = (0.0, 0.0)  # domain of y (unary ops: their constant)
    valid: Callable = lambda x, y: True  # rejects points next to a kink or a jump
    points: tuple = ()  # extra points, also checked against the reference


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _step(condition):
    return 1.0 if condition else 0.0


def _apart(x, y):
    return abs(x - y) > 0.2


def _off_integers(x, y):
    return abs(x - round(x)) > 0.05


def _off_halves(x, y):
    return abs(x - math.floor(x) - 0.5) > 0.05


def _off_multiples(x, y):
    return abs(x / y - round(x / y)) > 0.05


ROWS = {
    "add": Row(lambda x, y: (x + y, 1.0, 1.0), ANY, ANY),
    "sub": Row(lambda x, y: (x - y, 1.0, -1.0), ANY, ANY),
    "mul": Row(lambda x, y: (x * y, y, x), ANY, ANY),
    "div": Row(lambda x, y: (x / y, 1 / y, -x / y**2), ANY, AWAY_FROM_0),
    "neg": Row(lambda x, y: (-x, -1.0, 0.0), ANY),
    "powc": Row(
        lambda x, c: (np.power(x, c), c * np.power(x, c - 1), 0.0),
        (0.2, 3.0),
        (-2.5, 2.5),
        points=((1.7, 0.0), (1.7, 1.0), (1.7, 2.0), (-1.5, 2.0), (-1.5, 3.0), (-1.5, -1.0), (0.0, 2.0), (0.0, 3.0)),
    ),
    "pow": Row(
        lambda x, y: (np.power(x, y), y * np.power(x, y - 1), np.power(x, y) * np.log(x)),
        (0.2, 3.0),
        (-2.5, 2.5),
        points=((1.7, 0.0), (1.7, 1.0), (0.5, 2.0)),
    ),
    "exp": Row(lambda x, y: (np.exp(x), np.exp(x), 0.0), ANY),
    "log": Row(lambda x, y: (np.log(x), 1 / x, 0.0), (0.1, 5.0)),
    "log1p": Row(lambda x, y: (np.log1p(x), 1 / (1 + x), 0.0), (-0.9, 5.0), points=((1e-10, 0.0),)),
    "expm1": Row(lambda x, y: (np.expm1(x), np.exp(x), 0.0), ANY, points=((1e-10, 0.0),)),
    "sqrt": Row(lambda x, y: (np.sqrt(x), 0.5 / np.sqrt(x), 0.0), (0.1, 5.0)),
    "softplus": Row(
        lambda x, y: (np.logaddexp(0.0, x), _sigmoid(x), 0.0), (-6.0, 6.0), points=((50.0, 0.0), (-50.0, 0.0))
    ),
    "sigmoid": Row(
        lambda x, y: (_sigmoid(x), _sigmoid(x) * _sigmoid(-x), 0.0), (-6.0, 6.0), points=((30.0, 0.0), (-30.0, 0.0))
    ),
    "sin": Row(lambda x, y: (np.sin(x), np.cos(x), 0.0), (-4.0, 4.0)),
    "cos": Row(lambda x, y: (np.cos(x), -np.sin(x), 0.0), (-4.0, 4.0)),
    "tan": Row(lambda x, y: (np.tan(x), 1 / np.cos(x) ** 2, 0.0), (-1.3, 1.3)),
    "asin": Row(lambda x, y: (np.arcsin(x), 1 / np.sqrt(1 - x * x), 0.0), (-0.95, 0.95)),
    "acos": Row(lambda x, y: (np.arccos(x), -1 / np.sqrt(1 - x * x), 0.0), (-0.95, 0.95)),
    "atan": Row(lambda x, y: (np.arctan(x), 1 / (1 + x * x), 0.0), (-4.0, 4.0)),
    # atan2(x, y) is the angle of the point (y, x); x away from 0 keeps off the branch cut.
    "atan2": Row(lambda x, y: (np.arctan2(x, y), y / (x * x + y * y), -x / (x * x + y * y)), AWAY_FROM_0, ANY),
    "sinh": Row(lambda x, y: (np.sinh(x), np.cosh(x), 0.0), ANY),
    "cosh": Row(lambda x, y: (np.cosh(x), np.sinh(x), 0.0), ANY),
    "tanh": Row(lambda x, y: (np.tanh(x), 1 / np.cosh(x) ** 2, 0.0), ANY),
    "hypot": Row(lambda x, y: (np.hypot(x, y), x / np.hypot(x, y), y / np.hypot(x, y)), AWAY_FROM_0, AWAY_FROM_0),
    "relu": Row(lambda x, y: (np.maximum(x, 0.0), np.heaviside(x, 0.0), 0.0), AWAY_FROM_0, points=((0.0, 0.0),)),
    "abs": Row(lambda x, y: (np.abs(x), np.sign(x), 0.0), AWAY_FROM_0, points=((0.0, 0.0),)),
    # Ties split the gradient evenly, as in PyTorch.
    "maximum": Row(
        lambda x, y: (np.maximum(x, y), _step(x > y) + 0.5 * (x == y), _step(y > x) + 0.5 * (x == y)),
        ANY,
        ANY,
        _apart,
        points=((1.5, 1.5), (-2.0, -2.0)),
    ),
    "minimum": Row(
        lambda x, y: (np.minimum(x, y), _step(x < y) + 0.5 * (x == y), _step(y < x) + 0.5 * (x == y)),
        ANY,
        ANY,
        _apart,
        points=((1.5, 1.5), (-2.0, -2.0)),
    ),
    # where_true / where_false: x is the condition (nonzero: true), y the chosen operand.
    "where_true": Row(
        lambda x, y: (y if x != 0 else 0.0, 0.0, _step(x != 0)), AWAY_FROM_0, ANY, points=((0.0, 1.5), (0.0, -2.0))
    ),
    "where_false": Row(
        lambda x, y: (0.0 if x != 0 else y, 0.0, _step(x == 0)), AWAY_FROM_0, ANY, points=((0.0, 1.5), (0.0, -2.0))
    ),
    "lt": Row(lambda x, y: (_step(x < y), 0.0, 0.0), ANY, ANY, _apart, points=((1.0, 1.0),)),
    "le": Row(lambda x, y: (_step(x <= y), 0.0, 0.0), ANY, ANY, _apart, points=((1.0, 1.0),)),
    "eq": Row(lambda x, y: (_step(x == y), 0.0, 0.0), ANY, ANY, _apart, points=((1.0, 1.0),)),
    "ne": Row(lambda x, y: (_step(x != y), 0.0, 0.0), ANY, ANY, _apart, points=((1.0, 1.0),)),
    # special functions: scipy.special as the reference (lgamma: a separate test checks
    # its digamma/trigamma partials and accuracy near the roots against mpmath)
    "erf": Row(lambda x, y: (special.erf(x), 2 / np.sqrt(np.pi) * np.exp(-x * x), 0.0), ANY, points=((6.0, 0.0),)),
    "erfc": Row(lambda x, y: (special.erfc(x), -2 / np.sqrt(np.pi) * np.exp(-x * x), 0.0), ANY, points=((5.0, 0.0),)),
    "lgamma": Row(
        lambda x, y: (special.gammaln(x), special.digamma(x), 0.0),
        ((-4.9, -4.1), (-3.9, -3.1), (-0.9, -0.1), (0.05, 30.0)),
        points=((1e-8, 0.0), (0.5, 0.0), (1e5, 0.0), (-2.5, 0.0)),
    ),
    "sign": Row(lambda x, y: (np.sign(x), 0.0, 0.0), AWAY_FROM_0, points=((0.0, 0.0),)),
    # piecewise constant: NumPy as the reference, away from the jumps (and on them)
    "floor": Row(lambda x, y: (np.floor(x), 0.0, 0.0), ANY, valid=_off_integers, points=((2.0, 0.0), (-0.0, 0.0))),
    "ceil": Row(lambda x, y: (np.ceil(x), 0.0, 0.0), ANY, valid=_off_integers, points=((2.0, 0.0), (-0.5, 0.0))),
    "trunc": Row(lambda x, y: (np.trunc(x), 0.0, 0.0), ANY, valid=_off_integers, points=((-2.0, 0.0),)),
    "rint": Row(lambda x, y: (np.rint(x), 0.0, 0.0), ANY, valid=_off_halves, points=((2.5, 0.0), (-1.5, 0.0))),
    "mod": Row(
        lambda x, y: (np.mod(x, y), 1.0, -np.floor_divide(x, y)), ANY, AWAY_FROM_0, _off_multiples, points=((3.0, 1.5),)
    ),
    "fmod": Row(
        lambda x, y: (np.fmod(x, y), 1.0, -np.trunc(x / y)), ANY, AWAY_FROM_0, _off_multiples,
        points=((3.0, 1.5), (-3.5, 2.0), (7.25, -2.0)),
    ),
    "floordiv": Row(
        lambda x, y: (np.floor_divide(x, y), 0.0, 0.0), ANY, AWAY_FROM_0, _off_multiples, points=((3.0, 1.5),)
    ),
    "stop_gradient": Row(lambda x, y: (x, 0.0, 0.0), ANY),
    "log_sigmoid": Row(
        lambda x, y: (special.log_expit(x), _sigmoid(-x), 0.0), (-6.0, 6.0), points=((40.0, 0.0), (-40.0, 0.0))
    ),
    "logaddexp": Row(
        lambda x, y: (np.logaddexp(x, y), np.exp(x - np.logaddexp(x, y)), np.exp(y - np.logaddexp(x, y))),
        ANY,
        ANY,
        points=((1.5, 1.5), (700.0, -700.0), (-800.0, -801.0)),
    ),
}

# Sources have no formula; the guard is checked on its own below.
UNTABLED = {"leaf", "param", "guard"}
TABLED = [op for op in ops.OPS if op.name not in UNTABLED]


def _op_id(op):
    return op.name


@functools.cache
def compiled(code):
    # As the kernels compile it (their math module, helpers compiled too), with NumPy's
    # error model: 1 / 0 is inf, not ZeroDivisionError.
    return ops.formulas(kernels._MATH, wrap=numba.njit(error_model="numpy"))[code]


def _uniform(rng, domain):
    if isinstance(domain[0], tuple):
        domain = domain[rng.integers(len(domain))]
    return float(rng.uniform(*domain))


def sample(op, n=8):
    """n points of the op's domain (the same ones every run), then the row's extra points."""
    row = ROWS[op.name]
    rng = np.random.default_rng(zlib.crc32(op.name.encode()))
    points = []
    while len(points) < n:
        x = _uniform(rng, row.x)
        y = _uniform(rng, row.y)
        if row.valid(x, y):
            points.append((x, y))
    return points


def _step_size(t):
    return 1e-5 * max(1.0, abs(t))


def central(f, x, y):
    """Central differences (d/dx, d/dy) of every output of f at (x, y)."""
    hx = _step_size(x)
    hy = _step_size(y)
    dx = (np.array(f(x + hx, y)) - np.array(f(x - hx, y))) / (2 * hx)
    dy = (np.array(f(x, y + hy)) - np.array(f(x, y - hy))) / (2 * hy)
    return dx, dy


def test_every_op_has_a_row():
    assert {op.name for op in TABLED} == set(ROWS)


def test_op_table_is_consistent():
    assert [op.code for op in ops.OPS] == list(range(len(ops.OPS)))
    assert len(set(ops.NAMES)) == len(ops.OPS)
    for op in ops.OPS:
        assert ops.CODE[op.name] == op.code
        assert (op.formula is None) == (op.arity == 0)
    assert ops.OPS[ops.LEAF].name == "leaf"
    assert ops.OPS[ops.PARAM].name == "param"
    assert ops.OPS[ops.GUARD].arity == 1
    assert max(op.code for op in ops.OPS) < 256  # opcodes are stored as uint8


@pytest.mark.parametrize("op", TABLED, ids=_op_id)
def test_value_and_partials_match_reference(op):
    row = ROWS[op.name]
    for x, y in sample(op) + list(row.points):
        got = op.formula(x, y)
        assert len(got) == 6
        want = row.ref(x, y)
        np.testing.assert_allclose(got[:3], want, rtol=1e-12, atol=1e-14, err_msg=f"{op.name}({x}, {y})")
        if op.arity == 1:
            assert got[2] == got[4] == got[5] == 0.0, "a unary op has no y-derivatives"


@pytest.mark.parametrize("op", TABLED, ids=_op_id)
def test_first_partials_match_central_differences(op):
    if op.name == "stop_gradient":
        pytest.skip("zero derivative by definition, of a value that is x (test_eager checks it)")
    for x, y in sample(op):

        def value(x, y):
            return op.formula(x, y)[0]

        dx, dy = central(value, x, y)
        v, fx, fy = op.formula(x, y)[:3]
        np.testing.assert_allclose(fx, dx, rtol=1e-6, atol=1e-7, err_msg=f"d/dx {op.name}({x}, {y})")
        if op.arity == 2:
            np.testing.assert_allclose(fy, dy, rtol=1e-6, atol=1e-7, err_msg=f"d/dy {op.name}({x}, {y})")


@pytest.mark.parametrize("op", TABLED, ids=_op_id)
def test_second_partials_match_central_differences_of_first(op):
    for x, y in sample(op):

        def first(x, y):
            return op.formula(x, y)[1:3]

        (dxx, dyx), (dxy, dyy) = central(first, x, y)
        fxx, fxy, fyy = op.formula(x, y)[3:]
        where = f"{op.name}({x}, {y})"
        np.testing.assert_allclose(fxx, dxx, rtol=1e-6, atol=1e-7, err_msg=f"d2/dx2 {where}")
        if op.arity == 2:
            np.testing.assert_allclose(fxy, dxy, rtol=1e-6, atol=1e-7, err_msg=f"d2/dxdy {where}")
            np.testing.assert_allclose(fxy, dyx, rtol=1e-6, atol=1e-7, err_msg=f"d2/dydx {where}")
            np.testing.assert_allclose(fyy, dyy, rtol=1e-6, atol=1e-7, err_msg=f"d2/dy2 {where}")


def _same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 1e-300, 1e300, -1e300, 710.0, -710.0, math.inf, -math.inf, math.nan]


def _any_floats(n):
    """n (x, y) pairs of arbitrary doubles: random bit patterns (every exponent, subnormals,
    infinities, NaNs) and random signs and magnitudes between 1e-3 and 1e3."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64).view(np.float64)
    moderate = rng.choice([-1.0, 1.0], size=(n, 2)) * 10.0 ** rng.uniform(-3, 3, size=(n, 2))
    return [tuple(map(float, p)) for p in np.concatenate([bits, moderate])]


ANY_FLOATS = _any_floats(1000)


@pytest.mark.parametrize("op", [op for op in ops.OPS if op.formula is not None], ids=_op_id)
def test_python_and_compiled_formula_agree(op):
    # Recording runs the formula in Python, replay runs it compiled: they must not drift,
    # in the domain, at its edges, or anywhere (where Python raises, see the next test).
    row = ROWS.get(op.name)
    points = sample(op) + list(row.points) if row else []
    points += list(itertools.product(SPECIALS, repeat=2)) + ANY_FLOATS
    f = compiled(op.code)
    for x, y in points:
        try:
            py = op.formula(x, y)
        except (ArithmeticError, ValueError):
            continue
        jit = f(x, y)
        for k, (p, c) in enumerate(zip(py, jit)):
            assert _same(p, c) or math.isclose(p, c, rel_tol=1e-14), f"{op.name}({x}, {y})[{k}]: {p} != {c}"


# How the public API records each op on Values x and y (a unary op reads y only as
# powc's constant); the guard is recorded by comparisons, on their outcome.
RECORD = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y,
    "neg": lambda x, y: -x,
    "powc": lambda x, y: x**y.data,
    "pow": lambda x, y: x**y,
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("exp", "log", "log1p", "expm1")},
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("sqrt", "softplus", "sigmoid")},
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("sin", "cos", "tan", "asin", "acos")},
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("atan", "sinh", "cosh", "tanh")},
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("relu", "abs")},
    **{name: getattr(jitad, name) for name in ("atan2", "hypot", "maximum", "minimum")},
    "where_true": lambda x, y: jitad.where(x, y, y),
    "where_false": lambda x, y: jitad.where(x, y, y),
    "lt": jitad.less,
    "le": jitad.less_equal,
    "eq": jitad.equal,
    "ne": jitad.not_equal,
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("erf", "erfc", "lgamma", "sign")},
    "log_sigmoid": lambda x, y: jitad.log_sigmoid(x),
    "logaddexp": jitad.logaddexp,
    **{name: (lambda f: lambda x, y: f(x))(getattr(jitad, name)) for name in ("floor", "ceil", "trunc", "rint")},
    "stop_gradient": lambda x, y: jitad.stop_gradient(x),
    "mod": lambda x, y: x % y,
    "floordiv": lambda x, y: x // y,
    "fmod": jitad.fmod,
}


def test_every_op_has_a_recording():
    assert set(RECORD) == {op.name for op in TABLED}


@pytest.mark.parametrize("op", TABLED, ids=_op_id)
def test_recording_agrees_with_the_compiled_formula(op):
    # Where Python's math raises, recording falls back to an IEEE evaluation of the formula;
    # replay runs the compiled formula. An entry must hold what replay would compute.
    f = compiled(op.code)
    points = []
    for x, y in list(itertools.product(SPECIALS, repeat=2)) + ANY_FLOATS:
        try:
            op.formula(x, y)
        except (ArithmeticError, ValueError):
            points.append((x, y))
    points += sample(op)
    for x, y in points:
        with jitad.Tape() as tape:
            RECORD[op.name](Value(x), Value(y))
        if op.name not in tape.names:
            continue  # folded away: x ** 1 is x
        i = tape.names.index(op.name)
        value = tape.value
        a, b, c = tape.a[i], tape.b[i], tape.const[i]
        x_in = value[a] if a >= 0 else c
        y_in = value[b] if b >= 0 else c
        want = f(x_in, y_in)[:3]
        got = (value[i], tape.da[i], tape.db[i])
        for k, (g, w) in enumerate(zip(got, want)):
            assert _same(g, w) or math.isclose(g, w, rel_tol=1e-14), f"{op.name}({x_in}, {y_in})[{k}]: {g} != {w}"


def test_guard_is_one_when_the_comparison_has_its_recorded_outcome():
    guard = ops.OPS[ops.GUARD].formula
    assert guard(1.0, 1.0)[0] == 1.0
    assert guard(0.0, 0.0)[0] == 1.0
    assert guard(0.0, 1.0)[0] == 0.0
    assert guard(1.0, 0.0)[0] == 0.0
    assert guard(1.0, 1.0)[1:] == (0.0,) * 5


# IEEE results where Python's math raises, and PyTorch's choices at kinks, in the compiled
# formula (replay), which recording matches (test above).
EDGES = [
    ("log", 0.0, 0.0, (-math.inf, math.inf)),
    ("log", -1.0, 0.0, (math.nan, -1.0)),
    ("sqrt", 0.0, 0.0, (0.0, math.inf)),
    ("sqrt", -1.0, 0.0, (math.nan, math.nan)),
    ("exp", 1000.0, 0.0, (math.inf, math.inf)),
    ("exp", -1000.0, 0.0, (0.0, 0.0)),
    ("div", 1.0, 0.0, (math.inf, math.inf)),
    ("div", -1.0, 0.0, (-math.inf, math.inf)),
    ("relu", 0.0, 0.0, (0.0, 0.0)),
    ("relu", math.nan, 0.0, (math.nan, 0.0)),
    ("abs", 0.0, 0.0, (0.0, 0.0)),
    ("abs", -0.0, 0.0, (0.0, 0.0)),
    ("powc", 0.0, -1.0, (math.inf, -math.inf)),
    ("powc", 0.0, 0.0, (1.0, 0.0)),
    ("powc", -8.0, 1.0 / 3.0, (math.nan, math.nan)),
    ("asin", 2.0, 0.0, (math.nan, math.nan)),
    ("acos", 1.0, 0.0, (0.0, -math.inf)),
    ("log1p", -1.0, 0.0, (-math.inf, math.inf)),
    ("sigmoid", -1000.0, 0.0, (0.0, 0.0)),
    ("sigmoid", 1000.0, 0.0, (1.0, 0.0)),
    ("softplus", 1000.0, 0.0, (1000.0, 1.0)),
    ("softplus", -1000.0, 0.0, (0.0, 0.0)),
    ("sinh", 1000.0, 0.0, (math.inf, math.inf)),
    ("tanh", 1000.0, 0.0, (1.0, 0.0)),
]


@pytest.mark.parametrize(("name", "x", "y", "want"), EDGES, ids=[f"{e[0]}({e[1]},{e[2]})" for e in EDGES])
def test_edges_follow_ieee_and_pytorch(name, x, y, want):
    got = compiled(ops.CODE[name])(x, y)[:2]
    for g, w in zip(got, want):
        assert _same(g, w), f"{name}({x}, {y}) = {got}, want {want}"


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_tie_splits_the_gradient(name):
    for f in (ops.OPS[ops.CODE[name]].formula, compiled(ops.CODE[name])):
        assert f(2.0, 2.0)[:3] == (2.0, 0.5, 0.5)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_nan_propagates_through_maximum_and_minimum(name):
    for x, y in ((math.nan, 1.0), (1.0, math.nan)):
        assert math.isnan(ops.OPS[ops.CODE[name]].formula(x, y)[0])


def test_pow_at_zero_base_has_zero_exponent_derivative():
    # Like PyTorch: d/dy 0 ** y is 0 for y >= 0 rather than nan (0 * log 0).
    for f in (ops.OPS[ops.CODE["pow"]].formula, compiled(ops.CODE["pow"])):
        assert f(0.0, 2.0)[:3] == (0.0, 0.0, 0.0)
        assert f(0.0, 1.0)[:3] == (0.0, 1.0, 0.0)
    v, dx, dy = ops.OPS[ops.CODE["pow"]].formula(-2.0, 2.0)[:3]
    assert (v, dx) == (4.0, -4.0)
    assert math.isnan(dy)  # log of a negative base
