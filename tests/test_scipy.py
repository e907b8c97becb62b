"""SciPy's optimizers take jitad's transforms as they are: ``jac=True`` with
``value_and_grad``, ``jac=grad``, ``hessp=hvp``, ``hess=hessian``, and ``jacobian`` for
``least_squares``, parameters passed through ``args``."""

import numpy as np
import pytest
from scipy.optimize import least_squares, minimize, rosen, rosen_der, rosen_hess

import jitad


class Counted:
    def __init__(self, f):
        self.f = f
        self.calls = 0
        self.__name__ = f.__name__

    def __call__(self, *args):
        self.calls += 1
        return self.f(*args)


def test_lbfgsb_on_rosenbrock_200():
    counted = Counted(rosen)  # SciPy's own rosen, traced on Values
    result = minimize(jitad.value_and_grad(counted), np.zeros(200), jac=True, method="L-BFGS-B",
                      options={"maxiter": 20000, "maxfun": 40000, "gtol": 1e-10, "ftol": 1e-15})  # fmt: skip
    assert result.success, result.message
    np.testing.assert_allclose(result.x, np.ones(200), atol=1e-4)
    assert result.fun < 1e-8
    assert counted.calls == 1  # traced once, replayed at every iterate


def test_bfgs_with_grad():
    def f(x):
        # Works on floats (SciPy's calls) and on Values (tracing) alike.
        return (x[0] - 1.0) ** 2 + 10.0 * (x[1] - x[0] ** 2) ** 2 + np.sin(x[2]) ** 2 + np.exp(0.1 * x[2])

    x0 = np.array([-1.0, 2.0, 1.0])
    result = minimize(f, x0, jac=jitad.grad(f))
    assert result.success, result.message
    x = result.x
    assert x[0] == pytest.approx(1.0, abs=1e-5) and x[1] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(jitad.grad(f)(x), 0.0, atol=1e-5)


def test_trust_ncg_with_hessp():
    counted = Counted(rosen)
    x0 = np.full(30, -0.5)
    result = minimize(rosen, x0, jac=jitad.grad(counted), hessp=jitad.hvp(counted), method="trust-ncg",
                      options={"gtol": 1e-10})  # fmt: skip
    assert result.success, result.message
    np.testing.assert_allclose(result.x, np.ones(30), atol=1e-6)
    assert counted.calls == 2  # one trace for grad(f), one for hvp(f)


def test_newton_cg_with_hessp_and_args():
    def f(x, A, b):
        return 0.5 * (x @ (A @ x)) - b @ x + 0.1 * np.sum(x**4)

    rng = np.random.default_rng(0)
    M = rng.normal(size=(8, 8))
    A = M @ M.T + 8 * np.eye(8)
    b = rng.normal(size=8)
    result = minimize(f, np.zeros(8), args=(A, b), jac=jitad.grad(f), hessp=jitad.hvp(f), method="Newton-CG",
                      options={"xtol": 1e-12})  # fmt: skip
    assert result.success, result.message
    np.testing.assert_allclose(A @ result.x - b + 0.4 * result.x**3, 0.0, atol=1e-8)


def test_trust_exact_with_hessian():
    counted = Counted(rosen)
    x0 = np.array([1.3, 0.7, 0.8, 1.9, 1.2])
    result = minimize(rosen, x0, jac=jitad.grad(rosen), hess=jitad.hessian(counted), method="trust-exact")
    assert result.success, result.message
    np.testing.assert_allclose(result.x, np.ones(5), atol=1e-5)
    # The same iterates as with SciPy's exact derivatives.
    reference = minimize(rosen, x0, jac=rosen_der, hess=rosen_hess, method="trust-exact")
    assert result.nit == reference.nit
    np.testing.assert_allclose(result.x, reference.x, rtol=1e-12)
    np.testing.assert_allclose(jitad.hessian(rosen)(result.x), rosen_hess(result.x), rtol=1e-13)
    assert counted.calls == 1


def test_jac_true_with_parameters_through_args():
    def loss(w, X, y):
        # Logistic regression; X and y are parameters (data), w the variables.
        z = X @ w
        return (
            np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * (w @ w)
            if z.dtype != object
            else (sum(jitad.softplus(zi) - yi * zi for zi, yi in zip(z, y)) + 0.5 * (w @ w))
        )

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=40) > 0).astype(float)
    counted = Counted(loss)
    vg = jitad.value_and_grad(counted)
    result = minimize(vg, np.zeros(3), args=(X, y), jac=True, method="BFGS", options={"gtol": 1e-10})
    assert result.success, result.message
    w = result.x
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    np.testing.assert_allclose(X.T @ (p - y) + w, 0.0, atol=1e-8)
    # New data, same shapes: replayed, not re-recorded.
    X2, y2 = X[::-1].copy(), y[::-1].copy()
    minimize(vg, np.zeros(3), args=(X2, y2), jac=True, method="BFGS")
    assert counted.calls == 1


def test_least_squares_curve_fit_with_jacobian():
    def residuals(p, t, y):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    t = np.linspace(0.0, 4.0, 50)
    truth = np.array([2.5, 1.3, 0.5])
    y = residuals(truth, t, np.zeros_like(t)) + 1e-3 * np.random.default_rng(2).normal(size=t.size)
    jac = jitad.jacobian(residuals)
    J = jac(np.array([1.0, 1.0, 0.0]), t, y)
    assert J.shape == (50, 3)  # m = 50 > n = 3
    p = np.array([1.0, 1.0, 0.0])
    expected = np.stack([np.exp(-p[1] * t), -p[0] * t * np.exp(-p[1] * t), np.ones_like(t)], axis=1)
    np.testing.assert_allclose(J, expected, rtol=1e-14)
    result = least_squares(residuals, np.array([1.0, 1.0, 0.0]), jac=jac, args=(t, y))
    assert result.success, result.message
    np.testing.assert_allclose(result.x, truth, atol=5e-3)
    # Same answer as with SciPy's finite-difference Jacobian.
    reference = least_squares(residuals, np.array([1.0, 1.0, 0.0]), args=(t, y))
    np.testing.assert_allclose(result.x, reference.x, rtol=1e-6)


def test_grad_matches_rosen_der_along_an_optimization_path():
    path = []
    minimize(rosen, np.full(6, 0.5), jac=rosen_der, method="BFGS", callback=lambda xk: path.append(xk.copy()))
    g = jitad.grad(rosen)
    for xk in path:
        np.testing.assert_allclose(g(xk), rosen_der(xk), rtol=1e-12, atol=1e-12)
