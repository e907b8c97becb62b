"""Record once, replay many: ``jitad.trace`` and ``TapeFunction``.

Replay at a new point must equal recording again there; branches re-record (or raise);
parameters change without re-recording; bad input fails clearly at the boundary.
"""

import math
import threading
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from programs import (
    ScalarProgram,
    assert_close,
    central_difference,
    points,
    programs,
    property_settings,
    well_conditioned,
)

import jitad
from jitad import Value

PROPERTY = property_settings(80)


def eager(prog, x):
    """Record prog at x from scratch in Python: (outputs, gradient of a scalar output)."""
    with jitad.Tape():
        xs = np.array([Value(float(t)) for t in x], dtype=object)
        out = prog(xs)
        if isinstance(out, Value):
            return out._data, jitad.gradients(out, xs)
        return np.array([v._data for v in out]), None


def lineno_of(f, text):
    """``file:line`` of the first line of f's source containing ``text``."""
    import inspect

    lines, first = inspect.getsourcelines(f)
    for k, line in enumerate(lines):
        if text in line:
            return f"{inspect.getsourcefile(f)}:{first + k}"
    raise AssertionError(f"{text!r} not in the source of {f.__name__}")


# --- replay == re-record, on random branch-free programs ----------------------------------


@PROPERTY
@given(st.data())
def test_replay_equals_rerecord(data):
    prog = data.draw(programs())
    x = data.draw(points(prog.n_inputs), label="x (recorded at)")
    y = data.draw(points(prog.n_inputs), label="y (replayed at)")
    assume(well_conditioned(prog, x, margin=0, bound=1e8) is not None)
    assume(well_conditioned(prog, y, margin=0, bound=1e8) is not None)
    F = jitad.trace(prog, x)
    G = jitad.trace(prog, y)
    # Branch-free: the same Wengert list whatever the point, and no guards.
    assert F.tape.names == G.tape.names
    np.testing.assert_array_equal(F.tape.a, G.tape.a)
    np.testing.assert_array_equal(F.tape.b, G.tape.b)
    np.testing.assert_array_equal(F.tape.const, G.tape.const)
    assert F.tape.guards.size == 0

    value, grad = eager(prog, y)
    recorded = G.tape.value[G.tape.outputs[0]]
    assert_close(F(y), recorded, rtol=1e-12, what="replayed value vs recorded value")
    assert_close(F(y), value, rtol=1e-12, what="replayed value vs eager value")
    assert_close(F.grad(y), grad, rtol=1e-12, what="replayed gradient vs eager gradient")
    v, g = F.value_and_grad(y)
    assert_close(v, value, rtol=1e-12)
    assert_close(g, grad, rtol=1e-12)
    # ... and replaying the tape at the point it was recorded at gives the recording back.
    assert_close(F(x), F.tape.value[F.tape.outputs[0]], rtol=1e-12)
    assert F.retraces == 0


@PROPERTY
@given(st.data())
def test_values_match_float_reference(data):
    prog = data.draw(programs())
    x = data.draw(points(prog.n_inputs))
    y = data.draw(points(prog.n_inputs))
    expected = well_conditioned(prog, y, margin=1e-9, bound=1e8)
    assume(expected is not None)
    F = jitad.trace(prog, x)
    assert_close(F(y), expected, rtol=1e-10, what="replay vs an independent float evaluation")


@PROPERTY
@given(st.data())
def test_gradient_matches_central_differences(data):
    prog = data.draw(programs())
    x = data.draw(points(prog.n_inputs))
    y = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, y) is not None)
    F = jitad.trace(prog, x)
    fd = central_difference(lambda p: prog.reference(p)[0], y)
    assert_close(F.grad(y), fd, rtol=1e-6, what="gradient vs central differences")


def _more_outputs(n):
    return st.integers(n + 1, n + 4)


def _fewer_outputs(n):
    return st.integers(1, n)


@PROPERTY
@given(st.data())
@pytest.mark.parametrize("outputs", [_more_outputs, _fewer_outputs], ids=["m>n forward", "m<=n reverse"])
def test_jacobian_matches_central_differences(outputs, data):
    prog = data.draw(programs(n_inputs=st.integers(1, 4), n_outputs=outputs))
    x = data.draw(points(prog.n_inputs))
    y = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, y) is not None)
    F = jitad.trace(prog, x)
    m = len(prog.outputs)
    expected_values, _, _ = prog.reference(y)
    assert_close(F(y), expected_values, rtol=1e-10)
    jac = F.jacobian(y)
    assert jac.shape == (m, prog.n_inputs)
    # A smaller step than the default: with 1e-4 the stencil's truncation error reached
    # 6e-6 relative on tanh(x + erf(sin(tanh(x)^4))) at x = 3 (checked against h -> 0).
    fd = central_difference(lambda p: prog.reference(p)[0], y, h=2.5e-5)
    assert_close(jac, fd, rtol=1e-6, what="jacobian vs central differences")
    # Each row is the gradient of one output, as a one-output program computes it.
    for j, k in enumerate(prog.outputs):
        single = jitad.trace(ScalarProgram(prog.n_inputs, prog.nodes, [k]), x)
        assert_close(jac[j], single.jacobian(y)[0], rtol=1e-12, what=f"row {j}")


