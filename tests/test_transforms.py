"""JAX-style transforms: ``grad``, ``value_and_grad``, ``jacobian``, ``hessian``, ``hvp``
trace lazily, keep one TapeFunction per input length and parameter shapes, and re-record
when a branch changes."""

import math
import threading

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from programs import assert_close, points, programs, property_settings, well_conditioned

import jitad


class Counted:
    def __init__(self, f):
        self.f = f
        self.calls = 0
        self.__name__ = f.__name__

    def __call__(self, *args):
        self.calls += 1
        return self.f(*args)


def f2(x):
    return x[0] ** 2 * x[1] + jitad.exp(x[1])


def f2_grad(x):
    return np.array([2 * x[0] * x[1], x[0] ** 2 + math.exp(x[1])])


def f2_hessian(x):
    return np.array([[2 * x[1], 2 * x[0]], [2 * x[0], math.exp(x[1])]])


def test_each_transform_gives_its_derivative():
    x = np.array([0.7, -0.3])
    v = np.array([1.5, 2.0])
    assert jitad.value_and_grad(f2)(x)[0] == pytest.approx(0.7**2 * -0.3 + math.exp(-0.3), rel=1e-15)
    np.testing.assert_allclose(jitad.value_and_grad(f2)(x)[1], f2_grad(x), rtol=1e-15)
    np.testing.assert_allclose(jitad.grad(f2)(x), f2_grad(x), rtol=1e-15)
    np.testing.assert_allclose(jitad.hessian(f2)(x), f2_hessian(x), rtol=1e-15)
    np.testing.assert_allclose(jitad.hvp(f2)(x, v), f2_hessian(x) @ v, rtol=1e-15)
    np.testing.assert_allclose(jitad.jacobian(f2)(x), f2_grad(x), rtol=1e-15)


def test_jacobian_transform_both_shapes():
    def wide(x):  # m = 2 < n = 3
        return [x[0] * x[1], x[1] + jitad.sin(x[2])]

    def tall(x):  # m = 3 > n = 2
        return np.array([x[0] * x[1], x[0] ** 2, jitad.cos(x[1])], dtype=object)

    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(jitad.jacobian(wide)(x), [[x[1], x[0], 0.0], [0.0, 1.0, math.cos(x[2])]], rtol=1e-15)
    x = np.array([0.5, -1.0])
    np.testing.assert_allclose(
        jitad.jacobian(tall)(x), [[x[1], x[0]], [2 * x[0], 0.0], [0.0, -math.sin(x[1])]], rtol=1e-15
    )


@property_settings(40)
@given(st.data())
def test_transforms_agree_with_the_tape_function(data):
    prog = data.draw(programs())
    x = data.draw(points(prog.n_inputs))
    y = data.draw(points(prog.n_inputs))
    v = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, x, margin=0, bound=1e6) is not None)
    assume(well_conditioned(prog, y, margin=0, bound=1e6) is not None)
    F = jitad.trace(prog, x)
    g, vg, h, hv = jitad.grad(prog), jitad.value_and_grad(prog), jitad.hessian(prog), jitad.hvp(prog)
    for point in (x, y, x):
        assert_close(g(point), F.grad(point), rtol=1e-13)
        value, grad = vg(point)
        assert_close(value, F(point), rtol=1e-13)
        assert_close(grad, F.grad(point), rtol=1e-13)
        assert_close(h(point), F.hessian(point), rtol=1e-13)
        assert_close(hv(point, v), F.hvp(point, v), rtol=1e-13)


