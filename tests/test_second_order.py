"""Second order: ``hvp`` (forward-over-reverse on the tape) and ``hessian``, against finite
differences of the exact gradient, for every op of the op table and random programs."""

import math

import numpy as np
import pytest
import scipy.optimize
from hypothesis import assume, given
from hypothesis import strategies as st
from programs import (
    NO_DERIVATIVE,
    SPECS,
    SQUASH,
    assert_close,
    central_difference,
    points,
    programs,
    property_settings,
    well_conditioned,
)

import jitad
from jitad import ops

PROPERTY = property_settings(60)


def fd_hessian(F, x, *args):
    """Central differences of the exact gradient: column j is d grad / d x_j."""
    return central_difference(lambda p: F.grad(p, *args), x)


# --- random programs ------------------------------------------------------------------------


@PROPERTY
@given(st.data())
def test_hessian_and_hvp_match_differences_of_the_gradient(data):
    prog = data.draw(programs(n_inputs=st.integers(1, 4), size=st.integers(1, 10)))
    x = data.draw(points(prog.n_inputs), label="recorded at")
    y = data.draw(points(prog.n_inputs), label="evaluated at")
    v = data.draw(points(prog.n_inputs, -2.0, 2.0), label="v")
    assume(well_conditioned(prog, y, margin=3e-2, bound=1e3) is not None)
    F = jitad.trace(prog, x)
    H = F.hessian(y)
    assert H.shape == (prog.n_inputs, prog.n_inputs)
    np.testing.assert_array_equal(H, H.T)
    fd = fd_hessian(F, y)
    assert_close(H, fd, rtol=1e-5, what="hessian vs differences of the gradient")
    hv = F.hvp(y, v)
    assert_close(hv, fd @ v, rtol=1e-5, what="hvp vs differences of the gradient")
    assert_close(hv, H @ v, rtol=1e-12, what="hvp vs hessian @ v")
    # The transforms agree with the TapeFunction.
    assert_close(jitad.hvp(prog)(y, v), hv, rtol=1e-12)
    assert_close(jitad.hessian(prog)(y), H, rtol=1e-12)


@PROPERTY
@given(st.data())
def test_hessian_columns_are_hvps_of_unit_vectors(data):
    prog = data.draw(programs(n_inputs=st.integers(2, 4), size=st.integers(1, 8)))
    x = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, x, margin=0, bound=1e6) is not None)
    F = jitad.trace(prog, x)
    H = F.hessian(x)
    for k in range(prog.n_inputs):
        e = np.zeros(prog.n_inputs)
        e[k] = 1.0
        assert_close(F.hvp(x, e), H[:, k], rtol=1e-12)
    # hvp is linear in v.
    v = np.arange(1.0, prog.n_inputs + 1)
    assert_close(F.hvp(x, 2.5 * v), 2.5 * F.hvp(x, v), rtol=1e-13)
    np.testing.assert_array_equal(F.hvp(x, np.zeros(prog.n_inputs)), 0.0)


# --- every op of the table ------------------------------------------------------------------


def _inner(x):
    # Nonlinear operands, so that the op's first and second partials both matter.
    u = 0.7 * x[0] - 0.4 * x[1] + 0.2 * x[0] * x[1]
    v = 0.5 * x[1] + 0.3 * x[0] * x[0] - 0.2
    return u, v


def _case(spec_name, operands, squash="tanh", c=1.7):
    spec = SPECS[spec_name]

    def f(x):
        u, v = _inner(x)
        if operands == "same":
            v = u
        elif operands == "const left":
            u = 0.8
        elif operands == "const right":
            v = -0.6
        t = spec.fn(jitad, SQUASH[squash], u, v, c)
        return t + 0.25 * t * t

    return f


def _cases():
    for name, spec in SPECS.items():
        variants = ["nodes"]
        if spec.arity == 2:
            variants.append("same")
            variants += [side for k, side in enumerate(("const left", "const right")) if spec.const_ok[k]]
        for operands in variants:
            yield pytest.param(name, operands, id=f"{name}-{operands}")


POINTS = [np.array([0.9, -0.4]), np.array([-1.3, 0.7]), np.array([0.35, 1.6])]


def test_second_order_table_covers_every_differentiable_op():
    covered = set()
    for spec in SPECS.values():
        covered.update(spec.covers)
    differentiable = {op.name for op in ops.OPS} - NO_DERIVATIVE
    assert differentiable <= covered, f"ops without a second-order test: {differentiable - covered}"


