"""Sparse derivatives: patterns from the tape, colourings, compressed Jacobians and
Hessians (plain and weighted) against dense references (``F.jacobian``/``F.hessian``, which
are checked against PyTorch and central differences elsewhere), analytic Rosenbrock
(SciPy's rosen_hess) and SciPy's trust-constr with a sparse Hessian."""

import itertools
import math

import numpy as np
import pytest
import scipy.sparse
from programs import points, programs, property_settings, well_conditioned
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.optimize import NonlinearConstraint, minimize, rosen, rosen_hess

import jitad
from jitad import ops, sparse


def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def test_rosenbrock_hessian_is_tridiagonal_exact_and_three_colours():
    n = 50
    x = np.random.default_rng(0).normal(size=n)
    F = jitad.trace(rosenbrock, x)
    pattern = F.hessian_sparsity()
    assert isinstance(pattern, scipy.sparse.csr_array)
    band = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1
    np.testing.assert_array_equal(pattern.toarray(), band)
    assert sparse.colour_columns(pattern).max() + 1 == 3
    H = F.hessian(x, sparse=True)
    assert isinstance(H, scipy.sparse.csr_array)
    np.testing.assert_allclose(H.toarray(), rosen_hess(x), rtol=1e-14, atol=1e-12)
    np.testing.assert_array_equal(H.toarray(), H.toarray().T)  # read once per pair: exactly symmetric
    np.testing.assert_allclose(H.toarray(), F.hessian(x), rtol=1e-14, atol=1e-12)


def test_hessian_pattern_of_linear_and_bilinear_parts():
    def f(x):
        # x0 * x1 (bilinear), x2 linear, sin(x3) (x3 alone), x4 only through a comparison
        return x[0] * x[1] + 3 * x[2] + jitad.sin(x[3]) + jitad.where(jitad.less(x[4], 0.0), 1.0, 2.0)

    F = jitad.trace(f, np.ones(5))
    want = np.zeros((5, 5), dtype=bool)
    want[0, 1] = want[1, 0] = want[3, 3] = True
    np.testing.assert_array_equal(F.hessian_sparsity().toarray(), want)
    np.testing.assert_array_equal(F.jacobian_sparsity().toarray(), [[True, True, True, True, False]])


def test_arrow_hessian():
    # every x_i interacts with x_0 only: d2-colouring needs n colours, results stay exact
    def f(x):
        return sum(x[0] * jitad.exp(x[i]) for i in range(1, len(x)))

    x = np.linspace(-1, 1, 8)
    F = jitad.trace(f, x)
    np.testing.assert_allclose(F.hessian(x, sparse=True).toarray(), F.hessian(x), rtol=1e-14, atol=1e-15)


def vector_function(x):
    n = len(x)
    return [x[i] * x[(i + 1) % n] - jitad.sin(x[(i + 3) % n]) for i in range(n)] + [jitad.exp(x[0]) * x[n - 1]]


def test_sparse_jacobian_matches_dense_and_pattern_is_minimal_here():
    x = np.random.default_rng(1).normal(size=9)
    F = jitad.trace(vector_function, x)
    pattern = F.jacobian_sparsity().toarray()
    assert pattern.sum() == 9 * 3 + 2
    J = F.jacobian(x, sparse=True)
    assert isinstance(J, scipy.sparse.csr_array) and J.shape == (10, 9)
    np.testing.assert_allclose(J.toarray(), F.jacobian(x), rtol=1e-15, atol=0)
    assert sparse.colour_columns(F.jacobian_sparsity()).max() + 1 <= 6


