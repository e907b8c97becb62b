"""Robustness: hostile and bad inputs at every public entry point, NaN/inf propagation,
NaN debugging, threads, big tapes and tape limits, and kernels run by the interpreter.

Every refusal must be a clear exception at the boundary that leaves the library usable:
the tape keeps its entries, and the same objects give the right numbers afterwards.
"""

import json
import math
import os
import random
import subprocess
import sys
import textwrap
import threading
import warnings
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numba
import numpy as np
import pytest
from programs import SPECS, SQUASH, Node, ScalarProgram

import jitad
import jitad.tape
import jitad.value
from jitad import StaleValueError, Value

INTERPRETED = bool(numba.config.DISABLE_JIT)
# Compiled kernels follow IEEE at domain errors (error_model="numpy"); run by the interpreter
# (NUMBA_DISABLE_JIT=1) the same formulas call Python's math, which raises instead.
ieee_kernels = pytest.mark.skipif(INTERPRETED, reason="kernels run by the interpreter raise at math domain errors")
HERE = Path(__file__).resolve()


def here(offset=0):
    """``file:line`` of the caller, ``offset`` lines below the call."""
    frame = sys._getframe(1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno + offset}"


def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def rosen_grad(x):
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return g


def scaled(x, p):
    return p * jitad.sin(x[0]) * x[1] + x[1] ** 2


X0 = np.array([0.3, -0.4, 1.2])


@pytest.fixture
def F():
    return jitad.trace(rosen, X0)


def assert_still_works(F):
    """F gives the right numbers after a refusal."""
    x = np.array([1.1, 0.9, -0.2])
    assert F(x) == pytest.approx(rosen(list(x)), rel=1e-14)
    np.testing.assert_allclose(F.grad(x), rosen_grad(x), rtol=1e-13)


def assert_tape_usable(tape, n_before):
    """No entry was appended by a refused call, and recording goes on."""
    assert len(tape) == n_before
    x = Value(1.5)
    y = x * x + 1.0
    assert jitad.gradients(y, [x])[0] == 3.0


# --- hostile inputs: recording --------------------------------------------------------------

NOT_REAL = [
    "1.0",
    b"1",
    None,
    1j,
    np.complex128(1 + 2j),
    [1.0],
    (1.0,),
    {1.0: 2.0},
    np.array([1.0, 2.0]),
    object(),
    Decimal("1.5"),
    Fraction(3, 2),
]  # bools are numbers to Value, as to torch.tensor: Value(True) is 1.0 (test_eager)


@pytest.mark.parametrize("bad", NOT_REAL, ids=repr)
def test_value_refuses_what_is_not_a_real_number(tape, bad):
    n = len(tape)
    with pytest.raises(TypeError, match="real|complex|Value"):
        Value(bad)
    assert_tape_usable(tape, n)


@pytest.mark.parametrize("good", [2, np.int64(2), np.float32(2.0), np.float16(2.0), 2.0, np.uint8(2)], ids=repr)
def test_value_accepts_every_real_number_type(tape, good):
    assert Value(good).data == 2.0
    assert type(Value(good).data) is float


@pytest.mark.parametrize("bad", ["a", None, 1j, np.complex128(1j), object(), Decimal(1), {1: 2}], ids=repr)
@pytest.mark.parametrize(
    "op",
    ["add", "sub", "mul", "truediv", "pow", "radd", "rsub", "rmul", "rtruediv", "rpow", "lt", "le", "gt", "ge"],
)
def test_operators_refuse_non_numbers(tape, op, bad):
    import operator

    x = Value(2.0)
    n = len(tape)
    reflected = op.startswith("r")
    fn = getattr(operator, op[1:] if reflected else op)
    with pytest.raises(TypeError):
        if reflected:
            fn(bad, x)
        else:
            fn(x, bad)
    assert_tape_usable(tape, n)


@pytest.mark.parametrize("bad", ["a", None, object()], ids=repr)
def test_equality_with_a_non_number_is_false_and_records_nothing(tape, bad):
    x = Value(2.0)
    n = len(tape)
    assert (x == bad) is False
    assert (x != bad) is True
    assert_tape_usable(tape, n)


def test_huge_python_int_is_refused_clearly(tape):
    x = Value(1.0)
    n = len(tape)
    with pytest.raises(OverflowError):
        x + 10**400
    with pytest.raises(OverflowError):
        Value(10**400)
    assert_tape_usable(tape, n)


UNARY = [
    "abs",
    "acos",
    "asin",
    "atan",
    "cos",
    "cosh",
    "exp",
    "expm1",
    "log",
    "log1p",
    "relu",
    "sigmoid",
    "sin",
    "sinh",
    "softplus",
    "sqrt",
    "tan",
    "tanh",
]
BINARY = [
    "atan2",
    "hypot",
    "maximum",
    "minimum",
    "less",
    "less_equal",
    "greater",
    "greater_equal",
    "equal",
    "not_equal",
]
FUNCTIONS = UNARY + BINARY


@pytest.mark.parametrize("bad", ["a", None, 1j, object(), [1.0, "a"]], ids=repr)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_module_functions_refuse_non_numbers(tape, name, bad):
    fn = getattr(jitad, name)
    x = Value(0.5)
    n = len(tape)
    calls = [(bad,)] if name in UNARY else [(x, bad), (bad, x), (bad, 1.0)]
    for args in calls:
        with pytest.raises((TypeError, ValueError)):
            fn(*args)
    assert_tape_usable(tape, n)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_module_functions_refuse_a_wrong_number_of_arguments(tape, name):
    fn = getattr(jitad, name)
    x = Value(0.5)
    n = len(tape)
    with pytest.raises(TypeError):
        fn()
    with pytest.raises(TypeError):
        fn(x, x, x)
    assert_tape_usable(tape, n)


def test_where_refuses_non_numbers(tape):
    x = Value(0.5)
    cond = jitad.less(x, 1.0)
    n = len(tape)
    with pytest.raises(TypeError):
        jitad.where(cond, "a", x)
    with pytest.raises(TypeError):
        jitad.where(cond, x, None)
    assert len(tape) <= n + 1  # at most the half of where() that came before the bad operand
    assert_tape_usable(tape, len(tape))


