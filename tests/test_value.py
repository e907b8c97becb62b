"""Recording through the public API: operators, methods, module functions and NumPy
ufuncs on Values, checked against central differences of the same expression on floats.
"""

import math

import numpy as np
import pytest

import jitad
from jitad import StaleValueError, Value, ops

from conftest import central_gradient

X0 = (0.6, 1.3)  # a in (-1, 1) for asin/acos, b > 1; both positive for log, sqrt, pow


def _relu(x):
    return max(x, 0.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _same(f):
    return (f, f)


# name -> (expression on Values, the same expression on floats)
EXPRESSIONS = {
    # operators, with Values and numbers on either side
    "a + b": _same(lambda a, b: a + b),
    "a + 2": _same(lambda a, b: a + 2),
    "2 + a": _same(lambda a, b: 2 + a),
    "a - b": _same(lambda a, b: a - b),
    "a - 2.5": _same(lambda a, b: a - 2.5),
    "2.5 - a": _same(lambda a, b: 2.5 - a),
    "a * b": _same(lambda a, b: a * b),
    "a * 3": _same(lambda a, b: a * 3),
    "3 * a": _same(lambda a, b: 3 * a),
    "a / b": _same(lambda a, b: a / b),
    "a / 4": _same(lambda a, b: a / 4),
    "4 / a": _same(lambda a, b: 4 / a),
    "a ** b": _same(lambda a, b: a**b),
    "a ** 2": _same(lambda a, b: a**2),
    "b ** -1.5": _same(lambda a, b: b**-1.5),
    "a ** 0": _same(lambda a, b: a**0 + b),
    "2 ** a": _same(lambda a, b: 2**a),
    "-a": _same(lambda a, b: -a),
    "+a": _same(lambda a, b: +a * b),
    "abs(a - b)": _same(lambda a, b: abs(a - b)),
    "a * 1 + 0": _same(lambda a, b: (a * 1 + 0 - 0) / 1 * b),
    "numpy scalars right": (
        lambda a, b: a * np.float32(2) + b / np.float64(4) - np.int64(3) + a ** np.int32(3),
        lambda a, b: a * 2.0 + b / 4.0 - 3.0 + a**3.0,
    ),
    "0-d array * a": _same(lambda a, b: np.array(2.5) * a + np.array(1.5) / b),
    "python branch": _same(lambda a, b: a * b if a < b else a + b),
    "where guarded": _same(lambda a, b: jitad.where(a > b, a * a, b * b)),
    # methods
    "relu": (lambda a, b: (a - b).relu() + a.relu(), lambda a, b: _relu(a - b) + _relu(a)),
    "tanh": (lambda a, b: a.tanh(), lambda a, b: np.tanh(a)),
    "exp": (lambda a, b: a.exp(), lambda a, b: np.exp(a)),
    "log": (lambda a, b: b.log(), lambda a, b: np.log(b)),
    "sin": (lambda a, b: a.sin(), lambda a, b: np.sin(a)),
    "cos": (lambda a, b: a.cos(), lambda a, b: np.cos(a)),
    "sqrt": (lambda a, b: b.sqrt(), lambda a, b: np.sqrt(b)),
    "sigmoid": (lambda a, b: a.sigmoid(), lambda a, b: _sigmoid(a)),
    "tan": (lambda a, b: a.tan(), lambda a, b: np.tan(a)),
    "arcsin": (lambda a, b: a.arcsin(), lambda a, b: np.arcsin(a)),
    "arccos": (lambda a, b: a.arccos(), lambda a, b: np.arccos(a)),
    "arctan": (lambda a, b: b.arctan(), lambda a, b: np.arctan(b)),
    "sinh": (lambda a, b: a.sinh(), lambda a, b: np.sinh(a)),
    "cosh": (lambda a, b: a.cosh(), lambda a, b: np.cosh(a)),
    "log1p": (lambda a, b: a.log1p(), lambda a, b: np.log1p(a)),
    "expm1": (lambda a, b: a.expm1(), lambda a, b: np.expm1(a)),
    # module functions (they take floats too, returning floats)
    "jitad unary": _same(
        lambda a, b: (
            jitad.sin(a) * jitad.cos(b)
            + jitad.tan(a)
            - jitad.exp(a) / jitad.log(b)
            + jitad.log1p(a)
            + jitad.expm1(b) * jitad.sqrt(b)
            + jitad.tanh(a)
            - jitad.sigmoid(b)
            + jitad.relu(a - b)
            + jitad.abs(a - b)
        )
    ),
    "jitad inverse and hyperbolic": _same(
        lambda a, b: (
            jitad.asin(a) + jitad.acos(a) * jitad.atan(b) + jitad.sinh(a) * jitad.cosh(b) + jitad.softplus(a - b)
        )
    ),
    "jitad binary": _same(
        lambda a, b: (
            jitad.atan2(a, b)
            + jitad.atan2(a, 2.0) * jitad.atan2(-2.0, b)
            + jitad.hypot(a, b)
            + jitad.hypot(3.0, a)
            + jitad.hypot(b, 3.0)
        )
    ),
    "jitad maximum minimum": _same(
        lambda a, b: jitad.maximum(a, b) * jitad.minimum(a, b) + jitad.maximum(a, 1.0) + jitad.minimum(2.0, b)
    ),
    "jitad where": _same(
        lambda a, b: (
            jitad.where(jitad.greater(a, b), a, b * b)
            + jitad.where(jitad.less(a, b), a * b, 2.0)
            + jitad.where(jitad.less_equal(b, a), 1.0, jitad.sin(a))
            + jitad.where(jitad.greater_equal(a, 0.5), jitad.exp(b), a)
            + jitad.where(jitad.equal(a, b), 7.0, a)
            + jitad.where(jitad.not_equal(a, 0.6), 7.0, b)
        )
    ),
    # NumPy ufuncs on Values
    "numpy unary": _same(
        lambda a, b: (
            np.sin(a)
            + np.cos(b) * np.tan(a)
            + np.exp(a)
            - np.log(b)
            + np.log1p(a) * np.expm1(a)
            + np.sqrt(b)
            + np.sinh(a)
            - np.cosh(a) * np.tanh(b)
            + np.arcsin(a)
            + np.arccos(a) * np.arctan(b)
            + np.absolute(a - b)
            + np.negative(a)
            + np.positive(b)
            + np.square(a)
        )
    ),
    "numpy binary": _same(
        lambda a, b: (
            np.add(a, b) * np.subtract(a, 2.0)
            + np.multiply(2.0, a)
            + np.true_divide(a, b)
            + np.divide(1.0, b)
            + np.power(a, b)
            + np.power(a, 3)
            + np.power(2.0, a)
            + np.arctan2(a, b)
            + np.hypot(a, b)
            + np.maximum(a, b)
            + np.minimum(a, 1.0)
            + np.fmax(a, b) * np.fmin(b, 2.0)
        )
    ),
    "piecewise constant": _same(
        lambda a, b: (
            a * math.floor(b) + math.ceil(a) * b + math.trunc(-b) + round(a * 3.7) + a % 0.25 + (b * 7.0) // a
            + np.floor(a) + np.rint(b) + np.mod(a, b) + np.floor_divide(b, 0.2) + np.trunc(a) + np.ceil(b)
            + jitad.stop_gradient(a) - jitad.stop_gradient(a)  # recorded; cancels in the references
        )
    ),
    "fmod": (
        lambda a, b: np.fmod(a, b) * b + jitad.fmod(-3.0 * a, b) + np.fmod(np.array([a, b]), 0.7)[0],
        lambda a, b: math.fmod(a, b) * b + math.fmod(-3.0 * a, b) + math.fmod(a, 0.7),
    ),
    # a Value beside arrays: jitad's function per element, broadcast (NumPy has no object
    # loop for logaddexp)
    "numpy ufuncs over arrays": _same(
        lambda a, b: np.sum(np.logaddexp(a, np.array([0.5, -1.0])) * np.fmod(np.array([2.5, -3.5]), b))
        + np.sum(np.sin(np.array([1.0, 2.0]) * a) * np.maximum(np.array([[0.1], [2.0]]), b))
    ),
    "special functions": (
        lambda a, b: (
            jitad.erf(a) * jitad.erfc(b) + jitad.lgamma(b) + jitad.sign(a - 2.0) * b
            + jitad.log_sigmoid(a) + jitad.logaddexp(a, b) + np.sign(b) * a
        ),
        lambda a, b: (
            math.erf(a) * math.erfc(b) + math.lgamma(b) + math.copysign(1.0, a - 2.0) * b
            - float(np.logaddexp(0.0, -a)) + float(np.logaddexp(a, b)) + a
        ),
    ),
    "numpy comparisons": _same(
        lambda a, b: a * b if np.less(a, b) and np.less_equal(a, b) and np.greater(b, a) else a + b
    ),
}


def _record(name, x0=X0):
    """The expression on fresh leaf Values at x0: (leaves, output)."""
    on_values, _ = EXPRESSIONS[name]
    leaves = [Value(v) for v in x0]
    return leaves, on_values(*leaves)


@pytest.mark.parametrize("name", EXPRESSIONS)
def test_expression_value_and_gradient(tape, name):
    on_values, on_floats = EXPRESSIONS[name]
    (a, b), y = _record(name)
    assert isinstance(y, Value)
    assert y.data == pytest.approx(on_floats(*X0), rel=1e-13, abs=1e-15)
    y.backward()
    want = central_gradient(on_floats, X0)
    np.testing.assert_allclose([a.grad, b.grad], want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jitad.gradients(y, [a, b]), [a.grad, b.grad], rtol=1e-15)


def test_every_op_is_reachable_from_the_public_api(tape):
    kept = [_record(name) for name in EXPRESSIONS]  # the tape keeps what Values refer to
    unreachable = set(ops.NAMES) - set(tape.names) - {"param"}  # parameters come from jitad.trace
    assert not unreachable


NUMPY_SCALARS_LEFT = {
    "np.float64 * v": (lambda v: np.float64(2) * v, 2 * 0.6),
    "np.float64 + v": (lambda v: np.float64(2) + v, 2 + 0.6),
    "np.float64 - v": (lambda v: np.float64(2) - v, 2 - 0.6),
    "np.float64 / v": (lambda v: np.float64(2) / v, 2 / 0.6),
    "np.float64 ** v": (lambda v: np.float64(2) ** v, 2**0.6),
    "np.float32 * v": (lambda v: np.float32(2) * v, 2 * 0.6),
    "np.int64 * v": (lambda v: np.int64(2) * v, 2 * 0.6),
}


@pytest.mark.parametrize("name", NUMPY_SCALARS_LEFT)
def test_numpy_scalar_on_the_left(tape, name):
    # np.float64(2) * v makes NumPy call Value.__array_ufunc__(multiply, np.float64(2), v).
    expression, want = NUMPY_SCALARS_LEFT[name]
    v = Value(0.6)
    y = expression(v)
    assert isinstance(y, Value)
    assert y.data == pytest.approx(want)
    assert jitad.gradients(y, v) == pytest.approx(central_gradient(lambda x: expression(x), [0.6])[0], rel=1e-6)


def test_numpy_complex_scalar_is_rejected(tape):
    v = Value(0.6)
    with pytest.raises(TypeError):
        v * np.complex64(1)
    with pytest.raises(TypeError):
        np.complex64(1) * v


# --- object arrays of Values ----------------------------------------------------------------


def test_object_arrays_sum_matmul_dot(tape):
    x0 = np.array([0.3, -1.2, 2.0])
    W = np.array([[1.0, 2.0, -0.5], [0.25, -1.0, 3.0]])

    def f(x):
        h = np.tanh(np.dot(W, x))  # np.tanh of an object array calls Value.tanh
        return sum(x * x) + x @ x + np.dot(h, h) + (W @ x).sum() + np.sum(np.sin(x) * np.exp(x))

    x = np.array([Value(v) for v in x0])
    y = f(x)
    assert isinstance(y, Value)
    assert y.data == pytest.approx(f(x0), rel=1e-13)
    y.backward()
    want = central_gradient(lambda *v: f(np.array(v)), x0)
    np.testing.assert_allclose([v.grad for v in x], want, rtol=1e-6)
    np.testing.assert_allclose(jitad.gradients(y, x), want, rtol=1e-6)


def test_ufunc_between_a_float_array_and_a_value(tape):
    v = Value(0.5)
    out = np.array([1.0, 2.0, 3.0]) * v + np.maximum(np.array([0.0, 1.0, 0.2]), v)
    assert out.dtype == object
    assert [o.data for o in out] == [1.0, 2.0, 2.0]
    total = out.sum()
    assert jitad.gradients(total, v) == pytest.approx(1 + 2 + 3 + 1 + 0 + 1)


def test_binary_ufuncs_on_object_arrays_of_values(tape):
    # NumPy's object loops call a method named after the ufunc on each element.
    x = np.array([Value(0.5), Value(2.0)])
    z = np.array([Value(1.5), Value(-0.25)])
    for ufunc, function in ((np.power, lambda x, z: x**z), (np.arctan2, jitad.atan2), (np.hypot, jitad.hypot)):
        got = ufunc(x, z)
        want = function(x, z)
        assert [g.data for g in got] == [w.data for w in want]
        leaves = [*x, *z]
        np.testing.assert_array_equal(jitad.gradients(sum(got), leaves), jitad.gradients(sum(want), leaves))


def test_module_functions_on_arrays_map_elementwise(tape):
    x = np.array([Value(0.5), Value(2.0)])
    y = jitad.sin(x)
    assert y.shape == (2,)
    assert [v.data for v in y] == [math.sin(0.5), math.sin(2.0)]
    assert list(jitad.exp(np.array([0.0, 1.0]))) == [1.0, math.e]


# --- module functions on plain numbers ---------------------------------------------------------

FLOAT_FUNCTIONS = [
    ("sin", (0.5,), np.sin),
    ("cos", (0.5,), np.cos),
    ("tan", (0.5,), np.tan),
    ("exp", (0.5,), np.exp),
    ("log", (0.5,), np.log),
    ("log1p", (0.5,), np.log1p),
    ("expm1", (0.5,), np.expm1),
    ("sqrt", (0.5,), np.sqrt),
    ("tanh", (0.5,), np.tanh),
    ("sinh", (0.5,), np.sinh),
    ("cosh", (0.5,), np.cosh),
    ("asin", (0.5,), np.arcsin),
    ("acos", (0.5,), np.arccos),
    ("atan", (0.5,), np.arctan),
    ("sigmoid", (0.5,), _sigmoid),
    ("softplus", (0.5,), lambda x: np.logaddexp(0, x)),
    ("relu", (-0.5,), _relu),
    ("abs", (-0.5,), np.abs),
    ("atan2", (0.5, -2.0), np.arctan2),
    ("hypot", (3.0, 4.0), np.hypot),
    ("maximum", (3, 4.0), np.maximum),
    ("minimum", (np.float32(3), 4), np.minimum),
    ("less", (3.0, 4.0), lambda x, y: float(x < y)),
    ("greater", (3.0, 4.0), lambda x, y: float(x > y)),
    ("less_equal", (4.0, 4.0), lambda x, y: float(x <= y)),
    ("greater_equal", (3.0, 4.0), lambda x, y: float(x >= y)),
    ("equal", (4.0, 4.0), lambda x, y: float(x == y)),
    ("not_equal", (4.0, 4.0), lambda x, y: float(x != y)),
    ("log", (0.0,), lambda x: -math.inf),
    ("log", (-1.0,), lambda x: math.nan),
    ("sqrt", (-1.0,), lambda x: math.nan),
    ("exp", (1000.0,), lambda x: math.inf),
]


@pytest.mark.parametrize(("name", "args", "reference"), FLOAT_FUNCTIONS, ids=[f"{f[0]}{f[1]}" for f in FLOAT_FUNCTIONS])
def test_module_function_of_numbers_is_a_float(tape, name, args, reference):
    got = getattr(jitad, name)(*args)
    assert type(got) is float
    np.testing.assert_allclose(got, reference(*args), rtol=1e-15)
    assert len(tape) == 0


def test_where_with_a_python_bool_chooses_plainly(tape):
    a = Value(1.0)
    assert jitad.where(True, a, 2.0) is a
    assert jitad.where(False, a, 2.0) == 2.0


# --- reference examples -----------------------------------------------------------------------


def _micrograd_example(a, b, relu):
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + relu(b + a)
    d += 3 * d + relu(b - a)
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    return g


def test_micrograd_readme_example(tape):
    a = Value(-4.0)
    b = Value(2.0)
    g = _micrograd_example(a, b, Value.relu)
    g.backward()
    assert g.data == pytest.approx(24.70408163265306, rel=1e-14)
    assert a.grad == pytest.approx(138.83381924198252, rel=1e-14)
    assert b.grad == pytest.approx(645.5772594752186, rel=1e-14)
    # The same numbers from the float expression, independently of the literals above.
    assert g.data == _micrograd_example(-4.0, 2.0, _relu)
    want = central_gradient(lambda a, b: _micrograd_example(a, b, _relu), [-4.0, 2.0])
    np.testing.assert_allclose([a.grad, b.grad], want, rtol=1e-7)


def test_sin_exp_example(tape):
    x1 = Value(1.5)
    x2 = Value(0.5)
    f = (x2.sin() + 1) / (x2 + x1.exp()) + x1 * x2
    f.backward()
    assert x2.grad == pytest.approx(1.6165488003791766, rel=1e-15)
    # by hand: f = u / w + x1 x2 with u = sin x2 + 1, w = x2 + e^x1
    u = math.sin(0.5) + 1
    w = 0.5 + math.exp(1.5)
    assert x2.grad == pytest.approx(math.cos(0.5) / w - u / w**2 + 1.5, rel=1e-15)
    assert x1.grad == pytest.approx(-u * math.exp(1.5) / w**2 + 0.5, rel=1e-15)
    assert f.data == pytest.approx(u / w + 0.75, rel=1e-15)


def _diamond(a, d):
    b = 5 - 3 * a
    c = b * b
    e = c * d
    f = e + a * b
    o = 2 * b * d
    g = 3 * f - o
    return g


def test_multi_node_graph_with_shared_nodes(tape):
    # g = 3 ((5 - 3a)^2 d + a (5 - 3a)) - 2 (5 - 3a) d, so by hand
    # dg/da = (54 a - 84) d + 15 - 18 a and dg/dd = 3 (5 - 3a)^2 - 2 (5 - 3a).
    for a0, d0 in ((2.0, 3.0), (-1.0, 0.5), (0.25, -4.0)):
        a = Value(a0)
        d = Value(d0)
        g = _diamond(a, d)
        g.backward()
        b0 = 5 - 3 * a0
        assert g.data == pytest.approx(3 * (b0 * b0 * d0 + a0 * b0) - 2 * b0 * d0, rel=1e-15)
        assert a.grad == pytest.approx((54 * a0 - 84) * d0 + 15 - 18 * a0, rel=1e-14)
        assert d.grad == pytest.approx(3 * b0 * b0 - 2 * b0, rel=1e-14)
        np.testing.assert_allclose([a.grad, d.grad], central_gradient(_diamond, [a0, d0]), rtol=1e-7)


# --- gradients with respect to any recorded node ---------------------------------------------


def test_gradients_wrt_intermediate_nodes(tape):
    x1 = Value(0.7)
    x2 = Value(-1.1)
    u = x1 * x2  # intermediate
    v = jitad.sin(u) + x2
    y = v * u + jitad.exp(x1) * v

    def f(x1, x2):
        u = x1 * x2
        v = math.sin(u) + x2
        return v * u + math.exp(x1) * v

    def f_of_u(x1, x2, u):  # u independent: only its uses downstream depend on it
        v = math.sin(u) + x2
        return v * u + math.exp(x1) * v

    def f_of_v(x1, u, v):
        return v * u + math.exp(x1) * v

    got = jitad.gradients(y, [x1, x2, u, v, y])
    want_x = central_gradient(f, [0.7, -1.1])
    want_u = central_gradient(f_of_u, [0.7, -1.1, u.data])[2]
    want_v = central_gradient(f_of_v, [0.7, u.data, v.data])[2]
    np.testing.assert_allclose(got, [*want_x, want_u, want_v, 1.0], rtol=1e-7)


def test_gradients_of_a_node_recorded_later_is_zero(tape):
    x = Value(2.0)
    y = x * x
    later = y * 3
    np.testing.assert_array_equal(jitad.gradients(y, [x, later]), [4.0, 0.0])
    assert jitad.gradients(later, [y, x]).tolist() == [3.0, 12.0]


def test_gradients_shapes(tape):
    x = Value(2.0)
    z = Value(3.0)
    y = x * z
    one = jitad.gradients(y, x)
    assert one.shape == ()
    assert one == 3.0
    grid = jitad.gradients(y, np.array([[x, z], [z, y]], dtype=object))
    assert grid.shape == (2, 2)
    assert grid.tolist() == [[3.0, 2.0], [2.0, 1.0]]
    assert jitad.gradients(y, []).shape == (0,)


def test_gradients_leave_grad_untouched(tape):
    x = Value(2.0)
    y = x * x
    jitad.gradients(y, [x])
    assert x.grad == 0.0
    y.backward()
    jitad.gradients(y * 5, [x])
    assert x.grad == 4.0


def test_gradients_rejects_non_values(tape):
    x = Value(2.0)
    y = x * x
    with pytest.raises(TypeError):
        jitad.gradients(y, [x, 2.0])
    with pytest.raises(TypeError):
        jitad.gradients(3.0, [])


def test_gradients_of_a_non_value_is_a_type_error(tape):
    x = Value(2.0)
    with pytest.raises(TypeError):
        jitad.gradients(3.0, [x])


# --- accumulation -------------------------------------------------------------------------------


def test_backward_accumulates(tape):
    x = Value(3.0)
    y = x * x
    y.backward()
    assert x.grad == 6.0
    y.backward()
    assert x.grad == 12.0
    y.backward(gradient=0.5)
    assert x.grad == 15.0
    assert y.grad == 2.5


def test_zero_grad_and_grad_assignment_reset(tape):
    x = Value(3.0)
    z = Value(4.0)
    y = x * z
    y.backward()
    assert (x.grad, z.grad) == (4.0, 3.0)
    x.grad = 0
    assert (x.grad, z.grad) == (0.0, 3.0)
    tape.zero_grad()
    assert (x.grad, z.grad, y.grad) == (0.0, 0.0, 0.0)
    y.backward()
    assert (x.grad, z.grad) == (4.0, 3.0)
    z.grad = 10
    y.backward()
    assert (x.grad, z.grad) == (8.0, 13.0)


def test_grad_of_a_value_recorded_after_backward(tape):
    x = Value(3.0)
    y = x * 2
    y.backward()
    later = Value(1.0)
    assert later.grad == 0.0
    later.grad = 7.0
    assert later.grad == 7.0
    assert x.grad == 2.0


def test_repr_is_micrographs(tape):
    x = Value(2.0)
    assert repr(x) == "Value(data=2.0, grad=0.0)"
    (x * 3).backward()
    assert repr(x) == "Value(data=2.0, grad=3.0)"
    assert str(x) == repr(x)


def test_data_and_float(tape):
    x = Value(np.float32(1.5))
    assert type(x.data) is float
    assert x.data == 1.5
    assert x.item() == 1.5
    assert Value(3).data == 3.0
    assert Value(np.int64(3)).data == 3.0
    assert x.tape is tape


# --- numerics --------------------------------------------------------------------------------


def test_domain_errors_give_nan_and_inf_not_exceptions(tape):
    assert math.isnan(Value(-1.0).log().data)
    assert jitad.log(Value(0.0)).data == -math.inf
    assert (1 / Value(0.0)).data == math.inf
    assert (-1 / Value(0.0)).data == -math.inf
    assert (Value(1.0) / Value(0.0)).data == math.inf
    assert Value(1000.0).exp().data == math.inf
    assert np.exp(Value(1000.0)).data == math.inf
    assert math.isnan(jitad.sqrt(Value(-1.0)).data)
    assert math.isnan(Value(2.0).arcsin().data)
    assert (Value(0.0) ** -1).data == math.inf
    assert math.isnan((Value(-8.0) ** (1 / 3)).data)
    assert jitad.cosh(Value(1000.0)).data == math.inf
    assert (Value(1e200) * Value(1e200)).data == math.inf
    assert Value(math.inf).data == math.inf


def test_derivatives_at_kinks_follow_pytorch(tape):
    x = Value(0.0)
    s = x.sqrt()
    assert jitad.gradients(s, x) == math.inf
    assert jitad.gradients(x.relu(), x) == 0.0
    assert jitad.gradients(abs(x), x) == 0.0
    assert jitad.gradients(jitad.abs(x), x) == 0.0
    assert jitad.gradients(x**0, x) == 0.0
    assert jitad.gradients(x**2, x) == 0.0


def test_zero_adjoint_skips_infinite_partial(tape):
    a = Value(0.0)
    b = jitad.sqrt(a)  # d b / d a = inf
    y = b * 0 + a
    assert y.data == 0.0
    assert jitad.gradients(y, a) == 1.0
    y.backward()
    assert a.grad == 1.0
    zero = Value(0.0)
    y2 = b * zero + a  # the zero comes from a Value this time
    np.testing.assert_array_equal(jitad.gradients(y2, [a, zero]), [1.0, 0.0])


def test_where_blocks_an_infinite_partial_in_the_branch_not_taken(tape):
    x = Value(0.0)
    y = jitad.where(jitad.greater(x, 0), jitad.sqrt(x), x)  # sqrt'(0) = inf, not chosen
    assert jitad.gradients(y, x) == 1.0
    y = jitad.where(jitad.greater(x, 0), jitad.log(x), 2 * x)  # log(0) = -inf, not chosen
    assert y.data == 0.0
    assert jitad.gradients(y, x) == 2.0


def test_overflow_gives_inf(tape):
    assert (Value(1e200) ** 2).data == math.inf
    assert (2 ** Value(5000.0)).data == math.inf
    assert (Value(2.0) ** Value(5000.0)).data == math.inf
    assert jitad.sinh(Value(-1000.0)).data == -math.inf
    assert jitad.expm1(Value(1000.0)).data == math.inf


def test_maximum_minimum_tie_splits(tape):
    a = Value(2.0)
    b = Value(2.0)
    np.testing.assert_array_equal(jitad.gradients(jitad.maximum(a, b), [a, b]), [0.5, 0.5])
    np.testing.assert_array_equal(jitad.gradients(jitad.minimum(a, b), [a, b]), [0.5, 0.5])
    assert jitad.gradients(jitad.maximum(a, a), a) == 1.0
    assert jitad.gradients(jitad.maximum(a, 2.0), a) == 0.5


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a", None, 1 + 2j, np.complex128(1), [1.0], np.array([1.0, 2.0])], ids=repr)
def test_value_rejects_non_real_numbers(tape, bad):
    with pytest.raises(TypeError):
        Value(bad)
    assert len(tape) == 0


def test_value_of_a_value_is_rejected(tape):
    with pytest.raises(TypeError):
        Value(Value(1.0))


@pytest.mark.parametrize("bad", ["a", None, 1 + 2j, object()], ids=repr)
def test_operators_reject_non_numbers(tape, bad):
    x = Value(1.0)
    with pytest.raises(TypeError):
        x + bad
    with pytest.raises(TypeError):
        bad * x
    with pytest.raises(TypeError):
        x**bad
    with pytest.raises(TypeError):
        x < bad
    assert len(tape) == 1


@pytest.mark.parametrize("bad", ["a", None, 1 + 2j], ids=repr)
def test_module_functions_reject_non_numbers(tape, bad):
    x = Value(1.0)
    with pytest.raises(TypeError):
        jitad.sin(bad)
    with pytest.raises(TypeError):
        jitad.atan2(x, bad)
    with pytest.raises(TypeError):
        jitad.atan2(bad, x)
    with pytest.raises(TypeError):
        jitad.maximum(bad, 1.0)
    with pytest.raises(TypeError):
        jitad.sin(x, x)
    assert len(tape) == 1


def test_values_from_two_tapes_do_not_mix():
    with jitad.Tape():
        x = Value(1.0)
    with jitad.Tape() as other:
        z = Value(2.0)
        with pytest.raises(StaleValueError):
            x + z
        with pytest.raises(StaleValueError):
            z * x
        with pytest.raises(StaleValueError):
            x * 2
        with pytest.raises(StaleValueError):
            jitad.sin(x)
        with pytest.raises(StaleValueError):
            jitad.gradients(z * 2, [x])
        assert len(other) == 2  # z and z * 2 only
