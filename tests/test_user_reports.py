"""Behaviour checked by QA acting as PyTorch, JAX, micrograd and SciPy users, each against
an independent reference (PyTorch float64, analytic formulas). Everything here passes;
defects still open are in tests/pending_user_reports.py."""

import math

import numpy as np
import pytest

import jitad
from jitad import Value
from test_graph import micrograd_example

torch = pytest.importorskip("torch")
torch_func = pytest.importorskip("torch.func")


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# --- micrograd's own test_engine.py, with jitad.Value substituted ------------------------


def test_micrograd_test_engine_sanity_check(tape):
    x = Value(-4.0)
    z = 2 * x + 2 + x
    q = z.relu() + z * x
    h = (z * z).relu()
    y = h + q + q * x
    y.backward()

    tx = _t([-4.0]).requires_grad_()
    tz = 2 * tx + 2 + tx
    tq = tz.relu() + tz * tx
    th = (tz * tz).relu()
    ty = th + tq + tq * tx
    ty.backward()
    assert y.data == ty.item()
    assert x.grad == tx.grad.item()


def test_micrograd_test_engine_more_ops(tape):
    a, b, g = micrograd_example()  # micrograd's test_more_ops, as the graph tests draw it
    g.backward()

    ta, tb = _t([-4.0]).requires_grad_(), _t([2.0]).requires_grad_()
    tc = ta + tb
    td = ta * tb + tb**3
    tc = tc + tc + 1
    tc = tc + 1 + tc + (-ta)
    td = td + td * 2 + (tb + ta).relu()
    td = td + 3 * td + (tb - ta).relu()
    te = tc - td
    tf = te**2
    tg = tf / 2.0
    tg = tg + 10.0 / tf
    tg.backward()
    assert g.data == pytest.approx(tg.item(), rel=1e-14)
    assert a.grad == pytest.approx(ta.grad.item(), rel=1e-14)
    assert b.grad == pytest.approx(tb.grad.item(), rel=1e-14)


# --- binary ops whose two operands are the same Value: second-order cross terms ----------

_SAME_OPERAND = {
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "pow": (lambda a, b: a**b, lambda a, b: a**b),
    "atan2": (jitad.atan2, torch.atan2),
    "hypot": (jitad.hypot, torch.hypot),
    "logaddexp": (jitad.logaddexp, torch.logaddexp),
}


@pytest.mark.parametrize("name", sorted(_SAME_OPERAND))
def test_op_of_a_value_with_itself_second_order_against_torch(name):
    jf, tf = _SAME_OPERAND[name]

    def f(x, lib_f=jf, sin=jitad.sin):
        a = sin(x[0]) + 1.5
        return lib_f(a, a) * x[1] + lib_f(a, a * 0.5 + x[1] * 0.1)

    def ft(x):
        a = torch.sin(x[0]) + 1.5
        return tf(a, a) * x[1] + tf(a, a * 0.5 + x[1] * 0.1)

    F = jitad.trace(f, np.array([1.0, 1.0]))
    for p in (np.array([1.3, 0.7]), np.array([0.4, 1.9])):
        tp = _t(p)
        np.testing.assert_allclose(F.grad(p), torch_func.grad(ft)(tp).numpy(), rtol=1e-12)
        np.testing.assert_allclose(F.hessian(p), torch_func.hessian(ft)(tp).numpy(), rtol=1e-10, atol=1e-12)
        with jitad.Tape():  # eager: second derivatives through create_graph=True
            xs = [Value(v) for v in p]
            gs = jitad.gradients(f(np.array(xs, dtype=object)), xs, create_graph=True)
            H = np.array([jitad.gradients(g, xs) for g in gs])
        np.testing.assert_allclose(H, torch_func.hessian(ft)(tp).numpy(), rtol=1e-10, atol=1e-12)


# --- optimize=True keeps IEEE semantics of identities at inf, nan and -0.0 ---------------