def test_backward_and_gradients_refuse_bad_arguments(tape):
    x = Value(2.0)
    y = x * x
    for bad in (2.0, None, "y", [y], np.array([y])):
        with pytest.raises(TypeError):
            jitad.gradients(bad, [x])
    for bad in ("x", None, 3.0, [x, "a"], [[x], [None]]):
        with pytest.raises(TypeError):
            jitad.gradients(y, bad)
    with pytest.raises((TypeError, ValueError)):
        y.backward("a")
    with pytest.raises(TypeError):
        y.backward(1j)
    with pytest.raises(TypeError):
        y.backward(np.array([1.0, 2.0]))
    assert x.grad == 0.0  # nothing was accumulated by the refused calls
    y.backward()
    assert x.grad == 4.0
    np.testing.assert_array_equal(jitad.gradients(y, [[x, y], [y, x]]), [[4.0, 1.0], [1.0, 4.0]])


def test_grad_setter_refuses_non_numbers(tape):
    x = Value(2.0)
    (x * 3).backward()
    for bad in ("a", 1j, [1.0]):  # None resets it, as in PyTorch
        with pytest.raises((TypeError, ValueError)):
            x.grad = bad
    assert x.grad == 3.0


def test_strings_are_not_silently_converted_to_seeds_or_gradients(tape):
    # Value("1.5"), inputs and parameters refuse strings; the seed of backward and the
    # .grad setter must too, instead of float("1.5").
    x = Value(2.0)
    y = x * 3
    with pytest.raises(TypeError):
        y.backward("2.0")
    with pytest.raises(TypeError):
        x.grad = "1.5"
    assert x.grad == 0.0


def test_to_dot_refuses_bad_arguments(tape):
    x = Value(2.0)
    y = x * x
    with pytest.raises(TypeError):
        jitad.to_dot(2.0)
    with pytest.raises(ValueError):
        jitad.to_dot(y, max_nodes=0)
    with pytest.raises((TypeError, ValueError)):
        jitad.to_dot(y, max_nodes="many")
    with pytest.raises(TypeError):
        jitad.to_dot(y, labels={"x": 2.0})
    assert "digraph" in jitad.to_dot(y, labels={"x": x})


def test_to_dot_refuses_labels_that_are_not_a_mapping(tape):
    y = Value(2.0) * 2
    with pytest.raises(TypeError, match="labels"):
        jitad.to_dot(y, labels=3)


# --- hostile inputs: tracing and replay ------------------------------------------------------

BAD_X = {
    "string": ("ab", TypeError),
    "strings": (["a", "b", "c"], TypeError),
    "complex": (np.array([1j, 2.0, 3.0]), TypeError),
    "complex list": ([1 + 1j, 2.0, 3.0], TypeError),
    "None": (None, TypeError),
    "objects": (np.array([1.0, None, 2.0], dtype=object), TypeError),
    "Values": (np.array([Value(1.0), Value(2.0), Value(3.0)], dtype=object), TypeError),
    "datetimes": (np.array(["2020-01-01"] * 3, dtype="datetime64[D]"), TypeError),
    "too short": ([1.0, 2.0], ValueError),
    "too long": ([1.0, 2.0, 3.0, 4.0], ValueError),
    "2-D": (np.ones((3, 3)), ValueError),
    "row": (np.ones((1, 3)), ValueError),
    "column": (np.ones((3, 1)), ValueError),
    "scalar": (1.0, ValueError),
    "empty": ([], ValueError),
    "ragged": ([[1.0], [2.0, 3.0]], (TypeError, ValueError)),
}
METHODS = ["__call__", "grad", "value_and_grad", "jacobian", "hessian"]