def test_weighted_hessian_of_several_outputs():
    x = np.random.default_rng(2).normal(size=6)
    F = jitad.trace(vector_function, x)
    v = np.random.default_rng(3).normal(size=7)
    want = sum(v[j] * jitad.hessian(lambda x, j=j: vector_function(x)[j])(x) for j in range(7))
    np.testing.assert_allclose(F.hessian(x, weights=v), want, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(F.hessian(x, sparse=True, weights=v).toarray(), want, rtol=1e-13, atol=1e-14)
    u = np.arange(6.0)
    np.testing.assert_allclose(F.hvp(x, u, weights=v), want @ u, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="one number per output"):
        F.hessian(x, weights=v[:3])


@property_settings(40)
@given(st.data())
def test_sparse_derivatives_of_random_programs_equal_dense(data):
    prog = data.draw(programs())
    x = data.draw(points(prog.n_inputs))
    y = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, x, margin=0, bound=1e6) is not None)
    assume(well_conditioned(prog, y, margin=0, bound=1e6) is not None)
    F = jitad.trace(prog, x, retrace="raise")
    for point in (x, y):
        try:
            dense = F.hessian(point)
        except jitad.BranchChanged:
            continue
        H = F.hessian(point, sparse=True).toarray()
        # a nonzero outside the pattern would be silently lost: the dense Hessian must lie in it
        assert not (dense != 0)[~F.hessian_sparsity().toarray()].any()
        np.testing.assert_allclose(H, 0.5 * (dense + dense.T), rtol=1e-12, atol=1e-12 * (1 + np.abs(dense).max()))
        J = F.jacobian(point, sparse=True).toarray()
        np.testing.assert_allclose(J.ravel(), np.ravel(F.jacobian(point)), rtol=1e-12, atol=1e-300)


# The pattern tables claim some partials are identically zero: check every claim against
# the op table's formulas on many inputs (a wrong claim would silently drop nonzeros).
_PROBES = [
    -1e300, -710.0, -3.0, -2.5, -1.0, -0.7, -0.5, -0.3, -1e-300, -0.0, 0.0, 1e-300, 0.3, 0.5, 0.7, 1.0, 2.5, 3.0,
    710.0, 1e300, math.inf, -math.inf,
]  # fmt: skip


@pytest.mark.parametrize("op", [op for op in ops.OPS if op.formula is not None], ids=lambda op: op.name)
def test_structural_zero_tables_hold_for_every_input(op):
    zx, zy = sparse.FIRST_ZERO.get(op.name, (False, False))
    xx, xy, yy = sparse.SECOND.get(op.name, (True, True, True))
    for x, y in itertools.product(_PROBES, repeat=2):
        with np.errstate(all="ignore"):
            try:
                _, dx, dy, dxx, dxy, dyy = op.formula(x, y)
            except (ArithmeticError, ValueError):
                continue
        for claimed_zero, value in ((zx, dx), (zy, dy), (not xx, dxx), (not xy, dxy), (not yy, dyy)):
            if claimed_zero:
                assert value == 0.0, f"{op.name}({x}, {y}) has a nonzero partial the tables call zero"


def test_trust_constr_with_sparse_hessians():
    # min Rosenbrock subject to ||x||^2 <= 4 and x0 * x1 >= -1: objective and constraint
    # Hessians (the latter weighted by SciPy's multipliers) as sparse matrices.
    n = 30
    x0 = np.full(n, 0.1)
    F = jitad.trace(rosenbrock, x0)

    def constraints(x):
        return [sum(x[i] ** 2 for i in range(len(x))), x[0] * x[1]]

    C = jitad.trace(constraints, x0)
    con = NonlinearConstraint(
        lambda x: C(x),
        [-np.inf, -1.0],
        [4.0 * n, np.inf],
        jac=lambda x: C.jacobian(x, sparse=True),
        hess=lambda x, v: C.hessian(x, sparse=True, weights=v),
    )
    result = minimize(
        F.value_and_grad, x0, jac=True, hess=lambda x: F.hessian(x, sparse=True), method="trust-constr",
        constraints=[con], options={"gtol": 1e-10, "xtol": 1e-12, "maxiter": 3000},
    )  # fmt: skip
    assert result.status in (1, 2), result.message
    np.testing.assert_allclose(result.x, np.ones(n), atol=1e-5)
    assert rosen(result.x) < 1e-9