_IDENTITIES = {
    "0*x": lambda x: 0.0 * x[0] + x[1],
    "x-x": lambda x: (x[0] - x[0]) + x[1],
    "x/x": lambda x: (x[0] / x[0]) * x[1],
    "x**0": lambda x: x[0] ** 0.0 * x[1],
    "x*0*y": lambda x: x[0] * 0.0 * x[1],
    "cse": lambda x: jitad.sin(x[0]) * jitad.sin(x[0]) + x[1],
}


@pytest.mark.parametrize("name", sorted(_IDENTITIES))
def test_optimized_tape_is_bit_identical_to_eager_at_special_points(name):
    f = _IDENTITIES[name]
    plain = jitad.trace(f, np.array([1.0, 1.0]))
    folded = jitad.trace(f, np.array([1.0, 1.0]), optimize=True)
    for p in ([np.inf, 2.0], [np.nan, 2.0], [0.0, 2.0], [-0.0, -2.0], [1e308, 1e308]):
        p = np.array(p)
        with jitad.Tape():
            xs = [Value(v) for v in p]
            y = f(np.array(xs, dtype=object))
            want = (y.data, jitad.gradients(y, xs))
        for F in (plain, folded):
            value, grad = F.value_and_grad(p)
            for got, ref in ((value, want[0]), (grad, want[1])):
                got, ref = np.atleast_1d(got), np.atleast_1d(ref)
                assert np.array_equal(got, ref, equal_nan=True), (name, p, got, ref)
                real = ~np.isnan(ref)  # the sign of a NaN carries no number
                assert np.array_equal(np.signbit(got)[real], np.signbit(ref)[real]), (name, p, got, ref)


# --- gradients of gradients inside trace: third order against torch.func ---------------


