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
        # forward (sparse) and reverse (dense) sweeps round differently: 0.5 + 1e-39 - 0.5 is 0
        # going back, while going forward the 0.5s cancel first and 1e-39 survives
        J = F.jacobian(point, sparse=True).toarray().ravel()
        dense_J = np.ravel(F.jacobian(point))
        np.testing.assert_allclose(J, dense_J, rtol=1e-12, atol=1e-12 * (1 + np.abs(dense_J).max()))


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


# The compressed Hessian's plan restricts the sweep to what the tape's structure can make
# nonzero (sparse._second_order): the restriction may drop only exact zeros.
def _unrestricted_hessian(F, x, weights=None):
    """kernels.compressed_hessian at x with every entry flagged and given a tangent."""
    program = F.tape
    which = sparse.differentiated(program, weights)
    plan = sparse._hessian_plan(program, which)
    dot, adj_dot = (a.copy() for a in sparse._scratch(program, plan))
    computed = np.flatnonzero(program.op[: plan.flags.size] >= jitad.kernels.FIRST_COMPUTED)
    flags = np.zeros_like(plan.flags)
    flags[computed] = sparse.HOT | sparse.CURVED
    w = F._work(program)
    seeds = np.ones(1) if weights is None else np.asarray(weights, dtype=float)
    data = np.empty(plan.src_row.size)
    failed = jitad.kernels.compressed_hessian(
        program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj, program.inputs, program.params,
        np.asarray(x, dtype=float), np.empty(0), plan.outputs, seeds, flags, computed.astype(np.int64),
        plan.src_colour, plan.src_row, dot, adj_dot, data,
    )  # fmt: skip
    assert failed < 0
    return data


@property_settings(40)
@given(st.data())
def test_structural_restriction_drops_only_exact_zeros(data):
    prog = data.draw(programs(n_outputs=data.draw(st.sampled_from([None, lambda n: st.integers(1, 3)]))))
    x = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, x, margin=0, bound=1e6) is not None)
    F = jitad.trace(prog, x, retrace="raise")
    weights = None if prog.outputs is None else np.linspace(-1.0, 2.0, len(prog.outputs))
    want = _unrestricted_hessian(F, x, weights)
    got = F.hessian(x, sparse=True, weights=weights)
    np.testing.assert_array_equal(got.data, want)


def test_rosenbrock_plan_skips_most_of_the_tape():
    # per term: x_i^2 (curved, and its adjoint tangent nonzero), x_{i+1} - x_i^2 (adjoint
    # tangent), (.)^2 (curved), 100 (.) (neither), 1 - x_i (adjoint tangent), (.)^2
    # (curved), two adds (neither); tangents of x_i^2 and both subs only
    n = 20
    F = jitad.trace(rosenbrock, np.ones(n))
    _, flags, tangents = sparse._second_order(F.tape, "first")
    assert np.count_nonzero(flags == sparse.CURVED) == 2 * (n - 1)
    assert np.count_nonzero(flags == sparse.HOT | sparse.CURVED) == n - 1
    assert np.count_nonzero(flags == sparse.HOT) == 2 * (n - 1)
    assert tangents.size == 3 * (n - 1)


def test_result_is_a_checked_csr_array_with_its_own_structure():
    x = np.random.default_rng(4).normal(size=12)
    F = jitad.trace(rosenbrock, x)
    H = F.hessian(x, sparse=True)
    built = scipy.sparse.csr_array((H.data.copy(), H.indices.copy(), H.indptr.copy()), shape=H.shape)
    built.check_format(full_check=True)
    H.check_format(full_check=True)
    assert H.has_canonical_format and H.indices.dtype == built.indices.dtype
    np.testing.assert_array_equal((H - built).toarray(), 0)
    # in-place edits of one result reach neither the next result nor the cached structure
    H.indices[:] = 0
    H.data[:] = 0
    H2 = F.hessian(x, sparse=True)
    np.testing.assert_array_equal(H2.toarray(), built.toarray())
    J = F.jacobian(x, sparse=True)
    J.check_format(full_check=True)
    np.testing.assert_allclose(J.toarray().ravel(), F.jacobian(x), rtol=1e-15)


def test_hessian_takes_parameters_lists_other_branches_and_debug_mode():
    def f(x, data):
        s = sum(data[i] * x[i] ** 3 for i in range(len(x)))
        if x[0] < 0:  # a recorded guard: the other side is another tape
            return s * x[1]
        return s + x[0] * x[1]

    x, data = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    F = jitad.trace(f, x, data)
    for point, d in [(x, data), ([-0.5, 1.0, 2.0], data), (x, [3.0, 2.0, 1.0]), (np.array([1, 2, 3]), 2 * data)]:
        want = jitad.trace(f, np.asarray(point, dtype=float), d).hessian(np.asarray(point, dtype=float), d)
        np.testing.assert_allclose(F.hessian(point, d, sparse=True).toarray(), want, rtol=1e-14, atol=1e-14)
    assert F.retraces >= 1
    with jitad.debug_nans():
        np.testing.assert_allclose(F.hessian(x, data, sparse=True).toarray(), F.hessian(x, data), rtol=1e-14)
    with pytest.raises(ValueError, match="shape"):
        F.hessian(np.ones(4), data, sparse=True)
    with pytest.raises(ValueError, match="parameter 0"):
        F.hessian(x, np.ones(2), sparse=True)


def test_hessians_in_threads_agree():
    from concurrent.futures import ThreadPoolExecutor

    X = np.random.default_rng(5).normal(size=(64, 30))
    F = jitad.trace(rosenbrock, X[0])
    want = [rosen_hess(x) for x in X]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: F.hessian(x, sparse=True).toarray(), X))
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-14, atol=1e-12)
