"""Gradients of gradients: ``gradients(y, wrt, create_graph=True)`` records the reverse sweep,
so derivatives are Values that can be differentiated again, eagerly and inside ``trace``
(replayed at new points). References: the tape's exact Hessian (forward-over-reverse),
finite differences, analytic formulas, PyTorch float64."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from programs import SMOOTH_SPECS, assert_close, central_difference, points, programs, property_settings, well_conditioned

import jitad
from jitad import Value

PROPERTY = property_settings(40)


@PROPERTY
@given(st.data())
def test_second_derivatives_equal_the_exact_hessian_on_random_programs(data):
    prog = data.draw(programs(specs=SMOOTH_SPECS))
    x = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, x) is not None)
    H = jitad.trace(prog, x).hessian(x)
    with jitad.Tape():
        xs = np.array([Value(float(t)) for t in x], dtype=object)
        g = jitad.gradients(prog(xs), xs, create_graph=True)
        assert_close([v.data for v in g], jitad.trace(prog, x).grad(x), rtol=1e-12, what="first derivatives")
        rows = [jitad.gradients(gi, xs) for gi in g]
    assert_close(np.array(rows), H, rtol=1e-9, atol=1e-12, what="gradients of gradients vs the tape's Hessian")


SPECIAL = (0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0)


def _op_cases():
    from jitad import ops

    for op in ops.OPS:
        if op.formula is None or op.flat or op.name in ("guard", "where_true", "where_false"):  # linear
            continue
        if op.name == "powc":
            yield from ((op, x, c) for x in SPECIAL for c in (0.0, 1.0, 2.0, 3.0, 0.5, -1.0))
        elif op.arity == 1:
            yield from ((op, x, 0.0) for x in SPECIAL)
        else:
            yield from ((op, x, y) for x in SPECIAL for y in SPECIAL)


def _on_values(op, X, Y, y):
    if op.name == "powc":
        return X**y
    if op.name == "neg":
        return -X
    if op.arity == 1:
        return getattr(jitad, op.name)(X)
    infix = {"add": X + Y, "sub": X - Y, "mul": X * Y, "div": X / Y, "pow": X**Y}
    return infix[op.name] if op.name in infix else getattr(jitad, op.name)(X, Y)


def test_every_ops_recorded_first_partials_differentiate_to_its_second_partials():
    # gradients(create_graph=True) differentiates the formulas' first-partial expressions;
    # the tape's Hessian uses their second-partial outputs: branches (ties, zero exponents)
    # must keep the two equal. Ties of logaddexp and pow's y = 0 once gave 0 here.
    # pow at x = 0 is singular (x^(y-1) (1 + y log x)): no Hessian to agree on.
    wrong = []
    for op, x, y in _op_cases():
        if op.name == "pow" and x == 0.0:
            continue
        try:
            exact = np.array(op.formula(x, y)[3:])
        except (ArithmeticError, ValueError):  # outside the domain: nothing to compare
            continue
        if not np.all(np.isfinite(exact)):
            continue
        with jitad.Tape():
            X, Y = Value(x), Value(y)
            wrt = [X] if op.arity == 1 or op.name == "powc" else [X, Y]
            with np.errstate(all="ignore"):
                g = jitad.gradients(_on_values(op, X, Y, y), wrt, create_graph=True)
                H = np.array([jitad.gradients(gi, wrt) for gi in g])
        want = np.array([[exact[0]]]) if len(wrt) == 1 else np.array([[exact[0], exact[1]], [exact[1], exact[2]]])
        if not np.allclose(H, want, rtol=1e-12, atol=1e-12):
            wrong.append((op.name, x, y, H.tolist(), want.tolist()))
    assert not wrong, wrong


@PROPERTY
@given(st.data())
def test_traced_gradients_replay_at_new_points(data):
    prog = data.draw(programs(specs=SMOOTH_SPECS))
    x0 = data.draw(points(prog.n_inputs))
    x1 = data.draw(points(prog.n_inputs))
    assume(well_conditioned(prog, x0) is not None and well_conditioned(prog, x1) is not None)

    def gradient(x):
        return list(jitad.gradients(prog(x), x, create_graph=True))

    G = jitad.trace(gradient, x0)  # the recorded sweep, replayed: no frozen numbers
    F = jitad.trace(prog, x1)
    assert_close(G(x1), F.grad(x1), rtol=1e-11, what="replayed gradient")
    assert_close(G.jacobian(x1), F.hessian(x1), rtol=1e-9, atol=1e-12, what="Jacobian of the replayed gradient")


def test_the_issue_example_replays_instead_of_freezing():
    def f(w):
        x = Value(3.0)
        return jitad.gradients((x * w[0]) ** 2, [x], create_graph=True)[0] * w[0]

    F = jitad.trace(f, np.array([2.0]))
    assert F(np.array([5.0])) == 2 * 3.0 * 25 * 5  # d/dx (x w)^2 = 2 x w^2, times w
    assert F.grad(np.array([5.0]))[0] == 2 * 3.0 * 3 * 25


def test_without_create_graph_inside_trace_raises():
    def f(w):
        x = Value(3.0)
        return jitad.gradients((x * w[0]) ** 2, [x])[0] * w[0]

    with pytest.raises(RuntimeError, match="create_graph=True"):
        jitad.trace(f, np.array([2.0]))


def test_third_and_fourth_order_against_analytic(tape):
    x = Value(0.7)
    y = jitad.sin(x) * jitad.exp(x)  # y^(n) = 2^(n/2) e^x sin(x + n pi / 4)
    d = y
    for n in range(1, 5):
        d = jitad.gradients(d, [x], create_graph=True)[0]
        want = 2 ** (n / 2) * math.exp(0.7) * math.sin(0.7 + n * math.pi / 4)
        assert d.data == pytest.approx(want, rel=1e-13)


def test_gradients_with_respect_to_intermediates_and_unreached_values(tape):
    x, w = Value(1.5), Value(-0.5)
    h = x * x
    y = jitad.tanh(h) * w
    unrelated = Value(2.0)
    g = jitad.gradients(y, [h, x, unrelated], create_graph=True)
    assert all(isinstance(v, Value) for v in g)
    np.testing.assert_allclose([v.data for v in g], jitad.gradients(y, [h, x, unrelated]), rtol=1e-15)
    assert jitad.gradients(g[1], [w])[0] == pytest.approx(2 * 1.5 * (1 - math.tanh(2.25) ** 2))  # d2y/dx dw


@pytest.mark.parametrize("name", ["relu", "abs", "maximum", "where"])
def test_piecewise_ops_take_the_branch_of_the_point(tape, name):
    x, z = Value(0.8), Value(-0.3)
    exprs = {
        "relu": lambda: jitad.relu(x * z + 1.0) ** 2,
        "abs": lambda: abs(x - z) ** 3,
        "maximum": lambda: jitad.maximum(x * x, z) * x,
        "where": lambda: jitad.where(jitad.greater(x, z), x**3, z**3),
    }
    y = exprs[name]()
    g = jitad.gradients(y, [x, z], create_graph=True)
    H = np.array([jitad.gradients(gi, [x, z]) for gi in g])

    def grad_at(p):
        with jitad.Tape():
            x2, z2 = Value(p[0]), Value(p[1])
            nonlocal x, z
            x, z = x2, z2
            return jitad.gradients(exprs[name](), [x2, z2])

    ref = central_difference(grad_at, np.array([0.8, -0.3]))
    np.testing.assert_allclose(H, ref, rtol=1e-6, atol=1e-8)


def test_against_torch_double_backward():
    torch = pytest.importorskip("torch")
    with jitad.Tape():
        x, w = Value(0.4), Value(1.7)
        y = jitad.log1p(x * x) * jitad.sigmoid(w * x) + jitad.atan2(w, x) ** 2
        gx, gw = jitad.gradients(y, [x, w], create_graph=True)
        ours = [jitad.gradients(gx, [x, w]), jitad.gradients(gw, [x, w])]
    tx = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    ty = torch.log1p(tx * tx) * torch.sigmoid(tw * tx) + torch.atan2(tw, tx) ** 2
    tgx, tgw = torch.autograd.grad(ty, [tx, tw], create_graph=True)
    theirs = [torch.autograd.grad(tgx, [tx, tw], retain_graph=True), torch.autograd.grad(tgw, [tx, tw])]
    np.testing.assert_allclose(ours, [[float(v) for v in row] for row in theirs], rtol=1e-12)


def test_grad_of_grad_of_transforms():
    f = lambda x: jitad.sin(x) * x**3  # noqa: E731
    d2 = jitad.grad(jitad.grad(f))
    d3 = jitad.grad(d2)
    for x in (0.5, 1.7, -2.2):
        second = -math.sin(x) * x**3 + 6 * x**2 * math.cos(x) + 6 * x * math.sin(x)
        third = -math.cos(x) * x**3 - 9 * x**2 * math.sin(x) + 18 * x * math.cos(x) + 6 * math.sin(x)
        assert d2(x) == pytest.approx(second, rel=1e-13)
        assert d3(x) == pytest.approx(third, rel=1e-12)


def test_jacobian_of_grad_is_the_hessian_and_argnums_nest():
    def g(x, w):
        return jitad.exp(x[0] * w) * x[1] ** 2 + jitad.log1p(x[0] ** 2) * w

    x = np.array([0.3, 1.2])
    H = jitad.jacobian(jitad.grad(g))(x, 0.7)
    np.testing.assert_allclose(H, jitad.hessian(g)(x, 0.7), rtol=1e-13)
    # d/dw of the gradient in x: a mixed second derivative through argnums.
    mixed = jitad.jacobian(lambda w, x: jitad.grad(g)(x, w[0]))(np.array([0.7]), x)
    fd = central_difference(lambda w: jitad.grad(g)(x, w[0]), np.array([0.7]))
    np.testing.assert_allclose(mixed, fd, rtol=1e-8)
    value, grads = jitad.value_and_grad(lambda x: jitad.value_and_grad(g)(x, 0.7)[0] * 2.0)(x)
    np.testing.assert_allclose(grads, 2.0 * jitad.grad(g)(x, 0.7), rtol=1e-14)
