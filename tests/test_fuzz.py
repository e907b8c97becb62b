"""Property-based fuzzing kept in the suite: saved tapes mutated at random are refused or
replay exactly like a plain-Python interpreter of the tape, and a TapeFunction's branch
cache stays correct and bounded when threads churn through branches at once."""

import io as _io
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from programs import property_settings

import jitad
from jitad import io, ops
from jitad.value import _numpy_formulas

trace_mod = sys.modules["jitad.trace"]  # the module: jitad.trace is the function


# --- a reference interpreter ----------------------------------------------------------------


def _formula(code, x, y):
    # The op table's formula on floats, IEEE where Python raises; fallback bits may differ
    # in the last place (NumPy's math), hence the tolerance below.
    with np.errstate(all="ignore"):
        try:
            return ops.OPS[code].formula(x, y)
        except (ArithmeticError, ValueError):
            # The formula with NumPy's math (math.sqrt raises on a negative np.float64 too).
            return tuple(float(r) for r in _numpy_formulas()[code](np.float64(x), np.float64(y)))


def interpret(arrays, x, p):
    """Values of the outputs and, for one output, its gradient, by walking the tape in
    Python; None when a guard fails (a loaded tape then raises BranchChanged)."""
    op, a, b, c, value = (arrays[k] for k in ("op", "a", "b", "const", "value"))
    n = op.size
    val = value.astype(float).copy()
    da = np.zeros(n)
    db = np.zeros(n)
    val[arrays["inputs"]] = x
    val[arrays["params"]] = p
    for i in range(n):
        if op[i] < ops.PARAM + 1:
            continue
        xi = val[a[i]] if a[i] >= 0 else c[i]
        yi = val[b[i]] if b[i] >= 0 else c[i]
        val[i], da[i], db[i], _, _, _ = _formula(int(op[i]), float(xi), float(yi))
        if op[i] == ops.GUARD and val[i] == 0.0:
            return None
    outputs = arrays["outputs"]
    adj = np.zeros(n)
    out = outputs[0]
    adj[out] = 1.0
    for i in range(out, -1, -1):
        if adj[i] == 0.0:
            continue  # a zero adjoint is skipped: 0 * inf never enters
        for j, d in ((a[i], da[i]), (b[i], db[i])):
            if j >= 0 and d != 0.0:
                adj[j] += d * adj[i]
    grad = np.where(arrays["inputs"] <= out, adj[arrays["inputs"]], 0.0)
    return val[outputs], grad


def model(x, w):
    h = jitad.tanh(x[0] * w[0] + x[1] * w[1])
    y = jitad.hypot(h, x[2]) if x[2] > 0 else h * h - jitad.exp(x[1])
    return [y + w[2] * jitad.sqrt(x[0] * x[0] + 1.0), jitad.log1p(h * h) / (1.0 + x[1] ** 2)]


X0 = np.array([0.3, -0.7, 0.5])
W0 = np.array([1.5, -0.5, 0.25])


def _saved():
    return io.to_arrays(jitad.trace(model, X0, W0))


ARRAYS = _saved()
MUTABLE = ["op", "a", "b", "const", "value", "inputs", "params", "outputs", "guards"]


@st.composite
def mutations(draw):
    """A copy of the saved arrays with 1-3 random edits: an element set to a random value
    of its dtype (often a nearby or boundary one), or an array cut or extended."""
    arrays = {k: v.copy() for k, v in ARRAYS.items()}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(MUTABLE))
        arr = arrays[name]
        kind = draw(st.sampled_from(["set", "set", "set", "cut", "extend"]))
        if kind == "cut" or arr.size == 0:
            arrays[name] = arr[: draw(st.integers(0, max(arr.size - 1, 0)))]
            continue
        k = draw(st.integers(0, arr.size - 1))
        if arr.dtype.kind == "f":
            v = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -1.0])))
        elif arr.dtype == np.uint8:
            v = draw(st.integers(0, 255))
        else:
            v = draw(st.one_of(st.integers(-3, arr.size + 3), st.integers(-(2**31), 2**31 - 1), st.just(k)))
        if kind == "extend":
            arrays[name] = np.append(arr, arr.dtype.type(v))
        else:
            arr[k] = v
    return arrays