@pytest.mark.parametrize("name, operands", list(_cases()))
def test_every_op_hessian_matches_differences_of_the_gradient(name, operands):
    f = _case(name, operands)
    F = jitad.trace(f, POINTS[0])
    recorded = set(F.tape.names)
    expected = set(SPECS[name].covers)
    if name == "pow" and operands == "const right":
        expected = {"powc"}  # Value ** float is recorded as powc
    assert expected <= recorded, f"{name} ({operands}) did not record {expected - recorded}: {F.tape.names}"
    for x in POINTS:
        H = F.hessian(x)
        fd = fd_hessian(F, x)
        assert_close(H, fd, rtol=2e-7, what=f"{name} ({operands}) at {x}")
        v = np.array([0.6, -1.1])
        assert_close(F.hvp(x, v), fd @ v, rtol=2e-7)


@pytest.mark.parametrize(
    "f, hessian",
    [
        (lambda x: x[0] ** 0.0 * x[1], lambda x: np.zeros((2, 2))),
        (lambda x: x[0] ** 1.0 * x[1], lambda x: np.array([[0.0, 1.0], [1.0, 0.0]])),
        (lambda x: x[0] ** 2.0, lambda x: np.array([[2.0, 0.0], [0.0, 0.0]])),
        (lambda x: x[0] ** 3.0, lambda x: np.array([[6.0 * x[0], 0.0], [0.0, 0.0]])),
        (lambda x: x[0] ** -1.0, lambda x: np.array([[2.0 / x[0] ** 3, 0.0], [0.0, 0.0]])),
        (
            lambda x: 2.0 ** x[0] * x[1],
            lambda x: np.array(
                [[math.log(2) ** 2 * 2 ** x[0] * x[1], math.log(2) * 2 ** x[0]], [math.log(2) * 2 ** x[0], 0.0]]
            ),
        ),
        (lambda x: x[0] * x[0] * x[1], lambda x: np.array([[2 * x[1], 2 * x[0]], [2 * x[0], 0.0]])),
        (lambda x: x[0] / x[1], lambda x: np.array([[0.0, -1 / x[1] ** 2], [-1 / x[1] ** 2, 2 * x[0] / x[1] ** 3]])),
    ],
    ids=["x**0", "x**1", "x**2", "x**3", "x**-1", "2**x", "x*x*y", "x/y"],
)
def test_powers_and_products_exactly(f, hessian):
    F = jitad.trace(f, np.array([1.0, 1.0]))
    for x in (np.array([-1.5, 0.5]), np.array([2.0, -3.0]), np.array([0.5, 2.0])):
        np.testing.assert_allclose(F.hessian(x), hessian(x), rtol=1e-14, atol=1e-300)


def test_pow_with_both_operands_recorded():
    def f(x):
        return x[0] ** x[1]

    F = jitad.trace(f, np.array([2.0, 3.0]))
    assert "pow" in F.tape.names
    x, y = 1.7, 2.3
    lx = math.log(x)
    v = x**y
    expected = np.array(
        [[y * (y - 1) * x ** (y - 2), x ** (y - 1) * (1 + y * lx)], [x ** (y - 1) * (1 + y * lx), v * lx * lx]]
    )
    np.testing.assert_allclose(F.hessian(np.array([x, y])), expected, rtol=1e-14)


# --- known functions --------------------------------------------------------------------------


def rosen(x):
    return sum(100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2 for i in range(len(x) - 1))


