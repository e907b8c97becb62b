"""JAX's signatures and semantics: ``argnums``, ``has_aux``, scalar and 0-d inputs, constant
functions, ``jvp``/``vjp`` and ``F.jacobian_batch``, against PyTorch float64 (``torch.func``)
and analytic derivatives."""

import math
import pickle

import numpy as np
import pytest

import jitad

torch = pytest.importorskip("torch")


def T(x):
    return torch.tensor(np.asarray(x, dtype=np.float64))


def f_xy(x, y, data):
    # x: (3,), y: (2, 2), data a parameter
    return np.sum(x * x) * y[0, 1] + np.exp(y[1, 0]) * x[2] + data * y[0, 0] ** 3 + y[1, 1] * x[0]


def f_xy_torch(x, y, data):
    return torch.sum(x * x) * y[0, 1] + torch.exp(y[1, 0]) * x[2] + data * y[0, 0] ** 3 + y[1, 1] * x[0]


X = np.array([0.3, -1.2, 0.8])
Y = np.array([[0.5, 1.5], [-0.25, 2.0]])


def test_grad_argnums_tuple_and_parameters_against_torch():
    g = jitad.grad(f_xy, argnums=(0, 1))
    gx, gy = g(X, Y, 2.0)
    tx, ty = torch.func.grad(f_xy_torch, argnums=(0, 1))(T(X), T(Y), 2.0)
    np.testing.assert_allclose(gx, tx.numpy(), rtol=1e-15)
    np.testing.assert_allclose(gy, ty.numpy(), rtol=1e-15)
    assert gy.shape == (2, 2)
    # a parameter changes without re-recording: the derivative follows
    gx, gy = g(X, Y, 5.0)
    np.testing.assert_allclose(gy, torch.func.grad(f_xy_torch, argnums=1)(T(X), T(Y), 5.0).numpy(), rtol=1e-15)
    # argnums=1 alone: the other array is a parameter
    np.testing.assert_allclose(jitad.grad(f_xy, argnums=1)(X, Y, 2.0), ty.numpy(), rtol=1e-15)
    np.testing.assert_allclose(jitad.grad(f_xy, argnums=-2)(X, Y, 2.0), ty.numpy(), rtol=1e-15)


def test_value_and_grad_hessian_jacobian_with_tuple_argnums_against_torch():
    value, (gx, gy) = jitad.value_and_grad(f_xy, argnums=(0, 1))(X, Y, 2.0)
    assert value == pytest.approx(f_xy_torch(T(X), T(Y), 2.0).item(), rel=1e-15)
    H = jitad.hessian(f_xy, argnums=(0, 1))(X, Y, 2.0)
    TH = torch.func.hessian(f_xy_torch, argnums=(0, 1))(T(X), T(Y), 2.0)
    for i in range(2):
        for j in range(2):
            assert H[i][j].shape == TH[i][j].shape
            np.testing.assert_allclose(H[i][j], TH[i][j].numpy(), rtol=1e-14, atol=1e-15)

    def vec(x, y):
        return [x[0] * y, jitad.sin(x[1]) * y**2, x[0] + x[1]]

    jx, jy = jitad.jacobian(vec, argnums=(0, 1))(np.array([0.4, 1.1]), 0.7)
    tx, ty = torch.func.jacrev(lambda x, y: torch.stack([x[0] * y, torch.sin(x[1]) * y**2, x[0] + x[1]]), (0, 1))(
        T([0.4, 1.1]), T(0.7)
    )
    assert jx.shape == (3, 2) and jy.shape == (3,)
    np.testing.assert_allclose(jx, tx.numpy(), rtol=1e-15)
    np.testing.assert_allclose(jy, ty.numpy(), rtol=1e-15)


def test_scalar_and_zero_d_inputs_give_scalars():
    assert jitad.grad(lambda x: x**3)(2.0) == 12.0
    assert isinstance(jitad.grad(lambda x: x**3)(2.0), float)
    assert jitad.grad(lambda x: x**3)(np.float32(2.0)) == 12.0
    assert jitad.grad(lambda x: x**3)(np.array(2.0)) == 12.0
    assert jitad.value_and_grad(lambda x: jitad.sin(x))(0.5) == (math.sin(0.5), math.cos(0.5))
    assert jitad.hessian(lambda x: x**3)(2.0) == 12.0
    assert jitad.hvp(lambda x: x**3)(2.0, 3.0) == 36.0
    assert jitad.grad(lambda x, y: x * y, argnums=(0, 1))(3.0, 2.0) == (2.0, 3.0)
    np.testing.assert_array_equal(jitad.jacobian(lambda x: [x, x**2])(3.0), [1.0, 6.0])


def test_list_and_tuple_inputs_are_arrays():
    np.testing.assert_array_equal(jitad.grad(lambda x: x[0] * x[1])([2.0, 3.0]), [3.0, 2.0])
    np.testing.assert_array_equal(jitad.grad(lambda x: x[0] * x[1])((2, 3)), [3.0, 2.0])


def test_constant_functions_give_zeros():
    np.testing.assert_array_equal(jitad.grad(lambda x: 3.0)(np.array([1.0, 2.0])), [0.0, 0.0])
    assert jitad.value_and_grad(lambda x: 3)(np.array([1.0, 2.0]))[0] == 3.0
    np.testing.assert_array_equal(jitad.hessian(lambda x: 1.0)(np.ones(2)), np.zeros((2, 2)))
    np.testing.assert_array_equal(jitad.jacobian(lambda x: [x[0], 2.0])(np.ones(2)), [[1.0, 0.0], [0.0, 0.0]])
    assert jitad.grad(lambda x, y: y, argnums=0)(1.0, 2.0) == 0.0