@pytest.mark.parametrize("bad", list(BAD_X), ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_bad_x_is_refused_by_every_method(F, method, bad):
    x, error = BAD_X[bad]
    with pytest.raises(error):
        getattr(F, method)(x)
    assert_still_works(F)


@pytest.mark.parametrize("bad", list(BAD_X), ids=str)
def test_bad_x_or_v_is_refused_by_hvp(F, bad):
    x, error = BAD_X[bad]
    with pytest.raises(error):
        F.hvp(x, np.ones(3))
    with pytest.raises(error):
        F.hvp(X0, x)
    assert_still_works(F)


@pytest.mark.parametrize(
    "good", [np.array([1, 2, 3]), np.array([1, 2, 3], np.float32), [1, 2, 3], (1.0, 2.0, 3.0), np.arange(6.0)[::2]]
)
def test_real_arrays_of_any_dtype_and_layout_are_accepted(F, good):
    x = np.asarray(good, dtype=float)
    np.testing.assert_allclose(F.grad(good), rosen_grad(x), rtol=1e-13)
    np.testing.assert_allclose(F.hvp(good, good), F.hessian(x) @ x, rtol=1e-12)


BAD_BATCH = {
    "1-D": (np.ones(3), ValueError),
    "3-D": (np.ones((2, 3, 1)), ValueError),
    "wrong n": (np.ones((4, 2)), ValueError),
    "complex": (np.ones((2, 3)) * 1j, (TypeError, ValueError)),
    "objects": (np.ones((2, 3), dtype=object), (TypeError, ValueError)),
    "strings": ([["a", "b", "c"]], (TypeError, ValueError)),
    "ragged": ([[1.0, 2.0, 3.0], [1.0]], (TypeError, ValueError)),
    "None": (None, (TypeError, ValueError)),
    "scalar": (2.0, ValueError),
}


@pytest.mark.parametrize("bad", list(BAD_BATCH), ids=str)
@pytest.mark.parametrize("method", ["batch", "grad_batch", "value_and_grad_batch"])
def test_bad_X_is_refused_by_batches(F, method, bad):
    X, error = BAD_BATCH[bad]
    with pytest.raises(error):
        getattr(F, method)(X)
    assert_still_works(F)


@pytest.mark.parametrize("block", [0, -1, "x", float("nan"), None if False else -5])
def test_bad_block_is_refused(F, block):
    with pytest.raises((TypeError, ValueError, OverflowError)):
        F.grad_batch(np.ones((3, 3)), block=block)
    assert_still_works(F)


def test_batches_of_no_points_and_odd_layouts(F):
    assert F.grad_batch(np.empty((0, 3))).shape == (0, 3)
    assert F.batch(np.empty((0, 3))).shape == (0,)
    X = np.asfortranarray(np.random.default_rng(1).normal(size=(7, 3)))
    expected = np.array([rosen_grad(x) for x in X])
    np.testing.assert_allclose(F.grad_batch(X), expected, rtol=1e-13)
    np.testing.assert_allclose(F.grad_batch(X.astype(np.float32)), [rosen_grad(x) for x in X.astype(np.float32)])
    np.testing.assert_allclose(F.grad_batch(np.ones((9, 6))[:, ::2]), np.zeros((9, 3)), atol=0)


@pytest.mark.parametrize(
    "args, error",
    [
        ((), TypeError),  # missing
        ((1.0, 2.0), TypeError),  # one too many
        (("a",), TypeError),
        ((1j,), TypeError),
        ((None,), TypeError),
        (([1.0, 2.0],), ValueError),  # traced with a scalar
        ((Value(1.0),), TypeError),
        ((np.array([Value(1.0)], dtype=object),), TypeError),
    ],
    ids=repr,
)
def test_bad_parameters_are_refused_everywhere(args, error):
    G = jitad.trace(scaled, [0.5, 2.0], 3.0)
    x = np.array([0.5, 2.0])
    calls = [
        lambda: G(x, *args),
        lambda: G.grad(x, *args),
        lambda: G.value_and_grad(x, *args),
        lambda: G.hvp(x, x, *args),
        lambda: G.hessian(x, *args),
        lambda: G.jacobian(x, *args),
        lambda: G.grad_batch(x[None, :], *args),
        lambda: G.batch(x[None, :], *args),
    ]
    for call in calls:
        with pytest.raises(error):
            call()
    expected = np.array([3.0 * math.cos(0.5) * 2.0, 3.0 * math.sin(0.5) + 4.0])
    np.testing.assert_allclose(G.grad(x, 3.0), expected, rtol=1e-14)
    np.testing.assert_allclose(G.grad_batch(np.array([x, x]), [3.0, 3.0]), [expected, expected], rtol=1e-14)


def test_per_point_parameters_of_the_wrong_length_are_refused():
    G = jitad.trace(scaled, [0.5, 2.0], 3.0)
    with pytest.raises(ValueError, match="parameter 0"):
        G.grad_batch(np.ones((3, 2)), np.ones(4))
    np.testing.assert_array_equal(G.grad_batch(np.ones((3, 2)), np.ones(3)), G.grad_batch(np.ones((3, 2)), 1.0))


def _numbers_only(returns):
    try:
        with jitad.Tape():
            out = returns(np.array([Value(1.0), Value(2.0)], dtype=object))
    except TypeError:
        return False
    flat = out if isinstance(out, list) else [out]
    return bool(flat) and all(isinstance(v, (Value, float)) or (isinstance(v, list) and v) for v in flat)


@pytest.mark.parametrize(
    "returns, error",
    [
        (lambda x: 1.0, TypeError),
        (lambda x: float(x[0]), TypeError),
        (lambda x: x[0].data * 2, TypeError),
        (lambda x: np.float64(1.0), TypeError),
        (lambda x: None, TypeError),
        (lambda x: "x", TypeError),
        (lambda x: 1j, TypeError),
        (lambda x: {"y": x[0]}, TypeError),
        (lambda x: (v for v in x), TypeError),
        (lambda x: [], ValueError),
        (lambda x: np.array([]), ValueError),
        (lambda x: [x[0], 2.0], TypeError),
        (lambda x: [[x[0]]], TypeError),
    ],
)
def test_a_traced_function_returning_no_values_is_refused(returns, error):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jitad.UnguardedConversionWarning)
        with pytest.raises(error, match="Value|output"):
            jitad.trace(returns, [1.0, 2.0])
        if _numbers_only(returns):
            return  # the transforms take a constant function as JAX does: zero derivatives
        for transform in (jitad.grad, jitad.value_and_grad, jitad.jacobian, jitad.hessian):
            with pytest.raises(error):
                transform(returns)([1.0, 2.0])
    # Recording in this thread goes on as before.
    with jitad.Tape() as tape:
        assert_tape_usable(tape, 0)


def test_trace_refuses_bad_arguments():
    with pytest.raises(TypeError):
        jitad.trace(3, [1.0])
    with pytest.raises(ValueError, match="retrace"):
        jitad.trace(rosen, X0, retrace="sometimes")
    for x0, error in [("ab", TypeError), (None, TypeError), (1j, TypeError), (np.ones((2, 2)), ValueError)]:
        with pytest.raises(error):
            jitad.trace(rosen, x0)
    with pytest.raises(ZeroDivisionError):
        jitad.trace(lambda x: x[0] / 0 if False else 1 / 0, [1.0])
    assert_still_works(jitad.trace(rosen, X0))


def test_transforms_refuse_bad_input_and_keep_working():
    g = jitad.grad(rosen)
    h = jitad.hvp(rosen)
    for bad, error in [("ab", TypeError), (None, TypeError), ([1j, 1.0], TypeError), (np.ones((2, 2)), ValueError)]:
        with pytest.raises(error):
            g(bad)
        with pytest.raises(error):
            h(bad, np.ones(2))
    x = np.array([0.5, 1.5])
    with pytest.raises(ValueError):
        h(x, np.ones(3))
    with pytest.raises(TypeError):
        h(x, "v")
    np.testing.assert_allclose(g(x), rosen_grad(x), rtol=1e-13)
    np.testing.assert_allclose(h(x, [1.0, 0.0]), jitad.hessian(rosen)(x)[:, 0], rtol=1e-13)


def test_load_refuses_what_is_not_a_tape(tmp_path):
    with pytest.raises(FileNotFoundError):
        jitad.load(tmp_path / "missing.npz")
    for content in (b"", b"garbage", b"PK\x03\x04 truncated zip", b"\x93NUMPY not really"):
        path = tmp_path / "bad.npz"
        path.write_bytes(content)
        with pytest.raises(jitad.InvalidTape):
            jitad.load(path)
    for bad in (None, 3.5, ["a"]):
        with pytest.raises(TypeError):
            jitad.load(bad)
    F = jitad.trace(rosen, X0)
    F.save(tmp_path / "good.npz")
    assert_still_works(jitad.load(tmp_path / "good.npz"))