def test_traced_create_graph_third_order_against_torch():
    def f(w):
        x, y = w[0], w[1]
        z = jitad.sin(x * y) + x**3 * y
        gx, gy = jitad.gradients(z, [x, y], create_graph=True)
        return gx * gy + gx**2

    def ft(w):
        g = torch_func.grad(lambda v: torch.sin(v[0] * v[1]) + v[0] ** 3 * v[1])(w)
        return g[0] * g[1] + g[0] ** 2

    F = jitad.trace(f, np.array([0.5, 0.5]))
    for p in (np.array([1.2, -0.7]), np.array([-2.0, 0.3])):
        tp = _t(p)
        assert F(p) == pytest.approx(ft(tp).item(), rel=1e-13)
        np.testing.assert_allclose(F.grad(p), torch_func.grad(ft)(tp).numpy(), rtol=1e-12)
        H = torch_func.hessian(ft)(tp).numpy()
        np.testing.assert_allclose(F.hessian(p), H, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(F.hessian(p, sparse=True).toarray(), H, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        F.grad_batch(np.array([[1.2, -0.7], [-2.0, 0.3]]))[1], torch_func.grad(ft)(_t([-2.0, 0.3])).numpy(), rtol=1e-12
    )


# --- per-point parameters and branches in jacobian_batch --------------------------------


def test_jacobian_batch_per_point_parameters_across_branches():
    def g(x, p):
        if x[0] > p:
            return [x[0] * x[1] * p, x[1]]
        return [x[1] ** 2, x[0] * p]

    G = jitad.trace(g, np.array([1.0, 1.0]), 0.0)
    X = np.array([[1.0, 2.0], [-1.0, 3.0], [2.0, 5.0]])
    P = np.array([0.5, 0.0, 3.0])
    want = np.array(
        [
            [[2.0 * 0.5, 1.0 * 0.5], [0.0, 1.0]],  # x0 > p: [x0 x1 p, x1]
            [[0.0, 6.0], [0.0, 0.0]],  # x0 <= p: [x1^2, x0 p]
            [[0.0, 10.0], [3.0, 0.0]],
        ]
    )
    np.testing.assert_array_equal(G.jacobian_batch(X, P), want)
    np.testing.assert_array_equal(G.batch(X, P), [[1.0, 2.0], [9.0, -0.0], [25.0, 6.0]])


# --- SciPy: the optimizers' calling conventions with jitad's callables -------------------


def test_scipy_second_order_methods_with_jitad_derivatives_and_args():
    from scipy.optimize import minimize, rosen_der, rosen_hess, rosen_hess_prod

    def fa(x, a, b):
        return sum(b * (x[i + 1] - x[i] ** 2) ** 2 + (a - x[i]) ** 2 for i in range(len(x) - 1))

    x0 = np.array([1.3, 0.7, 0.8, 1.9, 1.2])
    np.testing.assert_allclose(jitad.grad(fa)(x0, 1.0, 100.0), rosen_der(x0), rtol=1e-13)
    np.testing.assert_allclose(jitad.hessian(fa)(x0, 1.0, 100.0), rosen_hess(x0), rtol=1e-13)
    v = x0[::-1].copy()
    np.testing.assert_allclose(jitad.hvp(fa)(x0, v, 1.0, 100.0), rosen_hess_prod(x0, v), rtol=1e-13)
    for method, kw in (
        ("Newton-CG", {"hessp": jitad.hvp(fa)}),
        ("trust-krylov", {"hessp": jitad.hvp(fa)}),
        ("trust-exact", {"hess": jitad.hessian(fa)}),
        ("trust-constr", {"hess": jitad.hessian(fa)}),
    ):
        res = minimize(fa, x0, args=(1.0, 100.0), jac=jitad.grad(fa), method=method, **kw)
        assert res.success, method
        np.testing.assert_allclose(res.x, np.ones(5), atol=1e-3, err_msg=method)


# --- JAX conventions of jvp / vjp with has_aux -----------------------------------------


def test_jvp_vjp_has_aux_return_jax_tuples():
    out, tangent, aux = jitad.jvp(lambda t: (t**2, t), (2.0,), (1.0,), has_aux=True)
    assert (out, tangent, aux) == (4.0, 4.0, 2.0)  # jax.jvp: (primals_out, tangents_out, aux)
    out, pullback, aux = jitad.vjp(lambda t: (t**2, t), 2.0, has_aux=True)
    assert (out, aux) == (4.0, 2.0)  # jax.vjp: (primals_out, vjp_fn, aux)
    assert pullback(1.0) == (4.0,)  # a tuple, one cotangent per primal


def test_vjp_pullback_keeps_its_point():
    # jax.vjp's pullback closes over the primal values: later calls and mutation of the
    # caller's array do not change it.
    x = np.array([1.0, 2.0])
    _, pullback = jitad.vjp(lambda x: [x[0] * x[1], jitad.exp(x[0])], x)
    jitad.vjp(lambda x: [x[0] * x[1], jitad.exp(x[0])], np.array([3.0, 4.0]))
    x[0] = 10.0
    (g,) = pullback(np.array([1.0, 0.0]))
    np.testing.assert_array_equal(g, [2.0, 1.0])


# --- argnums not in increasing order (fixed in 57bb43c; was silently wrong) --------------
# A JAX user writes jax.grad(f, argnums=(1, 0))(x, y) and gets (df/dy, df/dx) at (x, y).
# jitad used to concatenate the differentiated arguments in argument order but slice them
# in argnums order: f ran at a shuffled point and every number (the value too) was wrong.


def _f_xy(x, y):
    return jitad.sin(x[0]) * y + x[1] ** 2 * y**2


_X = np.array([0.5, 2.0])
_Y = 3.0
# analytic: f = sin(x0) y + x1^2 y^2
_VALUE = math.sin(0.5) * 3.0 + 4.0 * 9.0
_DX = np.array([math.cos(0.5) * 3.0, 2 * 2.0 * 9.0])
_DY = math.sin(0.5) + 2 * 4.0 * 3.0


def test_grad_argnums_in_decreasing_order_gives_gradients_in_that_order_at_the_right_point():
    dy, dx = jitad.grad(_f_xy, argnums=(1, 0))(_X, _Y)  # jax.grad: (24.4794..., [2.6327..., 36.])
    assert dy == pytest.approx(_DY, rel=1e-12)
    np.testing.assert_allclose(dx, _DX, rtol=1e-12)


def test_value_and_grad_argnums_in_decreasing_order_has_the_right_value():
    value, (dy, dx) = jitad.value_and_grad(_f_xy, argnums=(1, 0))(_X, _Y)
    assert value == pytest.approx(_VALUE, rel=1e-12)  # was 2.7046..., f at a shuffled point
    assert dy == pytest.approx(_DY, rel=1e-12)
    np.testing.assert_allclose(dx, _DX, rtol=1e-12)


def test_grad_argnums_in_decreasing_order_scalars():
    # h(a, b) = a b^2 at (2, 3): dh/db = 2ab = 12, dh/da = b^2 = 9; jitad gave (12.0, 4.0) before the fix
    db, da = jitad.grad(lambda a, b: a * b**2, argnums=(1, 0))(2.0, 3.0)
    assert (db, da) == (12.0, 9.0)


def test_jacobian_and_hessian_argnums_in_decreasing_order():
    dy, dx = jitad.jacobian(_f_xy, argnums=(1, 0))(_X, _Y)
    assert dy == pytest.approx(_DY, rel=1e-12)
    np.testing.assert_allclose(dx, _DX, rtol=1e-12)
    (hyy, hyx), (hxy, hxx) = jitad.hessian(_f_xy, argnums=(1, 0))(_X, _Y)
    assert hyy == pytest.approx(2 * 2.0**2)  # d2f/dy2 = 2 x1^2 = 8
    np.testing.assert_allclose(hyx, [math.cos(0.5), 4 * 2.0 * 3.0], rtol=1e-12)
    np.testing.assert_allclose(hxy, [math.cos(0.5), 4 * 2.0 * 3.0], rtol=1e-12)
    np.testing.assert_allclose(hxx, [[-math.sin(0.5) * 3.0, 0.0], [0.0, 2 * 9.0]], rtol=1e-12)


# --- a dict of data updated in place (fixed in 57bb43c; was silently wrong) -------------
# A JAX user passes data as a pytree (jax.grad(loss)(w, {"X": X, "y": y})). jitad used to
# treat the dict as static, cache on id(dict) and freeze its numbers into the tape, so
# refilling the same minibatch buffers returned the first call's gradient. Reference: the
# closed form 2 X^T (X w - y).


def test_dict_argument_updated_in_place_is_not_answered_from_the_old_data():
    def loss(w, data):
        X, y = data["X"], data["y"]
        return sum((X[i] @ w - y[i]) ** 2 for i in range(len(y)))

    X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = np.array([1.0, 2.0, 3.0])
    data = {"X": X, "y": y}
    w = np.array([0.1, 0.2])
    g = jitad.grad(loss)
    np.testing.assert_allclose(g(w, data), 2 * X.T @ (X @ w - y), rtol=1e-12)
    X *= 2.0  # the next minibatch, written into the same buffers
    y[:] = 0.0
    # was [-19.4, -24.8], the first minibatch's gradient
    np.testing.assert_allclose(g(w, data), 2 * X.T @ (X @ w - y), rtol=1e-12)


def test_dict_of_numbers_mutated_between_calls():
    g = jitad.grad(lambda x, d: x**2 * d["a"])
    d = {"a": 1.0}
    assert g(2.0, d) == 4.0
    d["a"] = 5.0
    assert g(2.0, d) == 20.0  # was 4.0


# --- a bool flag argument selects the branch (fixed in 57bb43c/eaa8af6; was 4.0) ---------
# jax.grad(f)(2.0, False) runs f with flag=False (12.0 here). jitad used to record `flag`
# as a parameter Value and replay the first call's branch. Bools and ints are static now.


@pytest.mark.filterwarnings("ignore::jitad.UnguardedConversionWarning")
def test_bool_flag_argument_selects_the_branch_on_every_call():
    g = jitad.grad(lambda x, flag: x**2 if flag else x**3)
    assert g(2.0, True) == 4.0
    assert g(2.0, False) == 12.0  # was 4.0


# --- has_aux / output shape follow the replayed branch (fixed in 57bb43c) ---------------
# A transform keeps one tape per branch; the aux structure and f's output shape used to
# be those of the branch recorded last, so replaying an older branch reported the newest
# branch's aux (an iteration count of 8 instead of 5) and shape. jax returns f's own aux.


def test_aux_of_a_replayed_branch_is_that_branch_aux():
    def newton_sqrt(a):  # aux: the iteration count, a Python int
        y, k = a, 0
        while abs(y * y - a) > 1e-10:
            y = 0.5 * (y + a / y)
            k += 1
        return y, k

    vg = jitad.value_and_grad(newton_sqrt, has_aux=True)
    (_, k4), _ = vg(4.0)
    assert k4 == 5
    vg(100.0)  # another branch (more iterations): re-recorded
    (y, k), dy = vg(4.0)  # replays the first tape
    assert y == pytest.approx(2.0) and dy == pytest.approx(0.25)
    assert k == 5  # was 8, the iteration count at 100.0


def test_aux_labels_follow_the_branch():
    def f(x):
        if x > 0:
            return x**2, "positive"
        return x**3, "negative"

    g = jitad.grad(f, has_aux=True)
    assert g(2.0) == (4.0, "positive")
    assert g(-2.0) == (12.0, "negative")
    assert g(3.0) == (6.0, "positive")  # was (6.0, 'negative')


def test_jacobian_shape_follows_the_branch():
    def h(x):
        if x[0] > 0:
            return np.array([[x[0], x[1]], [x[0] * x[1], x[1]]])
        return [x[0], x[1], x[0] * x[1], x[1]]

    J = jitad.jacobian(h)
    assert J(np.array([1.0, 2.0])).shape == (2, 2, 2)
    assert J(np.array([-1.0, 2.0])).shape == (4, 2)
    assert J(np.array([1.0, 2.0])).shape == (2, 2, 2)  # was (4, 2)




def test_int_argument_keeps_its_python_meaning():
    g = jitad.grad(lambda x, n: sum(x**k for k in range(n)))  # range(n), as in jax.grad
    assert g(2.0, 3) == 1.0 + 2 * 2.0  # d/dx (1 + x + x^2)
    assert g(2.0, 4) == 1.0 + 2 * 2.0 + 3 * 4.0
    gn = jitad.grad(lambda x, n: x**2 / n)
    assert [gn(3.0, n) for n in (1, 2, 3)] == [6.0, 3.0, 2.0]


def test_list_and_array_parameters_mutated_in_place():
    gl = jitad.grad(lambda x, coeffs: x * coeffs[0])
    coeffs = [1.0, 2.0]
    assert gl(2.0, coeffs) == 1.0
    coeffs[0] = 5.0
    assert gl(2.0, coeffs) == 5.0
    ga = jitad.grad(lambda x, arr: x * arr[0])
    arr = np.array([1.0])
    assert ga(2.0, arr) == 1.0
    arr[0] = 7.0
    assert ga(2.0, arr) == 7.0


def test_hvp_with_argnums_in_decreasing_order_against_torch():
    def g(a, B, c, lib=jitad):
        return (a * (B @ c)).sum() + lib.sin(c[0]) * a[1]

    a, B, c = np.array([1.0, 2.0]), np.arange(6.0).reshape(2, 3), np.array([0.5, -1.0, 2.0])
    vb, va = np.ones_like(B), np.array([1.0, -1.0])
    hb, ha = jitad.hvp(g, argnums=(1, 0))(a, (vb, va), B, c)
    tH = torch_func.hessian(lambda a, B, c: g(a, B, c, lib=torch), argnums=(1, 0))(_t(a), _t(B), _t(c))
    want_b = np.tensordot(tH[0][0].numpy(), vb, axes=2) + np.tensordot(tH[0][1].numpy(), va, axes=1)
    want_a = np.tensordot(tH[1][0].numpy(), vb, axes=2) + tH[1][1].numpy() @ va
    np.testing.assert_allclose(hb, want_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ha, want_a, rtol=1e-12, atol=1e-12)


# --- sparse=True equals dense at a singular partial (fixed in 034f526; was NaN vs 0) ------
# README: forward-mode Jacobians fall back to reverse sweeps where a local partial is not
# finite, so `a - a` with a = sqrt(x) at x = 0 differentiates to 0 "both ways". The dense
# F.jacobian follows that (0.0); F.jacobian(x, sparse=True), which a trust-constr user
# swaps in for speed, returned NaN there, and F.hessian dense and sparse differed the same
# way (NaN vs 0.0 off the diagonal). Expected: sparse.toarray() == dense, NaNs included.


def _a_minus_a(x):
    a = jitad.sqrt(x[0])
    return [a - a + x[1], 2 * x[0], x[1]]


def test_sparse_jacobian_equals_dense_at_sqrt_zero():
    G = jitad.trace(_a_minus_a, np.array([1.0, 1.0]))
    x = np.array([0.0, 1.0])
    dense = G.jacobian(x)
    np.testing.assert_array_equal(dense, [[0.0, 1.0], [2.0, 0.0], [0.0, 1.0]])  # as documented
    np.testing.assert_array_equal(G.jacobian(x, sparse=True).toarray(), dense)  # was nan at [0, 0]


def test_sparse_hessian_equals_dense_at_sqrt_zero():
    def f(x):
        a = jitad.sqrt(x[0])
        return (a - a) * x[1] + x[1] ** 2

    F = jitad.trace(f, np.array([1.0, 1.0]))
    x = np.array([0.0, 1.0])
    # was: dense [[0, nan], [nan, 2]], sparse [[0, 0], [0, 2]]
    np.testing.assert_array_equal(F.hessian(x, sparse=True).toarray(), F.hessian(x))
# --- a tuple/list pytree of differently shaped arrays (fixed in 034f526; crashed) --------
# The docs (eaa8af6) say a dict, list or tuple of real arrays is a parameter (JAX's
# pytrees). The commonest one, data = (X, y) with X (K, n) and y (K,), crashed before f
# ran, in transforms._holds_values: np.asarray((X, y), dtype=object) raised NumPy's
# "could not broadcast input array from shape (3,2) into shape (3,)". The same data as a
# dict worked. Reference: the closed form 2 X^T (X w - y).


def _lsq(w, data):
    X, y = data
    return sum((X[i] @ w - y[i]) ** 2 for i in range(len(y)))


@pytest.mark.parametrize("container", [tuple, list])
def test_tuple_or_list_of_differently_shaped_arrays_is_a_parameter(container):
    X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = np.array([1.0, 2.0, 3.0])
    w = np.array([0.1, 0.2])
    np.testing.assert_allclose(jitad.grad(_lsq)(w, container((X, y))), 2 * X.T @ (X @ w - y), rtol=1e-12)


# --- integer index arrays and boolean masks as data arguments (fixed in 034f526) --------
# A JAX user passes the indices of a minibatch or a mask as a non-differentiated argument:
# jax.grad(lambda x, idx: (x[idx] ** 2).sum())(x, np.array([0, 2])) is [2, 0, 6].
# jitad used to make int and bool arrays parameters (Values), and indexing with them
# raised NumPy's "arrays used as indices must be of integer (or boolean) type".


def test_integer_index_array_argument():
    g = jitad.grad(lambda x, idx: (x[idx] ** 2).sum())
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(g(x, np.array([0, 2])), [2.0, 0.0, 6.0])
    np.testing.assert_array_equal(g(x, np.array([1, 2])), [0.0, 4.0, 6.0])


def test_boolean_mask_argument():
    g = jitad.grad(lambda x, mask: (x[mask] ** 2).sum())
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(g(x, np.array([True, False, True])), [2.0, 0.0, 6.0])


# --- jacobian of a function of an empty input (fixed in 034f526; crashed) ---------------
# jax.jacobian(lambda x: jnp.array([2., 1.]))(jnp.zeros(0)).shape == (2, 0); jitad's
# jacobian transform crashed inside with "cannot reshape array of size 0 into shape (0)"
# (F.jacobian on the same tape returns the (2, 0) array).


def test_jacobian_transform_of_empty_input():
    J = jitad.jacobian(lambda x: [jitad.Value(2.0), jitad.Value(1.0)])(np.zeros(0))
    assert J.shape == (2, 0)


# A NamedTuple of parameters keeps its type (jax.grad: 3.0); it once became one array, and
# `p.a` raised AttributeError. A scalar TapeFunction's vjp takes a number as its cotangent.


def test_namedtuple_parameter_keeps_its_fields():
    import collections

    P = collections.namedtuple("P", "a b")
    g = jitad.grad(lambda x, p: x * p.a + p.b)
    assert g(2.0, P(3.0, 1.0)) == 3.0
    assert g(2.0, P(5.0, 1.0)) == 5.0  # a parameter: new numbers, no stale tape
    Q = collections.namedtuple("P", "b a")  # the same name, its fields the other way round
    assert g(2.0, Q(5.0, 1.0)) == 1.0


def test_vjp_of_a_scalar_function_takes_a_number():
    F = jitad.trace(lambda x: x[0] ** 2, np.array([1.0]))
    value, g = F.vjp(np.array([3.0]), 2.0)
    assert value == 9.0
    np.testing.assert_array_equal(g, [12.0])


def test_clear_errors_where_jax_and_pytorch_users_go_wrong():
    with pytest.raises(TypeError, match="tuples"):  # jax.jvp(f, (x,), (v,))
        jitad.jvp(lambda x: x**2, np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):  # v shaped like the argument
        jitad.hvp(lambda A: (A**2).sum())(np.ones((2, 2)), np.ones(4))
    with jitad.Tape():
        v = Value(2.0)
        with pytest.raises(TypeError, match="create_graph=True"):
            (v * v).backward(create_graph=True)


def test_numpy_tests_of_a_value_are_guarded_comparisons():
    # np.isnan(loss) in a training loop raised NumPy's "returned NotImplemented"; now a bool,
    # recorded as a comparison so a traced branch on it replays or re-records correctly.
    with jitad.Tape():
        for x, nan, inf in ((1.0, False, False), (math.nan, True, False), (-math.inf, False, True)):
            v = Value(x)
            assert (np.isnan(v), np.isinf(v), np.isfinite(v)) == (nan, inf, not (nan or inf))
    F = jitad.trace(lambda x: x[0] * 2 if not np.isnan(x[0] * 0) else x[0], np.array([1.0]))
    assert F(np.array([3.0])) == 6.0
    assert F(np.array([np.inf])) == np.inf  # x * 0 is NaN there: the other branch


def test_an_eager_value_inside_trace_says_how_to_pass_it():
    w = Value(2.0)
    with pytest.raises(jitad.StaleValueError, match="parameter"):
        jitad.trace(lambda x: x[0] * w, np.array([1.0]))
    with pytest.raises(jitad.StaleValueError, match="parameter"):
        jitad.trace(lambda x: w * x[0], np.array([1.0]))
    F = jitad.trace(lambda x, p: x[0] * p, np.array([1.0]), w.item())  # the way it says
    assert F.grad(np.array([1.0]), 3.0)[0] == 3.0