def test_jacobian_both_paths_agree_on_a_known_function():
    def f(x):
        return [x[0] * x[1], jitad.sin(x[0]), x[1] ** 3, x[0] + 2 * x[1]]

    def jac(x):
        return np.array([[x[1], x[0]], [math.cos(x[0]), 0], [0, 3 * x[1] ** 2], [1, 2]])

    x = np.array([0.3, -1.2])
    F = jitad.trace(f, x)  # n = 2 < m = 4: tangent sweeps
    np.testing.assert_allclose(F.jacobian(x), jac(x), rtol=1e-15)

    def g(x):  # m = 2 <= n = 4: reverse sweeps
        return [x[0] * x[1] + x[2], jitad.exp(x[3]) * x[0]]

    x = np.array([0.5, -1.0, 2.0, 0.25])
    G = jitad.trace(g, x)
    y = x + 1.0
    expected = np.array([[y[1], y[0], 1, 0], [math.exp(y[3]), 0, 0, y[0] * math.exp(y[3])]])
    np.testing.assert_allclose(G.jacobian(y), expected, rtol=1e-15)


def test_tape_is_inspectable():
    def f(x, w):
        return x[0] * w[0] + jitad.sin(x[1]) * w[1]

    F = jitad.trace(f, np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    tape = F.tape
    assert len(tape) == len(tape.op) == len(tape.names)
    np.testing.assert_array_equal(tape.inputs, [0, 1])
    assert [tape.names[k] for k in tape.inputs] == ["leaf", "leaf"]
    assert [tape.names[k] for k in tape.params] == ["param", "param"]
    assert tape.value[tape.params].tolist() == [3.0, 4.0]
    assert tape.outputs.size == 1 and tape.value[tape.outputs[0]] == 3.0 + math.sin(2.0) * 4.0
    assert "mul" in tape.names and "sin" in tape.names and "add" in tape.names
    assert tape.guards.size == 0
    assert "2 inputs" in repr(tape) and "2 parameters" in repr(tape)


# --- branches: guards, re-recording, the cache of one tape per branch signature -----------


class Counted:
    """Wraps f and counts how many times it was called (= recorded)."""

    def __init__(self, f):
        self.f = f
        self.calls = 0
        self.__name__ = f.__name__

    def __call__(self, *args):
        self.calls += 1
        return self.f(*args)


def piecewise(x):
    if x[0] > 0:
        return x[0] ** 2 * x[1]
    return jitad.sin(x[0]) * x[1]


def piecewise_grad(x):
    if x[0] > 0:
        return np.array([2 * x[0] * x[1], x[0] ** 2])
    return np.array([math.cos(x[0]) * x[1], math.sin(x[0])])


def test_piecewise_regrades_on_both_sides():
    f = Counted(piecewise)
    F = jitad.trace(f, np.array([1.0, 2.0]))
    assert f.calls == 1 and F.retraces == 0
    for x0, retraces in [(0.5, 0), (-0.5, 1), (-2.0, 1), (3.0, 1), (-1.0, 1), (0.0, 1), (1e-300, 1)]:
        x = np.array([x0, 1.5])
        np.testing.assert_allclose(F.grad(x), piecewise_grad(x), rtol=1e-15)
        assert F(x) == pytest.approx(x0**2 * 1.5 if x0 > 0 else math.sin(x0) * 1.5, rel=1e-15)
        assert F.retraces == retraces, f"at x0={x0}"
    # Two branch signatures: recorded twice in all, flipping back and forth re-uses both.
    assert f.calls == 2
    assert F.tape.guards.size == 1
    assert "2 branch(es)" in repr(F)


def test_every_region_is_recorded_once():
    def f(x):
        if x[0] > 0:
            if x[1] >= x[0]:
                return x[0] * x[1]
            return x[0] - x[1]
        if x[1] < 1.0:
            return x[0] ** 3 + x[1]
        return jitad.exp(x[0]) * x[1]

    def grad(x):
        if x[0] > 0:
            return np.array([x[1], x[0]]) if x[1] >= x[0] else np.array([1.0, -1.0])
        return np.array([3 * x[0] ** 2, 1.0]) if x[1] < 1.0 else np.array([math.exp(x[0]) * x[1], math.exp(x[0])])

    g = Counted(f)
    F = jitad.trace(g, np.array([1.0, 2.0]))
    regions = [(1.0, 2.0), (2.0, 1.0), (-1.0, 0.0), (-1.0, 2.0)]
    for sweep in range(3):
        for point in regions + regions[::-1]:
            x = np.array(point) + 0.1 * sweep
            np.testing.assert_allclose(F.grad(x), grad(x), rtol=1e-15)
    assert g.calls == 4
    assert F.retraces == 3
    assert "4 branch(es)" in repr(F)


def test_data_dependent_trip_count():
    def f(x):
        s = x[1]
        while s < x[0]:
            s = s * 1.5 + 0.5
        return s * x[0]

    def expected(x):
        s, ds = x[1], 1.0  # s and d s / d x1
        k = 0
        while s < x[0]:
            s, ds, k = s * 1.5 + 0.5, ds * 1.5, k + 1
        return s * x[0], np.array([s, x[0] * ds]), k

    g = Counted(f)
    F = jitad.trace(g, np.array([0.0, 1.0]))  # zero trips
    trips = set()
    for x0 in [0.0, 2.0, 5.0, 1.5, 12.0, 2.0, 0.0, 5.0, 12.0]:
        x = np.array([x0, 1.0])
        value, grad, k = expected(x)
        trips.add(k)
        v, g_ = F.value_and_grad(x)
        assert v == pytest.approx(value, rel=1e-15)
        np.testing.assert_allclose(g_, grad, rtol=1e-15)
        assert F.tape.guards.size == k + 1  # k taken, one not taken
    assert g.calls == len(trips) == F.retraces + 1


def test_many_branches_beyond_the_cache_still_right():
    def f(x):
        s = 0.0
        while s < x[0]:
            s = s + 1.0
        return s * x[1] + x[0]

    F = jitad.trace(f, np.array([0.5, 1.0]))
    for k in list(range(40)) + list(range(40))[::-3]:
        x = np.array([k - 0.5, 2.0])
        np.testing.assert_array_equal(F.grad(x), [1.0, max(k, 0)])
        assert F(x) == max(k, 0) * 2.0 + k - 0.5


@pytest.mark.parametrize(
    "compare",
    [
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
        lambda a, b: a == b,
        lambda a, b: a != b,
    ],
    ids=["<", "<=", ">", ">=", "==", "!="],
)
def test_every_comparison_is_guarded(compare):
    def f(x):
        if compare(x[0], x[1]):
            return x[0] * 2.0
        return x[1] * 3.0

    for start in ([1.0, 2.0], [2.0, 1.0], [1.0, 1.0]):
        F = jitad.trace(f, np.array(start))
        assert F.tape.guards.size == 1
        for point in ([1.0, 2.0], [2.0, 1.0], [1.0, 1.0], [-3.0, -3.0]):
            expected = [2.0, 0.0] if compare(*point) else [0.0, 3.0]
            np.testing.assert_array_equal(F.grad(np.array(point)), expected)


def test_comparison_with_a_constant_on_the_left():
    def f(x):
        return x[0] * 2 if 0.5 < x[0] else -x[0]

    F = jitad.trace(f, np.array([0.0]))
    assert F.grad(np.array([1.0]))[0] == 2.0
    assert F.grad(np.array([0.0]))[0] == -1.0
    assert F.retraces == 1


def test_retrace_raise_names_the_comparison_and_line():
    def f(x):
        y = x[0] * x[1]
        if y > 1.0:  # the guarded comparison
            return y
        return -y

    g = Counted(f)
    F = jitad.trace(g, np.array([2.0, 2.0]), retrace="raise")
    assert F(np.array([3.0, 1.0])) == 3.0  # same branch: fine
    with pytest.raises(jitad.BranchChanged) as info:
        F(np.array([0.1, 0.1]))
    message = str(info.value)
    assert lineno_of(f, "the guarded comparison") in message
    assert "lt" in message  # y > 1.0 is recorded as 1.0 < y
    with pytest.raises(jitad.BranchChanged):
        F.grad(np.array([0.1, 0.1]))
    with pytest.raises(jitad.BranchChanged):
        F.hvp(np.array([0.1, 0.1]), np.ones(2))
    assert g.calls == 1 and F.retraces == 0
    # Still usable on the recorded branch after raising.
    np.testing.assert_array_equal(F.grad(np.array([2.0, 3.0])), [3.0, 2.0])


def test_retrace_argument_is_checked():
    with pytest.raises(ValueError, match="retrace"):
        jitad.trace(piecewise, np.array([1.0, 1.0]), retrace="never")


def test_python_bool_in_where_is_a_guard():
    def f(x):
        return jitad.where(x[0] > 0, x[0] * x[1], x[1])

    F = jitad.trace(f, np.array([1.0, 2.0]))
    np.testing.assert_array_equal(F.grad(np.array([-1.0, 2.0])), [0.0, 1.0])
    assert F.retraces == 1


BRANCH_FREE = {
    "where": (
        lambda x: jitad.where(jitad.greater(x[0], 0.0), x[0] ** 2 * x[1], jitad.sin(x[0]) * x[1]),
        lambda x: piecewise_grad(x),
    ),
    "where_less": (
        lambda x: jitad.where(jitad.less(x[0], x[1]), x[0] * x[1], x[1] - x[0]),
        lambda x: np.array([x[1], x[0]]) if x[0] < x[1] else np.array([-1.0, 1.0]),
    ),
    "maximum": (
        lambda x: jitad.maximum(x[0], x[1] * 0.5) * 3.0,
        lambda x: np.array([3.0, 0.0]) if x[0] > 0.5 * x[1] else np.array([0.0, 1.5]),
    ),
    "minimum": (
        lambda x: jitad.minimum(x[0] * x[1], 1.0),
        lambda x: np.array([x[1], x[0]]) if x[0] * x[1] < 1.0 else np.zeros(2),
    ),
    "abs": (
        lambda x: abs(x[0]) * x[1] + jitad.abs(x[1]),
        lambda x: np.array([np.sign(x[0]) * x[1], abs(x[0]) + np.sign(x[1])]),
    ),
    "relu": (
        lambda x: jitad.relu(x[0] - 1.0) * x[1] + x[1].relu(),
        lambda x: np.array([float(x[0] > 1.0) * x[1], max(x[0] - 1.0, 0.0) + float(x[1] > 0)]),
    ),
}


@pytest.mark.parametrize("name", BRANCH_FREE)
def test_branch_free_ops_never_retrace(name):
    f, grad = BRANCH_FREE[name]
    F = jitad.trace(f, np.array([1.5, 2.5]), retrace="raise")
    assert F.tape.guards.size == 0
    rng = np.random.default_rng(0)
    for x in rng.uniform(-3, 3, size=(40, 2)):
        np.testing.assert_allclose(F.grad(x), grad(x), rtol=1e-14, err_msg=str(x))
    assert F.retraces == 0


def test_where_with_a_recorded_condition_is_exact_on_both_sides():
    def f(x):
        cond = jitad.greater(x[0], x[1])
        return jitad.where(cond, x[0] ** 2, x[1] ** 3)

    F = jitad.trace(f, np.array([2.0, 1.0]))
    assert F(np.array([2.0, 1.0])) == 4.0
    assert F(np.array([1.0, 2.0])) == 8.0
    np.testing.assert_array_equal(F.grad(np.array([1.0, 2.0])), [0.0, 12.0])
    np.testing.assert_array_equal(F.grad(np.array([3.0, 2.0])), [6.0, 0.0])
    assert F.retraces == 0


# --- parameters ---------------------------------------------------------------------------


def test_scalar_and_array_parameters_change_without_rerecording():
    def f(x, scale, w):
        return scale * jitad.exp(x[0] * w[0]) + (x[1] - w[1]) ** 2

    g = Counted(f)
    F = jitad.trace(g, np.array([0.5, 1.0]), 2.0, np.array([1.0, 3.0]))
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = rng.normal(size=2)
        scale = float(rng.normal())
        w = rng.normal(size=2)
        value = scale * math.exp(x[0] * w[0]) + (x[1] - w[1]) ** 2
        grad = np.array([scale * w[0] * math.exp(x[0] * w[0]), 2 * (x[1] - w[1])])
        v, gr = F.value_and_grad(x, scale, w)
        assert v == pytest.approx(value, rel=1e-14)
        np.testing.assert_allclose(gr, grad, rtol=1e-14)
        assert F(x, scale, w) == v
        assert gr.shape == (2,)  # no derivative with respect to parameters
    assert g.calls == 1 and F.retraces == 0


def test_integer_list_and_matrix_parameters():
    def f(x, A, k):
        return sum(A[i, j] * x[i] * x[j] for i in range(2) for j in range(2)) * k

    F = jitad.trace(f, np.zeros(2), np.eye(2), 1)
    A = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = np.array([0.5, -1.5])
    np.testing.assert_allclose(F.grad(x, A, 3), 3 * (A + A.T) @ x, rtol=1e-15)
    np.testing.assert_allclose(F.grad(x, A.tolist(), 3.0), 3 * (A + A.T) @ x, rtol=1e-15)
    np.testing.assert_allclose(F.hessian(x, A, 2), 2 * (A + A.T), rtol=1e-15)
    assert F.retraces == 0


def test_parameter_as_exponent_and_in_a_guard():
    def f(x, p):
        if x[0] > p:
            return x[0] ** p
        return p * x[0]

    g = Counted(f)
    F = jitad.trace(g, np.array([2.0]), 1.5)
    assert F.grad(np.array([2.0]), 1.8)[0] == pytest.approx(1.8 * 2.0**0.8, rel=1e-15)
    assert F(np.array([3.0]), 1.8) == pytest.approx(3.0**1.8, rel=1e-15)
    assert g.calls == 1
    # The comparison involves the parameter: changing p alone flips the branch.
    assert F.grad(np.array([2.0]), 5.0)[0] == 5.0
    assert g.calls == 2 and F.retraces == 1
    assert F.grad(np.array([2.0]), 0.5)[0] == pytest.approx(0.5 * 2.0**-0.5, rel=1e-15)
    assert g.calls == 2


def test_parameter_guard_raises_in_raise_mode():
    def f(x, p):
        return x[0] if p > 0 else -x[0]

    F = jitad.trace(f, np.array([1.0]), 1.0, retrace="raise")
    assert F.grad(np.array([1.0]), 2.0)[0] == 1.0
    with pytest.raises(jitad.BranchChanged):
        F.grad(np.array([1.0]), -2.0)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((), TypeError, "1 extra argument"),
        ((np.ones(2), 1.0), TypeError, "1 extra argument"),
        ((np.ones(3),), ValueError, "shape"),
        ((np.ones((2, 1)),), ValueError, "shape"),
        ((1.0,), ValueError, "shape"),
        ((np.array(["a", "b"]),), TypeError, "real"),
        ((np.array([1 + 2j, 1.0]),), TypeError, "real"),
        ((object(),), TypeError, None),
    ],
    ids=["none", "too many", "too long", "2-D", "scalar for array", "strings", "complex", "object"],
)
def test_bad_parameters_fail_clearly(args, error, match):
    def f(x, w):
        return x[0] * w[0] + w[1]

    F = jitad.trace(f, np.array([1.0]), np.array([2.0, 3.0]))
    with pytest.raises(error, match=match):
        F.grad(np.array([1.0]), *args)
    with pytest.raises(error, match=match):
        F(np.array([1.0]), *args)
    np.testing.assert_array_equal(F.grad(np.array([1.0]), np.array([4.0, 5.0])), [4.0])
    assert F(np.array([2.0]), np.array([4.0, 5.0])) == 13.0