def test_has_aux_returns_replayed_floats():
    calls = []

    def f(x, scale):
        calls.append(1)
        loss = scale * (x[0] ** 2 + x[1])
        return loss, {"loss": loss, "parts": [x[0] ** 2, "label"], "array": x * 2, "const": 7}

    g = jitad.grad(f, has_aux=True)
    for x, scale in (([1.0, 2.0], 1.0), ([3.0, -1.0], 2.0)):
        grad, aux = g(np.array(x), scale)
        np.testing.assert_array_equal(grad, [scale * 2 * x[0], scale])
        assert aux["loss"] == scale * (x[0] ** 2 + x[1]) and isinstance(aux["loss"], float)
        assert aux["parts"] == [x[0] ** 2, "label"]
        np.testing.assert_array_equal(aux["array"], np.array(x) * 2)
        assert aux["array"].dtype == np.float64
        assert aux["const"] == 7
    assert len(calls) == 1  # replayed, aux included
    (value, aux), grad = jitad.value_and_grad(f, has_aux=True)(np.array([1.0, 2.0]), 3.0)
    assert value == 9.0 and aux["loss"] == 9.0
    H, aux = jitad.hessian(f, has_aux=True)(np.array([1.0, 2.0]), 3.0)
    np.testing.assert_array_equal(H, [[6.0, 0.0], [0.0, 0.0]])
    J, aux = jitad.jacobian(lambda x: ([x[0] * x[1], x[1]], x[0]), has_aux=True)(np.array([2.0, 5.0]))
    np.testing.assert_array_equal(J, [[5.0, 2.0], [0.0, 1.0]])
    assert aux == 2.0
    with pytest.raises(TypeError, match="pair"):
        jitad.grad(lambda x: x[0], has_aux=True)(np.ones(2))


def test_grad_of_a_non_scalar_output_is_refused():
    with pytest.raises(ValueError, match="one Value"):
        jitad.grad(lambda x: [x[0], x[1]])(np.ones(2))


def test_jvp_against_torch():
    def f(x, y):
        return [x[0] * jitad.sin(y), x[1] ** 2 * y, jitad.exp(x[0] - x[1])]

    def ft(x, y):
        return torch.stack([x[0] * torch.sin(y), x[1] ** 2 * y, torch.exp(x[0] - x[1])])

    primals = (np.array([0.5, -0.7]), 1.3)
    tangents = (np.array([1.0, 2.0]), -0.5)
    out, tangent = jitad.jvp(f, primals, tangents)
    tout, ttan = torch.func.jvp(ft, (T(primals[0]), T(primals[1])), (T(tangents[0]), T(tangents[1])))
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-15)
    np.testing.assert_allclose(tangent, ttan.numpy(), rtol=1e-15)
    assert jitad.jvp(lambda x: x**3, (2.0,), (1.0,)) == (8.0, 12.0)
    with pytest.raises(ValueError, match="shape"):
        jitad.jvp(f, primals, (np.ones(3), 1.0))


def test_vjp_against_torch():
    def f(x, y):
        return [x[0] * jitad.sin(y), x[1] ** 2 * y, jitad.exp(x[0] - x[1])]

    def ft(x, y):
        return torch.stack([x[0] * torch.sin(y), x[1] ** 2 * y, torch.exp(x[0] - x[1])])

    primals = (np.array([0.5, -0.7]), 1.3)
    u = np.array([0.3, -2.0, 1.5])
    out, pullback = jitad.vjp(f, *primals)
    tout, tpull = torch.func.vjp(ft, T(primals[0]), T(primals[1]))
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-15)
    gx, gy = pullback(u)
    tx, ty = tpull(T(u))
    np.testing.assert_allclose(gx, tx.numpy(), rtol=1e-15)
    assert gy == pytest.approx(ty.item(), rel=1e-15)
    out, pullback = jitad.vjp(lambda x: x**3, 2.0)
    assert out == 8.0 and pullback(1.0) == (12.0,)
    with pytest.raises(ValueError, match="cotangent"):
        pullback(np.ones(2))


def test_jacobian_batch_against_jacobian_and_torch():
    def f(x, w):
        return [x[0] * x[1] * w, jitad.sin(x[1]), x[0] ** 3]

    X = np.random.default_rng(0).normal(size=(5, 2))
    F = jitad.trace(f, X[0], 1.5)
    J = F.jacobian_batch(X, 1.5)
    assert J.shape == (5, 3, 2)
    want = torch.func.vmap(torch.func.jacrev(lambda x: torch.stack([x[0] * x[1] * 1.5, torch.sin(x[1]), x[0] ** 3])))(
        T(X)
    )
    np.testing.assert_allclose(J, want.numpy(), rtol=1e-15)
    w = np.arange(5.0)
    J = F.jacobian_batch(X, w)  # a parameter per point
    for k in range(5):
        np.testing.assert_allclose(J[k], F.jacobian(X[k], w[k]), rtol=0)
    G = jitad.trace(lambda x: x[0] * x[1], X[0]).jacobian_batch(X)
    np.testing.assert_allclose(G, X[:, ::-1], rtol=0)


def test_static_arguments_are_passed_as_they_are():
    def f(x, mode):
        return jitad.sin(x) if mode == "sin" else jitad.cos(x)

    g = jitad.grad(f)
    assert g(0.5, "sin") == math.cos(0.5)
    assert g(0.5, "cos") == -math.sin(0.5)


def test_transforms_pickle_with_their_options():
    g = pickle.loads(pickle.dumps(jitad.grad(math_function, argnums=(0, 1), has_aux=True)))
    (gx, gy), aux = g(2.0, 3.0)
    assert (gx, gy, aux) == (3.0, 2.0, 6.0)


def math_function(x, y):
    return x * y, x * y
