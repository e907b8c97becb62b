"""An optimized tape (constant folding, CSE, dead-entry removal) replays to the same
values, gradients, Jacobians and Hessians as the tape it came from."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jitad
from jitad.optimize import optimize
from tests.programs import points, programs, property_settings


def _duplicated(prog):
    """The program twice over, summed: every node has a common subexpression."""

    def f(x):
        out = prog(x)
        again = prog(x)
        if isinstance(out, list):
            return [u + v for u, v in zip(out, again)]
        return out + again

    return f


@property_settings(60)
@given(data=st.data())
def test_optimized_replay_equals_original(data):
    prog = data.draw(programs(n_outputs=lambda n: st.integers(1, 3)))
    f = _duplicated(prog)
    x0 = data.draw(points(prog.n_inputs))
    x1 = data.draw(points(prog.n_inputs))
    F = jitad.trace(f, x0)
    G = jitad.trace(f, x0, optimize=True)
    assert len(G.tape) <= len(F.tape)
    for x in (x0, x1):
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(F(x), G(x))
            np.testing.assert_allclose(F.jacobian(x), G.jacobian(x), rtol=1e-13, atol=1e-300)


@property_settings(40)
@given(data=st.data())
def test_optimized_second_order_equals_original(data):
    prog = data.draw(programs())
    f = _duplicated(prog)
    x = data.draw(points(prog.n_inputs))
    F = jitad.trace(f, x)
    G = jitad.trace(f, x, optimize=True)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(F.hessian(x), G.hessian(x), rtol=1e-12, atol=1e-300)


def test_folds_shares_and_drops():
    def f(x, p):
        c = jitad.Value(2.0) * 3.0  # no input: folded to a constant
        unused = jitad.exp(x[0]) * 5  # noqa: F841 - the outputs do not depend on it
        s = jitad.sin(x[0] * x[1]) + jitad.sin(x[1] * x[0])  # one product, one sine
        return s * c + jitad.sin(x[0] * x[1]) * p

    x = np.array([0.5, 1.5])
    F = jitad.trace(f, x, 0.7)
    G = jitad.trace(f, x, 0.7, optimize=True)
    assert G.tape.names.count("sin") == 1
    assert "exp" not in G.tape.names
    # Of 7 products, 4 go: 2 * 3 becomes a constant, the unused one, and two repeats of x0 * x1.
    assert (F.tape.names.count("mul"), G.tape.names.count("mul")) == (7, 3)
    for p in (0.7, -2.0):
        assert F(x, p) == G(x, p)
        np.testing.assert_allclose(F.grad(x, p), G.grad(x, p), rtol=1e-15)


def test_guards_survive_and_retraces_are_optimized():
    def f(x):
        y = x[0] * x[0] + x[0] * x[0]
        return y if x[0] > 0 else -y

    G = jitad.trace(f, np.array([1.0]), optimize=True)
    assert "guard" in G.tape.names
    assert G.grad(np.array([2.0]))[0] == pytest.approx(8.0)
    assert G.grad(np.array([-2.0]))[0] == pytest.approx(8.0)
    assert G.retraces == 1
    assert all(p.names.count("mul") == 1 for p in G._programs.values())


def test_constant_guard_is_dropped():
    def f(x):
        if jitad.Value(1.0) < 2.0:  # constants only: can never change
            return x[0] * 2
        return x[0]

    G = jitad.trace(f, np.array([1.0]), optimize=True)
    assert "guard" not in G.tape.names
    assert G.grad(np.array([5.0]))[0] == 2.0


def test_optimize_keeps_unused_inputs_and_parameters():
    def f(x, p):
        return x[0] * 2

    F = jitad.trace(f, np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    P = optimize(F.tape)
    assert P.inputs.size == 2 and P.params.size == 2
    G = jitad.trace(f, np.array([1.0, 2.0]), np.array([3.0, 4.0]), optimize=True)
    np.testing.assert_array_equal(G.grad(np.array([3.0, 1.0]), np.array([0.0, 0.0])), [2.0, 0.0])