def test_value_as_parameter_is_refused():
    def f(x, p):
        return x[0] * p

    F = jitad.trace(f, np.array([1.0]), 2.0)
    with jitad.Tape(), pytest.raises(TypeError, match="Value"):
        F(np.array([1.0]), Value(3.0))
    with pytest.raises(TypeError, match="Value"), jitad.Tape():
        jitad.trace(f, np.array([1.0]), Value(3.0))


# --- conversions that cannot be guarded warn ---------------------------------------------


@pytest.mark.parametrize(
    "convert",
    [lambda v: int(v), lambda v: bool(v), lambda v: v.data, lambda v: v.item(), lambda v: 1.0 if v else 0.0],
    ids=["int", "bool", ".data", "item", "if v"],
)
def test_unguarded_conversions_warn_while_tracing(convert):
    def f(x):
        convert(x[0])
        return x[0] * 2.0

    with pytest.warns(jitad.UnguardedConversionWarning):
        F = jitad.trace(f, np.array([1.0]))
    # Replay does not call f, so it has nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert F(np.array([3.0])) == 6.0


def test_unguarded_warning_points_at_the_conversion():
    def f(x):
        return x[0] * x[0].item()  # the conversion

    with pytest.warns(jitad.UnguardedConversionWarning) as record:
        jitad.trace(f, np.array([1.0]))
    assert record[0].filename == __file__
    assert f"{record[0].filename}:{record[0].lineno}" == lineno_of(f, "the conversion")


