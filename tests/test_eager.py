"""Eager mode in a real training loop: micrograd's nn.py and demo loop, unchanged, on the
default tape; the lifecycle (freed entries, settable leaves, stale values) and the
PyTorch/micrograd habits, each against a reference."""

import copy
import gc
import math
import pickle
import random

import numpy as np
import pytest

import jitad
from jitad import StaleValueError, Value
from jitad.demo import MLP, Reference, loss, moons


def float_loss(params, X, y, sizes):
    """The same loss with plain floats, from the parameters' values."""
    it = iter(params)
    layers = [[([next(it) for _ in range(nin)], next(it)) for _ in range(nout)] for nin, nout in zip(sizes, sizes[1:])]
    total = 0.0
    for xrow, yi in zip(X, y):
        x = list(xrow)
        for k, layer in enumerate(layers):
            acts = [sum((w * xi for w, xi in zip(ws, x)), b) for ws, b in layer]
            x = [max(a, 0.0) for a in acts] if k < len(layers) - 1 else acts
        total += max(1 + -yi * x[0], 0.0)
    return total * (1.0 / len(X)) + 1e-4 * sum(p * p for p in params)


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_micrograd_training_loop_runs_in_constant_space_on_the_default_tape():
    random.seed(1337)
    X, y = moons(30)
    model = MLP(2, [8, 8, 1])
    sizes = [2, 8, 8, 1]
    tape = jitad.tape.active()
    lengths, swept, rss, losses = [], [], [], []
    for k in range(220):
        total_loss, acc = loss(model, X, y)
        model.zero_grad()
        total_loss.backward()
        learning_rate = 1.0 - 0.9 * k / 220
        for p in model.parameters():
            p.data -= learning_rate * p.grad
        ref = float_loss([p.data for p in model.parameters()], X, y, sizes) if k % 20 == 0 else None
        losses.append((total_loss.data, ref))
        lengths.append(len(tape))
        swept.append(sum(len(c) for c in total_loss._t.reachable(total_loss._k)))
        if k % 10 == 0:
            gc.collect()
            rss.append(rss_bytes())
    # The loss is a real one: computed before the update, equal to the plain-float loss of
    # the parameters it was computed from (checked one step later, against the new ones).
    for (_, ref), (later, _) in zip(losses, losses[1:]):
        if ref is not None:
            assert later == pytest.approx(ref, rel=1e-12)
    assert losses[-1][0] < 0.5 * losses[0][0]
    # Flat: what the tape holds and what backward sweeps stop growing after warm-up.
    assert max(lengths[20:]) <= 1.1 * max(lengths[5:20])
    assert max(swept[20:]) <= 1.1 * max(swept[5:20])
    assert max(rss[5:]) - rss[5] < 32 * 2**20
    # The trained model still evaluates.
    score = model([Value(0.0), Value(1.0)])
    assert isinstance(score.data, float)


def test_gradients_equal_a_reference_engine_step_by_step():
    """Three steps of the loop against the seeds' dynamic-graph engine (micrograd's Value)."""
    random.seed(7)
    X, y = moons(12, seed=3)
    model = MLP(2, [4, 4, 1])
    random.seed(7)
    ref_model = MLP(2, [4, 4, 1], Value=Reference)
    for _ in range(3):
        total_loss, _ = loss(model, X, y)
        ref_loss, _ = loss(ref_model, X, y, Value=Reference)
        assert total_loss.data == pytest.approx(ref_loss.data, rel=1e-14)
        model.zero_grad()
        total_loss.backward()
        for p in ref_model.parameters():
            p.grad = 0
        ref_loss.backward()
        grads = [p.grad for p in model.parameters()]
        np.testing.assert_allclose(grads, [p.grad for p in ref_model.parameters()], rtol=1e-12, atol=1e-15)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            p.data -= 0.5 * p.grad
            q.data -= 0.5 * q.grad


# --- lifecycle ------------------------------------------------------------------------------


def test_unreachable_entries_are_freed_and_backward_sweeps_only_its_graph(tape):
    w = [Value(0.1 * k) for k in range(50)]
    for _ in range(30):
        y = sum(wi * wi for wi in w) * 2.0
        y.backward()
    assert len(tape) < 50 + 3 * 200
    assert sum(len(c) for c in tape._rec.reachable(y._k)) <= 50 + 120