@pytest.mark.parametrize("n", [2, 3, 10, 60])
def test_rosenbrock_hessian_and_hvp_match_scipy(n):
    rng = np.random.default_rng(n)
    F = jitad.trace(rosen, np.zeros(n))
    for _ in range(3):
        x = rng.uniform(-2, 2, n)
        v = rng.normal(size=n)
        np.testing.assert_allclose(F.hessian(x), scipy.optimize.rosen_hess(x), rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(F.hvp(x, v), scipy.optimize.rosen_hess_prod(x, v), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(F.grad(x), scipy.optimize.rosen_der(x), rtol=1e-13, atol=1e-11)
    # The transforms, fresh.
    x = rng.uniform(-2, 2, n)
    v = rng.normal(size=n)
    np.testing.assert_allclose(jitad.hessian(rosen)(x), scipy.optimize.rosen_hess(x), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(jitad.hvp(rosen)(x, v), scipy.optimize.rosen_hess_prod(x, v), rtol=1e-12, atol=1e-10)


def test_scipy_rosen_itself_traces():
    x = np.array([0.3, -0.8, 1.1, 0.4])
    F = jitad.trace(scipy.optimize.rosen, x)
    np.testing.assert_allclose(F.hessian(x + 0.5), scipy.optimize.rosen_hess(x + 0.5), rtol=1e-13)


def test_second_order_on_both_sides_of_a_branch():
    def f(x):
        if x[0] * x[1] > 1.0:
            return jitad.exp(x[0]) * x[1]
        return x[0] ** 3 * jitad.sin(x[1])

    def hessian(x):
        if x[0] * x[1] > 1.0:
            e = math.exp(x[0])
            return np.array([[e * x[1], e], [e, 0.0]])
        s, c = math.sin(x[1]), math.cos(x[1])
        return np.array([[6 * x[0] * s, 3 * x[0] ** 2 * c], [3 * x[0] ** 2 * c, -(x[0] ** 3) * s]])

    F = jitad.trace(f, np.array([2.0, 2.0]))
    v = np.array([0.3, -0.9])
    for x in ([2.0, 2.0], [0.5, 0.5], [3.0, 1.0], [-1.0, 2.0], [2.0, 2.0]):
        x = np.array(x)
        np.testing.assert_allclose(F.hessian(x), hessian(x), rtol=1e-14)
        np.testing.assert_allclose(F.hvp(x, v), hessian(x) @ v, rtol=1e-14)
    assert F.retraces == 1


def test_second_order_with_parameters():
    def f(x, A, b):
        # 0.5 x^T A x + b^T sin(x)
        n = len(x)
        quad = sum(A[i, j] * x[i] * x[j] for i in range(n) for j in range(n))
        return 0.5 * quad + sum(b[i] * jitad.sin(x[i]) for i in range(n))

    rng = np.random.default_rng(3)
    F = jitad.trace(f, np.zeros(3), np.eye(3), np.ones(3))
    for _ in range(4):
        A = rng.normal(size=(3, 3))
        b = rng.normal(size=3)
        x = rng.normal(size=3)
        expected = 0.5 * (A + A.T) - np.diag(b * np.sin(x))
        np.testing.assert_allclose(F.hessian(x, A, b), expected, rtol=1e-13, atol=1e-15)
        v = rng.normal(size=3)
        np.testing.assert_allclose(F.hvp(x, v, A, b), expected @ v, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(jitad.hvp(f)(x, v, A, b), expected @ v, rtol=1e-13, atol=1e-15)
    assert F.retraces == 0


def test_hessian_of_piecewise_ops_away_from_kinks_and_at_them():
    def f(x):
        return jitad.relu(x[0]) ** 2 + jitad.abs(x[1]) * x[0] + jitad.maximum(x[0], x[1]) ** 2

    F = jitad.trace(f, np.array([1.0, -2.0]))
    x = np.array([1.0, -2.0])  # relu on, |x1| = -x1, max = x0
    np.testing.assert_allclose(F.hessian(x), [[4.0, -1.0], [-1.0, 0.0]])
    x = np.array([-1.0, 2.0])  # relu off, |x1| = x1, max = x1
    np.testing.assert_allclose(F.hessian(x), [[0.0, 1.0], [1.0, 2.0]])
    # At the kinks: PyTorch's conventions (relu'(0) = abs'(0) = 0, a tie splits evenly); finite.
    H = F.hessian(np.array([0.0, 0.0]))
    assert np.all(np.isfinite(H))
    np.testing.assert_array_equal(H, H.T)


def test_nan_tangent_in_the_branch_not_taken_does_not_poison_the_hessian():
    # For x0 <= 0 where() takes x1**2; sqrt's branch has a NaN (x0 < 0) or infinite (x0 = 0)
    # tangent, but its second partials in where() are exactly 0: value, gradient and
    # Hessian are those of x1**2, as the gradient already is (a zero adjoint is skipped).
    def f(x):
        return jitad.where(jitad.greater(x[0], 0.0), jitad.sqrt(x[0]) * x[1], x[1] ** 2)

    F = jitad.trace(f, np.array([1.0, 1.0]))
    for x0 in (-1.0, 0.0):
        x = np.array([x0, 3.0])
        assert F(x) == 9.0
        np.testing.assert_array_equal(F.grad(x), [0.0, 6.0])
        np.testing.assert_array_equal(F.hessian(x), [[0.0, 0.0], [0.0, 2.0]])
        np.testing.assert_array_equal(F.hvp(x, np.array([1.0, 1.0])), [0.0, 2.0])


def test_large_hessian_is_symmetric_and_sparse_where_it_should_be():
    n = 40
    F = jitad.trace(rosen, np.zeros(n))
    x = np.linspace(-1, 1, n)
    H = F.hessian(x)
    np.testing.assert_array_equal(H, H.T)
    assert np.count_nonzero(np.triu(H, 2)) == 0  # tridiagonal