def test_no_warning_outside_tracing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with jitad.Tape():
            v = Value(2.0)
            assert v.item() == 2.0 and int(v) == 2 and bool(v) and v.data == 2.0


@pytest.mark.parametrize(
    "convert",
    [lambda v: float(v), lambda v: math.sin(v), lambda v: np.array([v], dtype=float), lambda v: "%f" % v],
    ids=["float", "math.sin", "float array", "%f"],
)
def test_conversions_that_drop_the_derivative_raise(convert):
    # The same __float__ serves all of these, so none can be told apart from a lost gradient.
    with jitad.Tape():
        with pytest.raises(TypeError, match=r"v\.item\(\)"):
            convert(Value(2.0))

    def f(x):
        return x[0] * convert(x[0])

    with pytest.raises(TypeError, match="drop its derivative"):
        jitad.trace(f, np.array([1.0]))


# --- bad input at the boundary ------------------------------------------------------------


def f3(x):
    return x[0] * x[1] + jitad.sin(x[2])


BAD_X = {
    "too short": (np.ones(2), ValueError),
    "too long": (np.ones(4), ValueError),
    "2-D": (np.ones((3, 1)), ValueError),
    "2-D row": (np.ones((1, 3)), ValueError),
    "scalar": (1.0, ValueError),
    "None": (None, (TypeError, ValueError)),
    "letters": (np.array(["a", "b", "c"]), TypeError),
    "numeric strings": (np.array(["1.0", "2.0", "3.0"]), TypeError),
    "string list": (["1", "2", "3"], TypeError),
    "complex list": ([1 + 1j, 2.0, 3.0], TypeError),
    "complex array": (np.array([1 + 1j, 2.0, 3.0]), TypeError),
    "ragged": ([1.0, [2.0, 3.0], 4.0], (TypeError, ValueError)),
    "Values": (None, TypeError),  # filled in by the test: an array of Values
}