@pytest.mark.parametrize("action", ["load", "save"])
def test_load_and_save_do_not_close_a_file_descriptor_given_as_path(tmp_path, action):
    # open(int) adopts a file descriptor and closes it: load(3) closed the caller's fd 3 (a
    # socket, a log file; stdin for 0). Refusing ints (as NumPy's load and save do) or
    # leaving the descriptor open are both fine.
    fd = os.open(tmp_path / "fd.npz", os.O_RDWR | os.O_CREAT)
    try:
        try:
            if action == "load":
                jitad.load(fd)
            else:
                jitad.trace(rosen, X0).save(fd)
        except (TypeError, jitad.InvalidTape):
            pass
        os.fstat(fd)  # still open
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


# --- what is not an error: constant outputs, NaN and inf ------------------------------------


def constant_output(x):
    return Value(2.0) * 3.0 + jitad.sin(Value(0.5))


def output_of_a_parameter(x, p):
    return p * p + 1.0


def output_killed_by_zero(x):
    return x[0] * 0.0 + (x[1] - x[1])


@pytest.mark.parametrize(
    "f, args", [(constant_output, ()), (output_of_a_parameter, (2.0,)), (output_killed_by_zero, ())]
)
def test_outputs_not_depending_on_inputs_have_zero_derivatives_everywhere(f, args):
    x = np.array([0.3, -1.2])
    F = jitad.trace(f, x, *args)
    zeros = np.zeros(2)
    np.testing.assert_array_equal(F.grad(x, *args), zeros)
    np.testing.assert_array_equal(F.value_and_grad(x, *args)[1], zeros)
    np.testing.assert_array_equal(F.jacobian(x, *args), zeros)
    np.testing.assert_array_equal(F.hvp(x, np.ones(2), *args), zeros)
    np.testing.assert_array_equal(F.hessian(x, *args), np.zeros((2, 2)))
    np.testing.assert_array_equal(F.grad_batch(np.ones((4, 2)), *args), np.zeros((4, 2)))
    np.testing.assert_array_equal(jitad.grad(f)(x, *args), zeros)
    np.testing.assert_array_equal(jitad.hvp(f)(x, np.ones(2), *args), zeros)
    with jitad.Tape():
        xs = [Value(t) for t in x]
        y = f(xs, *(Value(a) for a in args))
        y.backward()
        assert [v.grad for v in xs] == [0.0, 0.0]
        np.testing.assert_array_equal(jitad.gradients(y, xs), zeros)


def test_a_gradient_of_an_unrelated_value_is_zero(tape):
    x, z = Value(1.0), Value(2.0)
    y = x * 3
    np.testing.assert_array_equal(jitad.gradients(y, [z, x]), [0.0, 3.0])
    later = y * 2  # recorded after y: cannot influence it
    np.testing.assert_array_equal(jitad.gradients(y, [later]), [0.0])


def every_op(x):
    """One entry of (almost) every op, on two inputs, for NaN/inf propagation."""
    a, b = x[0], x[1]
    terms = [
        a + b, a - b, a * b, a / b, -a, a**2.5, a**b, jitad.exp(a), jitad.log(a), jitad.log1p(a),
        jitad.expm1(a), jitad.sqrt(a), jitad.softplus(a), jitad.sigmoid(a), jitad.sin(a), jitad.cos(a),
        jitad.tan(a), jitad.asin(a), jitad.acos(a), jitad.atan(a), jitad.atan2(a, b), jitad.sinh(a),
        jitad.cosh(a), jitad.tanh(a), jitad.hypot(a, b), jitad.relu(a), abs(a), jitad.maximum(a, b),
        jitad.minimum(a, b), jitad.where(jitad.less(a, b), a, b), jitad.where(jitad.equal(a, b), b, a),
        jitad.where(jitad.not_equal(a, b), a, b), jitad.where(jitad.less_equal(a, b), a, b),
    ]  # fmt: skip
    return terms