def _file(arrays):
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    return buf


@property_settings(300)
@given(arrays=mutations(), x=st.lists(st.floats(-2, 2), min_size=3, max_size=3))
def test_mutated_tapes_are_refused_or_replay_like_the_interpreter(arrays, x):
    try:
        F = io.load(_file(arrays))
    except io.InvalidTape:
        return
    x = np.array(x)[: F._n]  # an edit may drop inputs
    expected = interpret(arrays, x, W0)
    if expected is None:
        try:
            F(x, W0)
        except jitad.BranchChanged:
            return
        raise AssertionError("a failed guard must raise BranchChanged for a loaded tape")
    values, grad = expected
    out = F(x, W0)
    np.testing.assert_allclose(np.atleast_1d(out), values, rtol=1e-13, atol=0, equal_nan=True)
    if F._scalar:
        np.testing.assert_allclose(F.grad(x, W0), grad, rtol=1e-12, atol=1e-300, equal_nan=True)


def test_unmutated_tape_replays_like_the_interpreter():
    # the interpreter itself, against recording, on the tape as saved
    F = io.load(_file(ARRAYS))
    values, _ = interpret(ARRAYS, X0, W0)
    np.testing.assert_array_equal(F(X0, W0), values)


# --- the branch cache under threads ---------------------------------------------------------

BRANCHES = trace_mod.MAX_BRANCHES + 3


def ladder(x):
    # One branch per unit interval of x[0]; each branch its own polynomial in x[1].
    for k in range(BRANCHES):
        if x[0] < k + 1:
            return (k + 1.0) * x[1] * x[1] + k * x[0]
    return x[0] + x[1]


def ladder_reference(x):
    k = min(int(np.floor(x[0])), BRANCHES)
    if k >= BRANCHES:
        return x[0] + x[1], np.array([1.0, 1.0])
    k = max(k, 0)
    return (k + 1.0) * x[1] * x[1] + k * x[0], np.array([float(k), 2.0 * (k + 1.0) * x[1]])


class BranchCache(RuleBasedStateMachine):
    """Calls at points of random branches, alone, in batches and from several threads at
    once: every answer equals the reference, the cache stays within MAX_BRANCHES."""

    def __init__(self):
        super().__init__()
        self.F = jitad.trace(ladder, np.array([0.5, 1.0]))

    def _check(self, x):
        value, grad = self.F.value_and_grad(x)
        want_value, want_grad = ladder_reference(x)
        assert value == want_value
        np.testing.assert_array_equal(grad, want_grad)

    @rule(k=st.integers(0, BRANCHES), y=st.floats(-3, 3))
    def call(self, k, y):
        self._check(np.array([k + 0.5, y]))

    @rule(ks=st.lists(st.integers(0, BRANCHES), min_size=1, max_size=12))
    def batch(self, ks):
        X = np.array([[k + 0.25, 0.5 * k - 1.0] for k in ks])
        values, grads = self.F.value_and_grad_batch(X)
        for x, v, g in zip(X, values, grads):
            want_value, want_grad = ladder_reference(x)
            assert v == want_value
            np.testing.assert_array_equal(g, want_grad)

    @rule(ks=st.lists(st.integers(0, BRANCHES), min_size=4, max_size=24))
    def threads(self, ks):
        points = [np.array([k + 0.75, 1.0 - 0.1 * k]) for k in ks]
        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(self._check, x) for x in points] + [pool.submit(lambda: self.F.tape)]:
                done.result()

    @invariant()
    def bounded(self):
        assert len(self.F._programs) <= trace_mod.MAX_BRANCHES
        assert len(getattr(self.F._local, "work", {})) <= trace_mod.MAX_BRANCHES + 1


BranchCache.TestCase.settings = property_settings(25)
test_branch_cache_under_threads = BranchCache.TestCase