@pytest.mark.parametrize("name", BAD_X)
def test_bad_x_fails_clearly_and_F_keeps_working(name):
    bad, error = BAD_X[name]
    F = jitad.trace(f3, np.array([1.0, 2.0, 3.0]))
    with jitad.Tape(), warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. NumPy's ComplexWarning is not an answer
        if name == "Values":
            bad = np.array([Value(1.0), Value(2.0), Value(3.0)], dtype=object)
        for call in (F, F.grad, F.value_and_grad, F.jacobian, F.hessian, lambda x: F.hvp(x, np.ones(3))):
            with pytest.raises(error):
                call(bad)
    x = np.array([0.5, 2.0, 1.0])
    np.testing.assert_allclose(F.grad(x), [2.0, 0.5, math.cos(1.0)], rtol=1e-15)
    assert F.retraces == 0


@pytest.mark.parametrize("name", [k for k in BAD_X if k not in ("too short", "too long", "Values")])
def test_bad_x0_fails_clearly_at_trace(name):
    bad, error = BAD_X[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error):
            jitad.trace(f3, bad)


def test_bad_v_for_hvp():
    F = jitad.trace(f3, np.ones(3))
    with pytest.raises(ValueError, match="v"):
        F.hvp(np.ones(3), np.ones(2))
    with pytest.raises(TypeError):
        F.hvp(np.ones(3), ["a", "b", "c"])