@ieee_kernels
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_inputs_propagate_without_exceptions(bad):
    x0 = np.array([0.5, 0.25])
    F = jitad.trace(lambda x: every_op(x), x0)
    S = jitad.trace(lambda x: sum(every_op(x)), x0)
    for x in (np.array([bad, 0.25]), np.array([0.5, bad]), np.array([bad, bad])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not even a RuntimeWarning
            values = F(x)
            J = F.jacobian(x)
            S.value_and_grad(x)
            S.hvp(x, np.ones(2))
            S.hessian(x)
            G = S.grad_batch(np.array([x0, x, x0]))
        # Eager recording gives the same values as the replay.
        with jitad.Tape():
            eager = [v.data for v in every_op([Value(t) for t in x])]
        np.testing.assert_array_equal(values, eager)
        assert not np.isfinite(values).all()
        assert J.shape == (len(values), 2)
        # A NaN point in a batch does not leak into the other points.
        np.testing.assert_array_equal(G[0], S.grad(x0))
        np.testing.assert_array_equal(G[2], S.grad(x0))


def test_nan_in_v_or_seed_propagates(tape):
    F = jitad.trace(rosen, X0)
    hv = F.hvp(X0, np.array([math.nan, 0.0, 0.0]))
    assert np.isnan(hv[:2]).all()
    x = Value(2.0)
    (x * x).backward(math.nan)
    assert math.isnan(x.grad)


@ieee_kernels
def test_infinite_intermediates_do_not_poison_finite_gradients(tape):
    # 0 * inf never enters a sum: a where() not taken and a sqrt at 0 with zero weight.
    x = Value(0.0)
    y = jitad.where(jitad.greater(x, 1.0), jitad.sqrt(x), x * 2.0)
    assert jitad.gradients(y, [x])[0] == 2.0
    F = jitad.trace(lambda v: jitad.where(jitad.greater(v[0], 1.0), jitad.sqrt(v[0]), v[0] * 2.0), [0.0])
    np.testing.assert_array_equal(F.grad([0.0]), [2.0])
    np.testing.assert_array_equal(F.hessian([0.0]), [[0.0]])
    np.testing.assert_array_equal(F.grad_batch([[0.0], [4.0]]), [[2.0], [0.25]])


# --- Values from elsewhere: other tapes, other threads, reset tapes ---------------------------


def stale_uses(a, other):
    """Every way of using Value ``a`` that reads its tape; ``other`` is a usable Value."""
    return {
        "a + 1": lambda: a + 1,
        "1 + a": lambda: 1 + a,
        "a + 0 (identity)": lambda: a + 0,
        "a * 1 (identity)": lambda: a * 1,
        "a ** 1 (identity)": lambda: a**1,
        "a - other": lambda: a - other,
        "other * a": lambda: other * a,
        "a ** other": lambda: a**other,
        "2 ** a": lambda: 2**a,
        "-a": lambda: -a,
        "abs(a)": lambda: abs(a),
        "a.exp()": lambda: a.exp(),
        "jitad.sin(a)": lambda: jitad.sin(a),
        "np.sin(a)": lambda: np.sin(a),
        "np.add(a, other)": lambda: np.add(a, other),
        "jitad.atan2(other, a)": lambda: jitad.atan2(other, a),
        "jitad.maximum(1.0, a)": lambda: jitad.maximum(1.0, a),
        "a < other": lambda: a < other,
        "a == 1": lambda: a == 1,
        "jitad.less(a, 1)": lambda: jitad.less(a, 1.0),
        "jitad.where(a, other, 1)": lambda: jitad.where(a, other, 1.0),
        "jitad.where(other, a, 1)": lambda: jitad.where(other, a, 1.0),
        "sum([other, a])": lambda: sum([other, a]),
        "np.dot": lambda: np.dot(np.array([a, other]), np.array([1.0, 2.0])),
    }


def test_values_of_a_reset_tape_are_refused_everywhere():
    with jitad.Tape() as tape:
        a = Value(2.0)
        b = a * 3
        tape.reset()
        other = Value(1.0)
        for what, use in stale_uses(a, other).items():
            n = len(tape)
            with pytest.raises(StaleValueError, match="reset"):
                use()
            assert len(tape) == n, what
        for use in (b.backward, lambda: jitad.gradients(b, [a]), lambda: a.grad, lambda: jitad.to_dot(b)):
            with pytest.raises(StaleValueError, match="reset"):
                use()
        with pytest.raises(StaleValueError):
            a.grad = 0.0
        with pytest.raises(StaleValueError):
            jitad.gradients(other, [a])
        with pytest.raises(StaleValueError):
            jitad.trace(lambda x: x[0] * a, [1.0])
        assert repr(a) == "Value(data=2.0, grad=<tape reset>)"
        assert a.data == 2.0  # its value is still known, only its entries are gone
        assert_tape_usable(tape, len(tape))


def test_values_of_another_tape_are_refused_everywhere():
    with jitad.Tape():
        a = Value(2.0)
        b = a * a
    with jitad.Tape() as tape:
        other = Value(1.0)
        for what, use in stale_uses(a, other).items():
            n = len(tape)
            with pytest.raises(StaleValueError, match="another tape|active"):
                use()
            assert len(tape) == n, what
        with pytest.raises(StaleValueError):
            jitad.gradients(other, [a])
        # Reading the other tape is fine: its Values are alive.
        assert jitad.gradients(b, [a])[0] == 4.0
        assert_tape_usable(tape, len(tape))


def test_values_of_another_thread_are_refused_everywhere():
    box = {}

    def record():
        with jitad.Tape():
            box["a"] = Value(3.0)

    worker = threading.Thread(target=record)
    worker.start()
    worker.join()
    with jitad.Tape() as tape:
        other = Value(1.0)
        for what, use in stale_uses(box["a"], other).items():
            n = len(tape)
            with pytest.raises(StaleValueError, match="thread"):
                use()
            assert len(tape) == n, what
        assert_tape_usable(tape, len(tape))


def test_reading_another_threads_tape_does_not_break_its_recording(monkeypatch):
    # Thread A records while thread B computes gradients of one of A's Values: A's recording
    # must not fail because of B. (B's reverse sweep runs in a kernel that releases the GIL
    # while a NumPy view of A's tape buffer is alive, and a bytearray with a live view
    # cannot grow: A got "RuntimeError: cannot record while a view of the tape's entries is
    # alive".) B may be refused, clearly. Made deterministic: A records exactly while B's
    # sweep runs.
    box = {}
    recorded = threading.Event()
    record_now = threading.Event()
    sweep = jitad.kernels.backward

    def owner():
        try:
            with jitad.Tape():
                x = Value(3.0)
                box["y"] = x * x
                recorded.set()
                record_now.wait(10)
                box["z"] = box["y"] * 2.0 + 1.0
        except Exception as e:  # noqa: BLE001 - reported below
            box["owner error"] = e
        finally:
            recorded.set()

    def sweep_while_the_owner_records(*args):
        record_now.set()
        worker.join(10)  # the owner records now, while this sweep's caller holds its view
        return sweep(*args)

    worker = threading.Thread(target=owner)
    worker.start()
    recorded.wait(10)
    monkeypatch.setattr(jitad.kernels, "backward", sweep_while_the_owner_records)
    try:
        assert jitad.gradients(box["y"], [box["y"]])[0] == 1.0
    except StaleValueError:
        pass  # refusing to read another thread's tape is fine
    finally:
        record_now.set()
        worker.join()
    assert "owner error" not in box, f"the owner's recording failed: {box['owner error']!r}"
    assert box["z"].data == 19.0


def test_a_reset_from_another_thread_leaves_the_owner_recording_usable():
    # The owner thread keeps recording after another thread resets its tape. Either the reset
    # is refused in the other thread, or the owner's next Values land on the emptied tape;
    # never a just-recorded Value that reports "tape that was reset".
    box = {}
    entered = threading.Event()
    reset_done = threading.Event()

    def owner():
        try:
            with jitad.Tape() as tape:
                box["tape"] = tape
                Value(2.0)
                entered.set()
                reset_done.wait()
                x = Value(3.0)
                y = x * 2.0
                y.backward()
                box["result"] = (x.grad, len(tape))
        except Exception as e:  # noqa: BLE001 - reported below
            box["error"] = e

    worker = threading.Thread(target=owner)
    worker.start()
    entered.wait()
    try:
        box["tape"].reset()
        refused = False
    except RuntimeError:
        refused = True
    reset_done.set()
    worker.join()
    assert "error" not in box, f"the owner's recording broke after a reset from another thread: {box['error']!r}"
    assert box["result"] == (2.0, 3 if refused else 2)


# --- NaN debugging --------------------------------------------------------------------------


def test_debug_nans_is_off_by_default():
    code = "import jitad; from jitad import Value; print(jitad.debug.enabled(), jitad.log(Value(0.0)).data)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env())
    assert out.stdout.split() == ["False", "-inf"]


# op name -> a function of a fresh Value list making that op give NaN/inf from finite operands.
NONFINITE_FROM_FINITE = {
    "add": lambda: Value(1e308) + 1e308,
    "sub": lambda: Value(-1e308) - Value(1e308),
    "mul": lambda: Value(1e200) * 1e200,
    "div": lambda: Value(1.0) / 0.0,
    "powc": lambda: Value(0.0) ** -1.0,
    "pow": lambda: Value(-2.0) ** Value(0.5),
    "exp": lambda: jitad.exp(Value(1000.0)),
    "log": lambda: jitad.log(Value(0.0)),
    "log1p": lambda: jitad.log1p(Value(-2.0)),
    "expm1": lambda: jitad.expm1(Value(800.0)),
    "sqrt": lambda: jitad.sqrt(Value(-1.0)),
    "asin": lambda: jitad.asin(Value(2.0)),
    "acos": lambda: jitad.acos(Value(-1.5)),
    "sinh": lambda: jitad.sinh(Value(1000.0)),
    "cosh": lambda: jitad.cosh(Value(-1000.0)),
    "hypot": lambda: jitad.hypot(Value(1.5e308), Value(1.5e308)),
}


@pytest.mark.parametrize("name", list(NONFINITE_FROM_FINITE))
def test_debug_nans_names_the_op_entry_operands_and_line(name):
    make = NONFINITE_FROM_FINITE[name]
    with jitad.Tape() as tape, jitad.debug_nans():
        with pytest.raises(FloatingPointError) as info:
            make()
        message = str(info.value)
        entry = len(tape) - 1
        assert tape.names[entry] == name
        assert message.startswith(f"{name} at tape entry {entry} gave "), message
        a = tape.a[entry]
        operand = tape.value[a] if a >= 0 else tape.const[entry]
        assert f"from finite operands ({float(operand)}, " in message, message
        # The line that recorded it: the lambda in NONFINITE_FROM_FINITE, in this file.
        assert message.endswith(f"recorded at {make.__code__.co_filename}:{make.__code__.co_firstlineno}"), message
        # The tape goes on: the entry is recorded, and later ops are checked too.
        assert_tape_usable(tape, len(tape))


def test_debug_nans_points_at_the_line_of_the_test(tape):
    x = Value(0.0)
    with jitad.debug_nans():
        site = here(2)
        with pytest.raises(FloatingPointError, match=f"log at tape entry 1 .*recorded at {site}$"):
            jitad.log(x)  # the line in the message
        site = here(2)
        with pytest.raises(FloatingPointError, match=f"div at tape entry 2 gave inf .*\\(1.0, 0.0\\).*at {site}$"):
            1.0 / x
        y = Value(3.0) * 2.0  # finite: fine
        assert y.data == 6.0


def test_debug_nans_does_not_raise_for_nan_or_inf_operands(tape):
    with jitad.debug_nans():
        for bad in (math.nan, math.inf, -math.inf):
            x = Value(bad)
            for v in every_op([x, Value(0.5)]) + every_op([Value(0.5), x]):
                assert isinstance(v, Value)
            jitad.log(x) + x * 0.0  # nan or inf in, anything out


def test_debug_nans_as_a_switch_and_as_a_context_manager_restore():
    assert not jitad.debug.enabled()
    jitad.debug_nans(True)
    try:
        assert jitad.debug.enabled()
        with jitad.debug_nans(False):
            assert not jitad.debug.enabled()
            with jitad.Tape():
                assert jitad.log(Value(0.0)).data == -math.inf
        assert jitad.debug.enabled()
        with jitad.Tape(), pytest.raises(FloatingPointError):
            jitad.log(Value(0.0))
    finally:
        jitad.debug_nans(False)
    assert not jitad.debug.enabled()
    with pytest.raises(KeyError), jitad.debug_nans():
        raise KeyError("the body fails")
    assert not jitad.debug.enabled()
    with jitad.Tape():
        assert jitad.log(Value(0.0)).data == -math.inf


def test_debug_nans_applies_to_the_active_tape_when_turned_on():
    with jitad.Tape():
        x = Value(0.0)
        jitad.log(x)  # off: no error
        with jitad.debug_nans(), pytest.raises(FloatingPointError):
            jitad.log(x)
        assert jitad.log(x).data == -math.inf


def test_a_tape_made_while_debugging_stops_checking_when_it_is_turned_off():
    with jitad.debug_nans():
        tape = jitad.Tape()
        with jitad.Tape() as inner:
            pass
    assert not jitad.debug.enabled()
    for t in (tape, inner):
        with t:
            assert jitad.log(Value(0.0)).data == -math.inf  # off means off


@ieee_kernels
def test_debug_nans_raises_at_the_first_replayed_entry_making_nan():
    def f(x):
        a = x[0] * x[1]
        b = jitad.log(a)  # nan/inf first here
        c = jitad.sqrt(b)
        return c + x[1]

    site = f"{HERE}:{f.__code__.co_firstlineno + 2}"
    with jitad.debug_nans():
        F = jitad.trace(f, [2.0, 3.0])
        expected = F.grad([2.0, 3.0])
        for x, made in (([0.0, 3.0], "-inf"), ([-1.0, 3.0], "nan")):
            for call in (F, F.grad, F.value_and_grad, F.jacobian, F.hessian, lambda z: F.hvp(z, [1.0, 0.0])):
                with pytest.raises(FloatingPointError) as info:
                    call(np.array(x))
                message = str(info.value)
                assert message.startswith(f"log at tape entry 3 gave {made} from finite operands (")
                assert "during replay" in message and message.endswith(f"recorded at {site}"), message
            for call in (jitad.grad(f), jitad.value_and_grad(f), jitad.hessian(f)):
                with pytest.raises(FloatingPointError, match="log at tape entry 3"):
                    call(np.array(x))
        np.testing.assert_array_equal(F.grad([2.0, 3.0]), expected)  # F keeps working
        # NaN in, NaN out: nothing to report.
        assert math.isnan(F([math.nan, 3.0]))
    assert np.isnan(F.grad([-1.0, 3.0])).any()  # off: no error


@ieee_kernels
def test_debug_nans_in_batched_replays():
    def f(x):
        return jitad.log(x[0]) + x[1]

    with jitad.debug_nans():
        F = jitad.trace(f, [2.0, 3.0])
        X = np.array([[2.0, 1.0], [0.0, 1.0]])
        for call in (F.batch, F.grad_batch, F.value_and_grad_batch):
            with pytest.raises(FloatingPointError, match="log at tape entry 2"):
                call(X)


@ieee_kernels
def test_debug_nans_replay_of_a_tape_traced_without_it_says_so():
    F = jitad.trace(lambda x: jitad.sqrt(x[0]), [1.0])
    with jitad.debug_nans(), pytest.raises(FloatingPointError, match="sqrt at tape entry 1 .*unknown line"):
        F.grad([-1.0])
    assert math.isnan(F([-1.0]))


# --- threads --------------------------------------------------------------------------------


def random_program(rng, n_inputs=3, size=25):
    """A random branch-free program from the op table specs of ``programs.py``."""
    names = sorted(SPECS)
    nodes = []
    for k in range(size):
        name = rng.choice(names)
        spec = SPECS[name]
        args = [rng.randrange(n_inputs + k) for _ in range(spec.arity)]
        if spec.arity == 2 and spec.const_ok[1] and rng.random() < 0.3:
            args[1] = rng.uniform(-2, 2)
        nodes.append(Node(name, tuple(args), rng.choice(sorted(SQUASH)), 0.5))
    return ScalarProgram(n_inputs, nodes)


def eager_gradient(prog, x):
    """(value, gradient, tape length) as one array: compare with assert_array_equal (NaN == NaN)."""
    with jitad.Tape() as tape:
        xs = [Value(float(t)) for t in x]
        y = prog(xs)
        y.backward()
        return np.array([y.data, *(v.grad for v in xs), len(tape)])


def run_threads(n, work):
    """Run work(k) in n threads released at once; re-raise the first failure here."""
    barrier = threading.Barrier(n)
    errors = []

    def target(k):
        try:
            barrier.wait()
            work(k)
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append((k, e))

    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"thread {errors[0][0]} failed") from errors[0][1]


