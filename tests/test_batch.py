"""Batched evaluation equals per-point evaluation: values, gradients, vector outputs,
shared and per-point parameters, and points whose branches differ from the tape's."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import rosen, rosen_der

import jitad
from tests.programs import points, programs, property_settings


def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


@pytest.mark.parametrize("block", [None, 1, 3, 8, 64])
def test_rosenbrock_batch_matches_scipy(block):
    X = np.random.default_rng(0).normal(size=(37, 12))
    F = jitad.trace(rosenbrock, np.zeros(12))
    values, grads = F.value_and_grad_batch(X, block=block)
    np.testing.assert_allclose(values, [rosen(x) for x in X], rtol=1e-14)
    np.testing.assert_allclose(grads, [rosen_der(x) for x in X], rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(F.grad_batch(X, block=block), grads)
    np.testing.assert_array_equal(F.batch(X, block=block), values)


@property_settings(40)
@given(data=st.data())
def test_random_programs_batch_equals_per_point(data):
    prog = data.draw(programs(n_outputs=lambda n: st.integers(1, 3)))
    K = data.draw(st.integers(1, 9))
    X = np.array([data.draw(points(prog.n_inputs)) for _ in range(K)])
    F = jitad.trace(prog, X[0])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(F.batch(X), np.array([F(x) for x in X]))


@property_settings(40)
@given(data=st.data())
def test_random_scalar_programs_grad_batch_equals_per_point(data):
    prog = data.draw(programs())
    K = data.draw(st.integers(1, 9))
    X = np.array([data.draw(points(prog.n_inputs)) for _ in range(K)])
    F = jitad.trace(prog, X[0])
    with np.errstate(all="ignore"):
        values, grads = F.value_and_grad_batch(X)
        for k, x in enumerate(X):
            v, g = F.value_and_grad(x)
            np.testing.assert_array_equal(values[k], v)
            np.testing.assert_array_equal(grads[k], g)


def piecewise(x):
    if x[0] > 0:
        return x[0] ** 2 * x[1]
    if x[1] > 1:
        return jitad.sin(x[0]) + x[1]
    return -3 * x[0] * x[1]


def test_points_on_other_branches_are_evaluated_with_their_own_tape():
    X = np.random.default_rng(1).normal(size=(50, 2)) * 2
    F = jitad.trace(piecewise, np.array([1.0, 1.0]))
    values, grads = F.value_and_grad_batch(X)
    G = jitad.trace(piecewise, np.array([1.0, 1.0]))
    for k, x in enumerate(X):
        v, g = G.value_and_grad(x)
        assert values[k] == v
        np.testing.assert_array_equal(grads[k], g)
    # one re-recording per new branch, not per point
    assert F.retraces == 2


def test_branch_change_in_a_batch_raises_when_asked():
    F = jitad.trace(piecewise, np.array([1.0, 1.0]), retrace="raise")
    X = np.array([[1.0, 2.0], [-1.0, 2.0]])
    with pytest.raises(jitad.BranchChanged, match="test_batch.py"):
        F.grad_batch(X)
    np.testing.assert_array_equal(F.grad_batch(X[:1]), [[4.0, 1.0]])


def weighted(x, w, b):
    return sum(w[i] * x[i] ** 2 for i in range(len(x))) + b


def test_shared_and_per_point_parameters():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 3))
    w = rng.normal(size=3)
    W = rng.normal(size=(6, 3))
    B = rng.normal(size=6)
    F = jitad.trace(weighted, np.zeros(3), w, 0.5)
    np.testing.assert_allclose(F.grad_batch(X, w, 0.5), 2 * w * X)
    values, grads = F.value_and_grad_batch(X, W, B)
    np.testing.assert_allclose(values, (W * X**2).sum(axis=1) + B)
    np.testing.assert_allclose(grads, 2 * W * X)
    values, _ = F.value_and_grad_batch(X, w, B)  # one shared, one per point
    np.testing.assert_allclose(values, (w * X**2).sum(axis=1) + B)
    assert F.retraces == 0


@pytest.mark.parametrize(
    "X, error",
    [
        (np.zeros((4, 2)), ValueError),
        (np.zeros(3), ValueError),
        (np.zeros((2, 3, 1)), ValueError),
        (np.array([["a", "b", "c"]]), ValueError),
    ],
)
def test_bad_batches_are_refused(X, error):
    F = jitad.trace(rosenbrock, np.zeros(3))
    with pytest.raises(error):
        F.grad_batch(X)
    np.testing.assert_allclose(F.grad_batch(np.ones((2, 3))), 0.0)


def test_bad_parameter_shapes_in_a_batch_are_refused():
    F = jitad.trace(weighted, np.zeros(3), np.ones(3), 0.5)
    with pytest.raises(ValueError, match="parameter 0"):
        F.grad_batch(np.zeros((4, 3)), np.ones((5, 3)), 0.5)
    with pytest.raises(TypeError):
        F.grad_batch(np.zeros((4, 3)), np.ones(3))


def test_empty_batch():
    F = jitad.trace(rosenbrock, np.zeros(3))
    assert F.grad_batch(np.zeros((0, 3))).shape == (0, 3)