@pytest.mark.parametrize(
    "result, error",
    [
        (lambda x: 1.0, TypeError),
        (lambda x: None, TypeError),
        (lambda x: [x[0], 2.0], TypeError),
        (lambda x: [x[0], None], TypeError),
        (lambda x: "x", TypeError),
        (lambda x: {x[0]}, TypeError),
        (lambda x: [], ValueError),
    ],
    ids=["float", "None", "list with a float", "list with None", "string", "set", "empty"],
)
def test_bad_outputs_fail_clearly(result, error):
    with pytest.raises(error, match="output|return"):
        jitad.trace(result, np.ones(2))


def test_output_captured_from_another_tape():
    with jitad.Tape():
        outside = Value(1.0)

    with pytest.raises(jitad.StaleValueError):
        jitad.trace(lambda x: outside, np.ones(2))
    with pytest.raises(jitad.StaleValueError):
        jitad.trace(lambda x: x[0] * outside, np.ones(2))


@pytest.mark.parametrize(
    "f",
    [
        lambda x: Value(3.0),
        lambda x: Value(1.5) * 2.0,
        lambda x, p=None: x[0] * 0.0 + 3.0,
        lambda x: x[0] - x[0] + 3.0,
    ],
    ids=["constant Value", "constant expression", "times zero", "cancels"],
)
def test_outputs_independent_of_inputs_have_zero_gradient(f):
    F = jitad.trace(f, np.array([1.0, 2.0]))
    for x in ([1.0, 2.0], [-5.0, 7.0]):
        v, g = F.value_and_grad(np.array(x))
        assert v == 3.0
        np.testing.assert_array_equal(g, [0.0, 0.0])
        np.testing.assert_array_equal(F.hessian(np.array(x)), np.zeros((2, 2)))


def test_output_depending_only_on_a_parameter():
    F = jitad.trace(lambda x, p: p * 2.0, np.array([1.0, 2.0]), 4.0)
    assert F.value_and_grad(np.zeros(2), 5.0)[0] == 10.0
    np.testing.assert_array_equal(F.grad(np.zeros(2), 5.0), [0.0, 0.0])