def test_threads_record_at_once_each_on_its_own_tape():
    rng = random.Random(7)
    jobs = [(random_program(rng), np.array([rng.uniform(-2, 2) for _ in range(3)])) for _ in range(6)]
    serial = [eager_gradient(prog, x) for prog, x in jobs]
    results = {}

    def work(k):
        prog, x = jobs[k]
        for _ in range(20):
            got = eager_gradient(prog, x)
            np.testing.assert_array_equal(got, serial[k])
            # On the default tape of this thread too.
            y = prog([Value(float(t)) for t in x])
            np.testing.assert_array_equal(y.data, serial[k][0])
        results[k] = got

    run_threads(len(jobs), work)
    assert len(results) == len(jobs)


def test_threads_trace_at_once():
    rng = random.Random(11)
    progs = [random_program(rng) for _ in range(4)]
    x = np.array([0.3, -0.6, 1.1])
    serial = [jitad.trace(p, x).value_and_grad(x) for p in progs]

    def work(k):
        for _ in range(10):
            value, grad = jitad.trace(progs[k], x).value_and_grad(x)
            assert value == serial[k][0]
            np.testing.assert_array_equal(grad, serial[k][1])

    run_threads(len(progs), work)


def test_threads_share_one_tape_function_for_every_method():
    rng = np.random.default_rng(3)
    n = 6
    F = jitad.trace(rosen, np.zeros(n))
    points = rng.normal(size=(8, n))
    v = rng.normal(size=n)
    X = rng.normal(size=(33, n))
    serial = [
        (F(x), F.value_and_grad(x), F.grad(x), F.hvp(x, v), F.hessian(x), F.jacobian(x), F.grad_batch(X + x))
        for x in points
    ]

    def work(k):
        for rep in range(25):
            j = (k + rep) % len(points)
            x = points[j]
            value, (v0, g0), g, hv, H, J, G = serial[j]
            assert F(x) == value
            got = F.value_and_grad(x)
            assert got[0] == v0
            np.testing.assert_array_equal(got[1], g0)
            np.testing.assert_array_equal(F.grad(x), g)
            np.testing.assert_array_equal(F.hvp(x, v), hv)
            np.testing.assert_array_equal(F.hessian(x), H)
            np.testing.assert_array_equal(F.jacobian(x), J)
            np.testing.assert_array_equal(F.grad_batch(X + x), G)
            values, grads = F.value_and_grad_batch(X + x)
            np.testing.assert_array_equal(grads, G)
            np.testing.assert_array_equal(values, F.batch(X + x))

    run_threads(4, work)
    assert F.retraces == 0