def test_what_a_user_holds_keeps_working(tape):
    x = Value(1.5)
    kept = []
    for k in range(2000):  # many chunks come and go
        z = x * float(k)
        if k % 500 == 0:
            kept.append(z)
    total = sum(kept)
    np.testing.assert_array_equal(jitad.gradients(total, kept + [x]), [1.0] * len(kept) + [0 + 500 + 1000 + 1500])


def _warm_up_kernels():
    # A first compile keeps the frames that called it (and the chunks in them) alive.
    with jitad.Tape():
        w = Value(0.5)
        for k in range(1000):
            (w * Value(float(k))).backward()


def test_loop_that_creates_leaves_each_pass_is_freed(tape):
    _warm_up_kernels()
    w = Value(0.5)
    for k in range(3000):
        y = (w * Value(float(k)) + 1.0).tanh()
    # At most the chunk holding w (and what followed it), one closed chunk and the open one.
    assert len(tape) <= 3 * (jitad.tape.SPLIT + 4)


def test_settable_leaves(tape):
    p = Value(3.0)
    p.data = 2
    assert p.data == 2.0 and type(p.data) is float
    p.data -= 0.5 * 2.0
    assert p.data == 1.0
    y = p * p
    y.backward()
    assert p.grad == 2.0
    p.grad = None
    assert p.grad == 0.0
    with pytest.raises(AttributeError, match="computed"):
        y.data = 3.0
    with pytest.raises(TypeError):
        p.data = "1"


def test_backward_through_a_graph_older_than_a_leaf_update_raises(tape):
    p, q = Value(3.0), Value(4.0)
    old = p * q
    unrelated = q * 2.0
    p.data = 1.0
    with pytest.raises(StaleValueError, match="set afterwards"):
        old.backward()
    with pytest.raises(StaleValueError):
        jitad.gradients(old * 1.0, [q])  # recorded later, but from the old product
    unrelated.backward()  # does not depend on p
    assert q.grad == 2.0
    fresh = p * q
    fresh.backward()
    assert (p.grad, q.grad) == (4.0, 3.0)


def test_reset_makes_values_stale(tape):
    x = Value(2.0)
    y = x * x
    tape.reset()
    with pytest.raises(StaleValueError):
        y.backward()
    with pytest.raises(StaleValueError):
        x.grad
    with pytest.raises(StaleValueError):
        x.data = 3.0


# --- habits -----------------------------------------------------------------------------------


def test_item_format_round_int_and_constructors(tape):
    v = Value(2.5)
    assert v.item() == 2.5 and type(v.item()) is float
    assert format(Value(1 / 3), ".3f") == "0.333" and f"{Value(2.0):g}" == "2"
    assert format(v) == repr(v) == "Value(data=2.5, grad=0.0)"
    assert int(Value(3.7)) == 3 and int(Value(-3.7)) == -3
    assert Value(True).data == 1.0 and Value(np.array(2.0)).data == 2.0 and Value(np.bool_(False)).data == 0.0
    with pytest.raises(TypeError):
        Value(np.array([1.0, 2.0]))
    for x in (2.5, 3.5, -2.5, 0.49999999999999994, 1e300, -0.3):
        r = round(Value(x))
        assert isinstance(r, Value) and r.data == round(x)
    assert round(Value(2.675), 2).data == pytest.approx(2.68)


PIECEWISE = {
    "floor": (math.floor, lambda v: math.floor(v), np.floor),
    "ceil": (math.ceil, lambda v: math.ceil(v), np.ceil),
    "trunc": (math.trunc, lambda v: math.trunc(v), np.trunc),
    "rint": (round, lambda v: round(v), np.rint),
}


@pytest.mark.parametrize("name", PIECEWISE)
def test_piecewise_constant_ops_match_python_and_have_zero_derivative(tape, name):
    ref, on_value, ufunc = PIECEWISE[name]
    for x in (2.5, -2.5, 3.5, 0.0, -0.0, -0.5, 7.0, 1e17, -1e300, 0.49999999999999994):
        v = Value(x)
        for y in (on_value(v), ufunc(v), getattr(jitad, name)(v)):
            assert y.data == float(ref(x)) and math.copysign(1, y.data) == math.copysign(1, ufunc(x))
            assert jitad.gradients(y * 3.0, [v]) == 0.0
    assert math.isnan(getattr(jitad, name)(Value(math.nan)).data)
    assert getattr(jitad, name)(Value(math.inf)).data == math.inf