def test_output_is_an_input():
    F = jitad.trace(lambda x: x[1], np.array([1.0, 2.0]))
    assert F(np.array([3.0, 4.0])) == 4.0
    np.testing.assert_array_equal(F.grad(np.array([3.0, 4.0])), [0.0, 1.0])
    G = jitad.trace(lambda x: x, np.array([1.0, 2.0]))  # vector output: the inputs themselves
    np.testing.assert_array_equal(G(np.array([3.0, 4.0])), [3.0, 4.0])
    np.testing.assert_array_equal(G.jacobian(np.array([3.0, 4.0])), np.eye(2))
    H = jitad.trace(lambda x: x[0], np.ones(3))  # an output recorded before other inputs
    np.testing.assert_array_equal(H.grad(np.array([3.0, 4.0, 5.0])), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(H.hessian(np.array([3.0, 4.0, 5.0])), np.zeros((3, 3)))
    np.testing.assert_array_equal(H.hvp(np.array([3.0, 4.0, 5.0]), np.ones(3)), np.zeros(3))


def test_scalar_only_methods_refuse_vector_outputs():
    F = jitad.trace(lambda x: [x[0] * x[1], x[0] * 1.5], np.ones(2))
    for call in (F.grad, F.value_and_grad, F.hessian, lambda x: F.hvp(x, x)):
        with pytest.raises(ValueError, match="jacobian|one Value"):
            call(np.ones(2))
    np.testing.assert_array_equal(F.jacobian(np.array([2.0, 3.0])), [[3.0, 2.0], [1.5, 0.0]])


def test_nan_and_inf_inputs_follow_ieee():
    def f(x):
        return x[0] * x[1] + jitad.exp(x[2]) + jitad.sqrt(x[1])

    F = jitad.trace(f, np.array([1.0, 2.0, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v, g = F.value_and_grad(np.array([np.nan, 1.0, 0.0]))
        assert math.isnan(v)
        assert math.isnan(g[1])  # d/dx1 = x0 + 0.5/sqrt(x1)
        assert g[0] == 1.0 and g[2] == 1.0
        v, g = F.value_and_grad(np.array([1.0, np.inf, -np.inf]))
        assert v == np.inf
        np.testing.assert_array_equal(g, [np.inf, 1.0, 0.0])
        v, g = F.value_and_grad(np.array([1.0, -1.0, 800.0]))  # sqrt(-1), exp overflow
        assert math.isnan(v)
        assert g[2] == np.inf
    np.testing.assert_allclose(F.grad(np.array([1.0, 4.0, 0.0])), [4.0, 1.25, 1.0])


def test_nan_in_a_branchy_function_does_not_raise():
    F = jitad.trace(piecewise, np.array([1.0, 2.0]))
    value = F(np.array([np.nan, 2.0]))  # nan > 0 is False: the other branch, recorded at nan
    assert math.isnan(value)
    assert math.isnan(F.grad(np.array([np.nan, 2.0]))[0])
    np.testing.assert_allclose(F.grad(np.array([1.0, 2.0])), [4.0, 1.0])


def test_f_raising_propagates_and_F_keeps_working():
    def f(x):
        if x[0] > 0:
            return x[0] * 2.0
        raise RuntimeError("negative not supported")

    F = jitad.trace(f, np.array([1.0]))
    with pytest.raises(RuntimeError, match="negative"):
        F(np.array([-1.0]))
    assert F.grad(np.array([3.0]))[0] == 2.0
    # Recording is scoped: the failed recording did not leave its tape active.
    with jitad.Tape():
        pass
    v = Value(1.0) * 2.0
    assert v.data == 2.0


def test_contiguity_and_input_types():
    F = jitad.trace(f3, [1, 2, 3])  # integers and lists are fine
    x = np.array([0.5, 9.0, 2.0, 9.0, 1.0])[::2]  # a strided view
    np.testing.assert_allclose(F.grad(x), [2.0, 0.5, math.cos(1.0)], rtol=1e-15)
    np.testing.assert_allclose(F.grad(x.astype(np.float32)), [2.0, 0.5, math.cos(1.0)], rtol=1e-7)
    np.testing.assert_allclose(F.grad((0.5, 2, 1.0)), [2.0, 0.5, math.cos(1.0)], rtol=1e-15)
    assert F.grad(x) is not F.grad(x)  # a fresh array each call


def test_results_are_not_aliased_to_scratch():
    F = jitad.trace(lambda x: [x[0] * 2.0, x[1] * 3.0], np.ones(2))
    first = F(np.array([1.0, 1.0]))
    jac = F.jacobian(np.array([1.0, 1.0]))
    F(np.array([5.0, 5.0]))
    F.jacobian(np.array([2.0, 2.0]))
    np.testing.assert_array_equal(first, [2.0, 3.0])
    np.testing.assert_array_equal(jac, [[2.0, 0.0], [0.0, 3.0]])
    G = jitad.trace(lambda x: x[0] * x[1], np.ones(2))
    g = G.grad(np.array([1.0, 2.0]))
    G.grad(np.array([5.0, 6.0]))
    np.testing.assert_array_equal(g, [2.0, 1.0])
    h = G.hvp(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    G.hvp(np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    np.testing.assert_array_equal(h, [0.0, 1.0])


# --- threads ------------------------------------------------------------------------------


def branchy(x):
    # Three regions chosen by x[0]; each thread works in its own region.
    if x[0] > 1.0:
        y = x[0] * x[1] ** 2
    elif x[0] > -1.0:
        y = jitad.sin(x[0]) * x[1]
    else:
        y = jitad.exp(x[0]) + x[1] ** 3
    s = x[1]
    while s < x[0]:
        s = s + 1.0
    return y + s * x[0]


def test_threads_share_one_tape_function():
    points_per_thread = [
        np.array([2.5, 0.5]),
        np.array([0.3, -0.7]),
        np.array([-2.0, 1.5]),
        np.array([4.0, -1.0]),
    ]
    v = np.array([0.3, -1.1])
    expected = []
    for x in points_per_thread:  # each point traced on its own, one thread
        G = jitad.trace(branchy, x)
        expected.append((G.value_and_grad(x), G.hvp(x, v)))

    F = jitad.trace(branchy, np.array([0.0, 0.0]))
    barrier = threading.Barrier(4)
    errors = []

    def work(k):
        x = points_per_thread[k]
        (value, grad), hv = expected[k]
        try:
            barrier.wait()
            for _ in range(200):
                got = F.value_and_grad(x)
                assert got[0] == value
                np.testing.assert_array_equal(got[1], grad)
                np.testing.assert_array_equal(F.grad(x), grad)
                np.testing.assert_array_equal(F.hvp(x, v), hv)
        except Exception as e:  # noqa: BLE001 - reported in the main thread
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert F.retraces >= 3  # at least one re-recording per region not traced at first
    # Single-threaded use afterwards is unaffected.
    for x, ((value, grad), hv) in zip(points_per_thread, expected):
        assert F(x) == value
        np.testing.assert_array_equal(F.grad(x), grad)


def test_jacobian_with_an_input_as_an_early_output():
    # The reverse path must not read adjoints left over from the previous output's sweep.
    F = jitad.trace(lambda x: [x[1] * 2.0, x[0]], np.zeros(3))
    np.testing.assert_array_equal(F.jacobian(np.zeros(3)), [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    G = jitad.trace(lambda x: [x[1], x[0]], np.zeros(2))
    np.testing.assert_array_equal(G.jacobian(np.zeros(2)), [[0.0, 1.0], [1.0, 0.0]])


def test_guard_made_by_builtin_max_names_the_calling_line():
    def f(x):
        return max(x[0], x[1]) * 2.0  # builtin max compares Values

    F = jitad.trace(f, np.array([1.0, 2.0]), retrace="raise")
    assert F.tape.guards.size == 1
    with pytest.raises(jitad.BranchChanged) as info:
        F(np.array([3.0, 2.0]))
    assert lineno_of(f, "builtin max compares") in str(info.value)
    G = jitad.trace(f, np.array([1.0, 2.0]))
    np.testing.assert_array_equal(G.grad(np.array([3.0, 2.0])), [2.0, 0.0])
    np.testing.assert_array_equal(G.grad(np.array([1.0, 2.0])), [0.0, 2.0])
    assert G.retraces == 1


def test_tuple_and_array_outputs():
    F = jitad.trace(lambda x: (x[0] * x[1], x[1]), np.ones(2))
    np.testing.assert_array_equal(F(np.array([2.0, 3.0])), [6.0, 3.0])
    G = jitad.trace(lambda x: np.outer(x, x), np.ones(2))  # a 2-D object array: flattened
    np.testing.assert_array_equal(G(np.array([2.0, 3.0])), [4.0, 6.0, 6.0, 9.0])
    np.testing.assert_array_equal(G.jacobian(np.array([2.0, 3.0])), [[4.0, 0.0], [3.0, 2.0], [3.0, 2.0], [0.0, 6.0]])


def test_long_chain_replays_without_recursion():
    n = 50_000

    def f(x):
        y = x[0]
        for _ in range(n):
            y = y * 0.99999 + 1e-5 * x[1]
        return y * y

    F = jitad.trace(f, np.array([1.0, 1.0]))
    assert len(F.tape) > n
    a = 0.99999**n
    b = 1e-5 * (1 - a) / (1 - 0.99999)
    x = np.array([2.0, -1.0])
    y = a * x[0] + b * x[1]
    np.testing.assert_allclose(F(x), y * y, rtol=1e-9)
    np.testing.assert_allclose(F.grad(x), [2 * y * a, 2 * y * b], rtol=1e-9)
    np.testing.assert_allclose(F.hvp(x, np.array([1.0, 0.0])), [2 * a * a, 2 * a * b], rtol=1e-9)