def test_threads_share_one_tape_function_across_branches():
    def f(x, p):
        if x[0] > p:
            y = x[0] * x[1] ** 2
        else:
            y = jitad.exp(x[1]) - x[0]
        return y * p

    points = [np.array([1.5, 0.5]), np.array([-1.0, 0.25]), np.array([3.0, -2.0]), np.array([-0.5, 1.0])]
    serial = [jitad.trace(f, x, 0.2).value_and_grad(x, 0.2) for x in points]
    F = jitad.trace(f, np.zeros(2), 0.2)
    g = jitad.value_and_grad(f)

    def work(k):
        x = points[k]
        for _ in range(50):
            for call in (F.value_and_grad, g):
                value, grad = call(x, 0.2)
                assert value == serial[k][0]
                np.testing.assert_array_equal(grad, serial[k][1])
        X = np.array(points)
        np.testing.assert_array_equal(F.grad_batch(X, 0.2), [s[1] for s in serial])

    run_threads(len(points), work)


def test_threads_share_transforms_with_parameters():
    h = jitad.hvp(scaled)
    g = jitad.grad(scaled)
    x = np.array([0.5, 2.0])
    v = np.array([1.0, -1.0])
    serial = [(g(x, float(p)), h(x, v, float(p))) for p in range(4)]

    def work(k):
        for _ in range(50):
            np.testing.assert_array_equal(g(x, float(k)), serial[k][0])
            np.testing.assert_array_equal(h(x, v, float(k)), serial[k][1])

    run_threads(4, work)


# --- big tapes and limits -------------------------------------------------------------------