@pytest.mark.parametrize("x, y", [(7.5, 2.0), (-7.5, 2.0), (7.5, -2.0), (-7.5, -2.0), (1e16, 3.0), (0.1, 0.03), (-0.0, 2.0), (5.0, math.inf)])
def test_mod_and_floordiv_match_python(tape, x, y):
    a, b = Value(x), Value(y)
    for got, want in ((a % b, x % y), (a // b, x // y), (a % y, x % y), (x // b, x // y), (np.mod(a, b), x % y)):
        assert got.data == want and math.copysign(1, got.data) == math.copysign(1, want)
    g = jitad.gradients(a % b, [a, b])
    assert g[0] == 1.0 and g[1] == -(x // y)
    assert divmod(a, b)[0].data == x // y


def test_mod_by_zero_is_nan_like_numpy(tape):
    assert math.isnan((Value(1.0) % 0.0).data) and math.isnan((Value(1.0) // 0.0).data)


def test_piecewise_ops_replay_instead_of_freezing():
    def f(x):
        return np.floor(x[0]) * x[1] + x[0] % 3.0 + round(x[1]) + jitad.stop_gradient(x[0] * x[1])

    F = jitad.trace(f, np.array([5.5, 1.0]))
    for x in ([20.5, 1.0], [-3.25, 2.5], [7.0, -1.5]):
        with jitad.Tape():
            assert F(np.array(x)) == f(np.array([Value(v) for v in x], dtype=object)).data
        a, b = x
        np.testing.assert_array_equal(F.grad(np.array(x)), [1.0, math.floor(a)])


def test_stop_gradient_and_detach_are_recorded(tape):
    x = Value(3.0)
    for d in (jitad.stop_gradient(x * x), (x * x).detach()):
        y = d * x
        assert y.data == 27.0
        assert jitad.gradients(y, [x]) == 9.0  # d/dx of (x*x) does not flow
    assert jitad.stop_gradient(2.0) == 2.0


def test_backward_accepts_retain_graph(tape):
    x = Value(2.0)
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad == 8.0


def test_copies_never_drag_the_tape(tape):
    x = Value(2.0)
    for _ in range(3000):
        x = x * 1.0001
    assert copy.copy(x) is x
    d = copy.deepcopy(x)
    assert d.data == x.data and d is not x and d.data is not None
    assert jitad.gradients(d * 2.0, [d, x]).tolist() == [2.0, 0.0]  # a new leaf
    blob = pickle.dumps(x)
    assert len(blob) < 200
    assert pickle.loads(blob).data == x.data
    params = [Value(1.0), Value(2.0)]
    params[0].grad = 5.0
    clone = copy.deepcopy(params)
    assert [p.data for p in clone] == [1.0, 2.0] and clone[0].grad == 5.0
    clone[0].data = 9.0
    assert params[0].data == 1.0


def test_forward_only_loop_without_leaves_or_backward_is_freed(tape):
    # Each pass straddles a chunk border, so each chunk reads the one before: pruning must
    # break that chain, while what is still held keeps its exact gradient.
    _warm_up_kernels()
    random.seed(0)
    model = MLP(2, [8, 8, 1])
    held, sizes = [], []
    for k in range(6000):
        y = model([0.001 * k, 0.5])
        if k in (0, 700):
            held.append((k, y))
        sizes.append(len(tape))
    # Pruning runs when the number of chunks doubles: the tape breathes, but stops growing.
    assert max(sizes[4000:]) <= 1.1 * max(sizes[1000:4000])
    assert max(sizes) < 0.5 * tape._rec.n  # well under everything recorded
    for k, y in held:
        fresh = model([0.001 * k, 0.5])
        assert fresh.data == y.data
        np.testing.assert_array_equal(jitad.gradients(y, model.parameters()), jitad.gradients(fresh, model.parameters()))


def test_a_value_broadcasts_against_lists_like_numpy(tape):
    v = Value(3.0)
    for got, want in ((v - [1, 2], [2.0, 1.0]), ([1, 2] - v, [-2.0, -1.0]), (v * (2.0, 4.0), [6.0, 12.0])):
        assert isinstance(got, np.ndarray) and got.dtype == object
        assert [g.data for g in got] == want
    grid = v / [[1.0, 2.0], [4.0, 8.0]]
    assert grid.shape == (2, 2)
    assert jitad.gradients(grid.sum(), [v])[0] == 1 + 0.5 + 0.25 + 0.125


def test_numpy_rounding_on_object_arrays_is_recorded(tape):
    a = np.array([Value(1.4), Value(2.5), Value(-0.5)], dtype=object)
    for f in (np.round, np.rint):
        r = f(a)
        assert [v.data for v in r] == [1.0, 2.0, -0.0]
        assert all(isinstance(v, Value) for v in r)