def test_traced_once_per_input_length_and_parameter_shapes():
    def f(x, w):
        return sum(x[i] * w[i % len(w)] for i in range(len(x)))

    counted = Counted(f)
    g = jitad.grad(counted)
    np.testing.assert_array_equal(g(np.ones(3), np.array([1.0, 2.0])), [1.0, 2.0, 1.0])
    np.testing.assert_array_equal(g(np.full(3, 5.0), np.array([3.0, 4.0])), [3.0, 4.0, 3.0])
    np.testing.assert_array_equal(g([1.0, 2.0, 3.0], [5.0, 6.0]), [5.0, 6.0, 5.0])
    assert counted.calls == 1
    np.testing.assert_array_equal(g(np.ones(4), np.array([1.0, 2.0])), [1.0, 2.0, 1.0, 2.0])
    assert counted.calls == 2
    np.testing.assert_array_equal(g(np.ones(3), np.array([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0])
    assert counted.calls == 3
    np.testing.assert_array_equal(g(np.ones(3), np.array([7.0, 8.0])), [7.0, 8.0, 7.0])
    np.testing.assert_array_equal(g(np.ones(4), np.array([7.0, 8.0])), [7.0, 8.0, 7.0, 8.0])
    assert counted.calls == 3


def test_scalar_parameter_through_transforms():
    def f(x, a):
        return a * x[0] ** 2

    counted = Counted(f)
    h = jitad.hvp(counted)
    assert h(np.array([1.0]), np.array([1.0]), 3.0)[0] == 6.0
    assert h(np.array([1.0]), np.array([2.0]), 0.5)[0] == 2.0
    assert h(np.array([1.0]), np.array([2.0]), np.float32(2.0))[0] == 8.0
    assert counted.calls == 1


def test_transforms_re_record_on_branch_changes():
    def f(x):
        if x[0] < x[1]:
            return x[0] * x[1]
        return x[0] - 2.0 * x[1]

    counted = Counted(f)
    g = jitad.grad(counted)
    h = jitad.hessian(counted)
    for _ in range(3):
        np.testing.assert_array_equal(g(np.array([1.0, 2.0])), [2.0, 1.0])
        np.testing.assert_array_equal(g(np.array([2.0, 1.0])), [1.0, -2.0])
    assert counted.calls == 2  # one recording per branch, whichever comes first
    np.testing.assert_array_equal(h(np.array([1.0, 2.0])), [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(h(np.array([2.0, 1.0])), np.zeros((2, 2)))
    assert counted.calls == 4  # hessian(f) is a transform of its own, with its own tapes


def test_transforms_retrace_raise():
    def f(x):
        return x[0] if x[0] > 0 else -x[0]

    g = jitad.grad(f, retrace="raise")
    assert g(np.array([2.0]))[0] == 1.0
    with pytest.raises(jitad.BranchChanged, match="test_transforms.py"):
        g(np.array([-2.0]))
    assert g(np.array([3.0]))[0] == 1.0
    h = jitad.hvp(f, retrace="raise")
    assert h(np.array([2.0]), np.array([1.0]))[0] == 0.0
    with pytest.raises(jitad.BranchChanged):
        h(np.array([-2.0]), np.array([1.0]))


def test_transform_metadata():
    g = jitad.grad(f2)
    assert g.__wrapped__ is f2
    assert "f2" in g.__name__ and "grad" in g.__name__
    assert "grad" in repr(g)
    assert jitad.hvp(f2).__wrapped__ is f2


def test_scalar_transforms_refuse_vector_functions():
    def f(x):
        return [x[0], x[0] * x[1]]

    for transform in (jitad.grad, jitad.value_and_grad, jitad.hessian):
        with pytest.raises(ValueError, match="jacobian|one Value"):
            transform(f)(np.ones(2))
    with pytest.raises(ValueError, match="jacobian|one Value"):
        jitad.hvp(f)(np.ones(2), np.ones(2))


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.ones((2, 2)), ValueError),
        (np.array(["a", "b"]), TypeError),
        ([1 + 1j, 2.0], TypeError),
        (5.0, TypeError),  # a scalar x is valid (JAX semantics); f2 cannot index it
    ],
    ids=["2-D", "strings", "complex", "scalar"],
)
def test_transforms_refuse_bad_x_and_keep_working(bad, error):
    g = jitad.grad(f2)
    np.testing.assert_allclose(g(np.array([1.0, 2.0])), f2_grad([1.0, 2.0]))
    with pytest.raises(error):
        g(bad)
    np.testing.assert_allclose(g(np.array([0.5, 0.1])), f2_grad([0.5, 0.1]))
    with pytest.raises(error):
        jitad.grad(f2)(bad)  # also on a fresh transform (traced at bad)


def test_wrong_length_after_first_use_traces_a_new_length():
    def f(x):
        return sum(x[i] ** 2 for i in range(len(x)))

    g = jitad.grad(f)
    np.testing.assert_array_equal(g(np.ones(2)), [2.0, 2.0])
    np.testing.assert_array_equal(g(np.ones(5)), [2.0] * 5)
    np.testing.assert_array_equal(g(np.ones(2) * 3), [6.0, 6.0])


def test_transforms_from_threads_at_once():
    def f(x):
        if x[0] > 0:
            return jitad.sin(x[0]) * x[1] ** 2
        return x[0] ** 3 + x[1]

    def grad(x):
        if x[0] > 0:
            return np.array([math.cos(x[0]) * x[1] ** 2, 2 * math.sin(x[0]) * x[1]])
        return np.array([3 * x[0] ** 2, 1.0])

    g = jitad.grad(f)  # fresh: the first calls race to trace it
    vg = jitad.value_and_grad(f)
    barrier = threading.Barrier(4)
    errors = []

    def work(k):
        rng = np.random.default_rng(k)
        try:
            barrier.wait()
            for _ in range(100):
                x = rng.uniform(-2, 2, 2)
                np.testing.assert_allclose(g(x), grad(x), rtol=1e-14)
                np.testing.assert_allclose(vg(x)[1], grad(x), rtol=1e-14)
        except Exception as e:  # noqa: BLE001 - reported in the main thread
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