def _rss():
    """Resident memory of this process in bytes: the current size where /proc tells it
    (Linux), else the peak from getrusage (then a growth is only seen past the old peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="10^7 entries are for compiled kernels")
def test_ten_million_entries_record_and_replay():
    N = 10**7
    c = 0.9999999
    memory = {}

    def chain(x):
        y = x[0]
        before = _rss()
        for _ in range(N // 2):
            y = y * c + 1e-7
        after = _rss()
        if before is not None:
            memory["per entry"] = (after - before) / N
        return y

    F = jitad.trace(chain, np.array([0.5]))
    assert len(F.tape) == N + 1
    if "per entry" in memory:
        assert memory["per entry"] < 100, f"{memory['per entry']:.1f} bytes per recorded entry"
    # y_N = c^(N/2) x + b (1 - c^(N/2)) / (1 - c): replay at another point, and its gradient.
    r = c ** (N // 2)
    for x in (0.25, -3.0):
        value, grad = F.value_and_grad(np.array([x]))
        assert value == pytest.approx(r * x + 1e-7 * (1 - r) / (1 - c), rel=1e-6)
        assert grad[0] == pytest.approx(r, rel=1e-6)
    assert F.hvp(np.array([1.0]), np.array([1.0]))[0] == 0.0


def _patch_max_entries(monkeypatch, limit):
    # The limit lives in jitad.tape; value.py may hold its own reference to it.
    monkeypatch.setattr(jitad.tape, "MAX_ENTRIES", limit)
    if hasattr(jitad.value, "MAX_ENTRIES"):
        monkeypatch.setattr(jitad.value, "MAX_ENTRIES", limit)


RECORDING_OPS = {
    "leaf": lambda x: Value(1.0),
    "add": lambda x: x + 1.0,
    "mul": lambda x: x * x,
    "rsub": lambda x: 1.0 - x,
    "pow": lambda x: x**x,
    "neg": lambda x: -x,
    "sin": lambda x: x.sin(),
    "np.exp": lambda x: np.exp(x),
    "jitad.atan2": lambda x: jitad.atan2(x, 2.0),
    "jitad.less": lambda x: jitad.less(x, 2.0),
    "where": lambda x: jitad.where(x, x, 2.0),
    "comparison": lambda x: x < 2.0,
}


def test_a_traced_tape_past_the_entry_limit_raises_overflow(monkeypatch):
    # Programs (traced tapes, saved files) hold int32 operand positions; eager tapes number
    # their entries with int64 and have no such limit.
    limit = 64
    monkeypatch.setattr(jitad.tape, "MAX_ENTRIES", limit)

    def f(x):
        for _ in range(limit):
            x = x * 1.0001
        return x[0]

    with pytest.raises(OverflowError, match=str(limit)):
        jitad.trace(f, np.array([0.5]))
    monkeypatch.undo()
    with jitad.Tape() as tape:
        assert_tape_usable(tape, 0)


def test_eager_sequence_numbers_go_past_int32(tape):
    # A long-running process records more than 2^31 entries over its life.
    rec = tape._rec
    x = Value(1.5)
    rec.roll()
    rec.n = 2**31 + 7
    rec._open()
    values = {name: op(x) for name, op in RECORDING_OPS.items() if name != "comparison"}
    assert all(v._i > 2**31 for v in values.values() if isinstance(v, Value))
    y = x * x + values["sin"]
    assert y._i > 2**31
    assert jitad.gradients(y, [x])[0] == pytest.approx(3.0 + math.cos(1.5), rel=1e-15)
    y.backward()
    assert x.grad == pytest.approx(3.0 + math.cos(1.5), rel=1e-15)


class _Exhausted(bytearray):
    """A tape buffer that cannot grow: appending raises MemoryError."""

    def __iadd__(self, other):
        raise MemoryError


@pytest.mark.parametrize("name", ["leaf", "add", "sin", "comparison"])
def test_out_of_memory_while_recording_names_the_tape_size(tape, name):
    x = Value(0.5)
    y = x * 2.0
    n = len(tape)
    chunk = tape._rec.chunk
    chunk.buf = _Exhausted(chunk.buf)
    with pytest.raises(MemoryError, match=f"entry {n}|{n} entries"):
        RECORDING_OPS[name](y)
    assert len(tape) == n
    chunk.buf = bytearray(chunk.buf)
    assert jitad.gradients(y, [x])[0] == 2.0
    assert_tape_usable(tape, n)


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit via /proc and RLIMIT_AS")
def test_out_of_memory_for_real_names_the_tape_size():
    # Limit this process's address space just above what it uses, record until it runs out.
    script = textwrap.dedent(
        """
        import json, resource
        import jitad
        from jitad import Value

        def vm_size():
            for line in open("/proc/self/status"):
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

        # Load the kernels first: Numba's first use imports SciPy's BLAS (OpenBLAS reserves
        # address space for its threads), which a tight limit would make hang.
        with jitad.Tape():
            w = Value(1.0)
            for _ in range(3 * jitad.tape.CHUNK):
                w = w * 1.0
            w.backward()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        result = {}
        with jitad.Tape() as tape:
            x = Value(0.5)
            y = x
            resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 64 * 2**20, hard))
            try:
                for _ in range(10**8):
                    y = y * 1.0000001
            except MemoryError as e:
                result["message"] = str(e)
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            result["entries"] = len(tape)
            z = y + 1.0  # the tape goes on after the error
            result["last"] = z.data
        json.dump(result, open(1, "w"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=_env(), timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert "message" in result, "never ran out of memory"
    n = result["entries"]
    assert n > 10**5
    assert f"entry {n}" in result["message"] and "GiB" in result["message"], result["message"]


# --- kernels run by the interpreter ----------------------------------------------------------


@pytest.mark.skipif(INTERPRETED, reason="already running without the JIT")
def test_suite_passes_with_kernels_run_by_the_interpreter():
    # NUMBA_DISABLE_JIT=1: kernel bodies run as Python, where an out-of-bounds index raises
    # IndexError instead of reading memory. This file minus the slow tests, and a few
    # differential examples.
    out = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
            str(HERE), str(HERE.parent / "test_differential.py"),
            "-k", "not slow and not interpreter and not out_of_memory_for_real",
        ],
        check=False, capture_output=True, text=True, timeout=600, cwd=HERE.parent.parent,
        env=_env(NUMBA_DISABLE_JIT="1", JITAD_EXAMPLES_SCALE="0.2"),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
