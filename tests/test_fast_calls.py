"""The small-tape fast path of ``F.grad`` / ``F.value_and_grad`` (issue 13, item 5): one
packed call without Numba's type dispatch, per-thread work rows, a fresh gradient per call.
Its results are the interpreter's to the bit in both tiers, threads get independent
results, returned arrays are never reused, and bad input is refused as before."""

import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from programs import points, programs, property_settings
from test_trace import BAD_X, f3

import jitad
from jitad import codegen, compiler, kernels
from jitad.trace import _NO_PARAMS, _PACKED_SAMPLE, _Work

trace_module = sys.modules["jitad.trace"]  # (jitad.trace is the function)


def seed(x):
    # benchmarks/workloads.py's seed graph: 2 inputs, 23 ops
    x1, x2 = x[0], x[1]
    a = (jitad.sin(x2) + 1) / (x2 + jitad.exp(x1)) + x1 * x2
    b = jitad.tanh(a * x1 - x2) ** 2
    c = jitad.log(1 + a * a) / (1 + b)
    return a * b + c - jitad.cos(x1 * b) + x2**3


def weighted(x, w, s):
    # parameters: a vector and a scalar
    return w[0] * x[0] ** 2 + w[1] * jitad.sin(x[1]) * s + x[0] * x[1]


def branchy(x):
    # a guard: the sign of x[0] picks one of two tapes
    if x[0] > 0:
        return x[0] * jitad.exp(x[1])
    return -x[0] ** 3 + jitad.cos(x[1])


X0 = np.array([0.7, -0.4])
W = (np.array([1.5, -2.0]), 0.5)
RNG = np.random.default_rng(7)


def compiled(f, x0, *args, **kw):
    """A TapeFunction whose first program is compiled before returning."""
    F = jitad.trace(f, x0, *args, compile=True, **kw)
    F(x0, *args)  # the first call runs the interpreter
    F(x0, *args)  # the second starts compiling
    assert F._tier.wait(timeout=600)
    assert F._tier.ready(F.tape) is not None, F._tier.errors
    assert F._tier.ready(F.tape).second(F.tape, wait=True) is not None  # and its replay and batches
    return F


def reference(f, x, *args):
    """(f, grad) by the interpreter's 14-argument kernel on a tape recorded at x itself."""
    program = jitad.trace(f, x, *args).tape
    w = _Work(program)
    p = np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in args]) if args else np.empty(0)
    g = np.empty(program.inputs.size)
    failed = kernels.replay_value_and_grad(
        program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj,
        program.inputs, program.params, program.out, np.asarray(x, dtype=float), p, g,
    )  # fmt: skip
    assert failed < 0
    return float(w.val[program.out]), g


def same(a, b):
    np.testing.assert_array_equal(a, b)  # bit for bit (NaN equals NaN)


@pytest.fixture(scope="module")
def tiers():
    """{name: (f, args, {tier: TapeFunction})} for three functions, interpreter and compiled."""
    out = {}
    for name, f, args in (("seed", seed, ()), ("weighted", weighted, W), ("branchy", branchy, ())):
        out[name] = (f, args, {"interpreter": jitad.trace(f, X0, *args), "compiled": compiled(f, X0, *args)})
    return out


@pytest.mark.parametrize("tier", ["interpreter", "compiled"])
@pytest.mark.parametrize("name", ["seed", "weighted", "branchy"])
def test_bits_equal_the_interpreters_kernel(tiers, name, tier, monkeypatch):
    f, args, Fs = tiers[name]
    F = Fs[tier]
    for x in RNG.uniform(-2, 2, size=(20, 2)):
        v, g = F.value_and_grad(x, *args)
        rv, rg = reference(f, x, *args)
        assert v == rv or (v != v and rv != rv)
        same(g, rg)
        same(F.grad(x, *args), rg)
        same(F(x, *args), rv)  # small tapes: through the gradient's entry point
        with monkeypatch.context() as m:
            m.setattr(trace_module, "SMALL_CALL", 0)  # the values-only path of larger tapes
            same(F(x, *args), rv)
    if tier == "compiled" and name != "branchy":
        # the compiled tier's entry point ran, not the interpreter's packed kernel
        assert F._local.hot[1] is F._tier.ready(F.tape).entry


@property_settings(40)
@given(programs(n_inputs=st.integers(1, 4)), st.data())
def test_random_programs_bits(prog, data):
    x0 = data.draw(points(prog.n_inputs))
    try:
        F = jitad.trace(prog, x0)
    except (ValueError, ZeroDivisionError, OverflowError):
        return
    for _ in range(3):
        x = data.draw(points(prog.n_inputs))
        v, g = F.value_and_grad(x)
        # the tape recorded at x0, swept by the old kernel (its guards may send us elsewhere)
        program = F._last
        w = F._work(program)
        rg = np.empty(prog.n_inputs)
        if kernels.replay_value_and_grad(
            program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj,
            program.inputs, program.params, program.out, x, np.empty(0), rg,
        ) < 0:  # fmt: skip
            assert v == w.val[program.out] or (v != v and w.val[program.out] != w.val[program.out])
            same(g, rg)


def test_guards_nan_and_retrace_through_the_fast_path(tiers):
    _, _, Fs = tiers["branchy"]
    for F in Fs.values():
        before = F.retraces
        for x in ([0.5, 1.0], [-0.5, 1.0], [0.25, -1.0], [-2.0, 0.0]):
            v, g = F.value_and_grad(np.array(x))
            rv, rg = reference(branchy, np.array(x))
            assert v == rv
            same(g, rg)
        assert F.retraces >= before
        # NaN in: NaN out, as the interpreter (the fast path takes the slow way on NaN)
        v, g = F.value_and_grad(np.array([np.nan, 1.0]))
        assert v != v
    R = jitad.trace(branchy, X0, retrace="raise")
    with pytest.raises(jitad.BranchChanged):
        R.grad(np.array([-1.0, 0.0]))


@pytest.mark.parametrize("tier", ["interpreter", "compiled"])
def test_returned_arrays_are_fresh(tiers, tier):
    _, _, Fs = tiers["seed"]
    F = Fs[tier]
    v1, g1 = F.value_and_grad(np.array([0.1, 0.2]))
    kept = g1.copy()
    g2 = F.grad(np.array([1.1, -0.3]))
    v3, g3 = F.value_and_grad(np.array([0.1, 0.2]))
    same(g1, kept)  # a later call did not write into an earlier result
    assert g1 is not g2 and g1 is not g3 and not np.shares_memory(g1, g2)
    same(g3, g1)
    assert v3 == v1 and isinstance(v1, float)
    rows = F._work(F.tape).rows
    assert not np.shares_memory(g1, rows) and not np.shares_memory(g2, rows)
    assert g1.flags.writeable and g1.flags.owndata


@pytest.mark.parametrize("tier", ["interpreter", "compiled"])
@pytest.mark.parametrize("name", ["seed", "weighted", "branchy"])
def test_threads_share_one_tape_function(tiers, name, tier):
    f, args, Fs = tiers[name]
    F = Fs[tier]
    X = RNG.uniform(-2, 2, size=(400, 2))
    expected = [reference(f, x, *args) for x in X]
    results = [None] * len(X)
    barrier = threading.Barrier(6)

    def work(k0):
        barrier.wait()
        for k in range(k0, len(X), 6):
            results[k] = F.value_and_grad(X[k], *args) if k % 2 else (None, F.grad(X[k], *args))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, ((v, g), (rv, rg)) in enumerate(zip(results, expected)):
        assert v is None or v == rv
        same(g, rg)
    grads = [g for _, g in results]
    assert len({id(g) for g in grads}) == len(grads)  # one fresh array per call


GOOD_X = {
    "list": lambda x: list(x),
    "ints": lambda x: np.round(x * 4).astype(np.int64),
    "float32": lambda x: x.astype(np.float32),
    "strided": lambda x: np.repeat(x, 2)[::2],
    "readonly": lambda x: np.frombuffer(x.tobytes()),
    "big-endian": lambda x: x.astype(">f8"),
    "unaligned": lambda x: np.frombuffer(b"\0" + x.tobytes(), offset=1),
    "matrix row": lambda x: np.asmatrix(x),  # a subclass: converted like any sequence
}


@pytest.mark.parametrize("tier", ["interpreter", "compiled"])
@pytest.mark.parametrize("kind", GOOD_X)
def test_other_inputs_are_converted_as_before(tiers, tier, kind):
    _, _, Fs = tiers["seed"]
    F = Fs[tier]
    x = np.array([0.3, -1.2])
    given = GOOD_X[kind](x)
    if kind == "matrix row":
        with pytest.raises(ValueError, match="shape"):
            F.grad(given)
        return
    as_float = np.asarray(given, dtype=np.float64).copy()
    v, g = F.value_and_grad(given)
    rv, rg = reference(seed, as_float)
    assert v == rv
    same(g, rg)
    same(np.asarray(given, dtype=np.float64), as_float)  # x is only read


@pytest.mark.parametrize("tier", ["interpreter", "compiled"])
@pytest.mark.parametrize("name", BAD_X)
def test_bad_x_is_refused_as_before(tier, name):
    bad, error = BAD_X[name]
    x0 = np.array([1.0, 2.0, 3.0])
    F = jitad.trace(f3, x0) if tier == "interpreter" else compiled(f3, x0)
    if name == "Values":
        with jitad.Tape():
            bad = np.array([jitad.Value(1.0), jitad.Value(2.0), jitad.Value(3.0)], dtype=object)
    for call in (F.grad, F.value_and_grad):
        with pytest.raises(error):
            call(bad)
    x = np.array([0.5, 2.0, 1.0])
    rv, rg = reference(f3, x)
    same(F.grad(x), rg)


@pytest.mark.parametrize("tier", ["interpreter", "compiled"])
def test_bad_parameters_and_outputs_are_refused(tiers, tier):
    _, _, Fs = tiers["weighted"]
    F = Fs[tier]
    x = np.array([0.3, 0.4])
    with pytest.raises(TypeError, match="extra argument"):
        F.grad(x)
    with pytest.raises(TypeError, match="extra argument"):
        F.grad(x, W[0])
    with pytest.raises(ValueError, match="shape"):
        F.grad(x, np.ones(3), 0.5)
    with pytest.raises(TypeError):
        F.grad(x, np.array(["a", "b"]), 0.5)
    same(F.grad(x, [1.5, -2.0], 0.5), reference(weighted, x, *W)[1])
    several = jitad.trace(lambda x: [x[0] * x[1], x[1]], X0)
    with pytest.raises(ValueError, match="one Value"):
        several.grad(X0)
    with pytest.raises(ValueError, match="one Value"):
        several.value_and_grad(X0)


def test_entry_points_refuse_what_they_cannot_read(tiers):
    # Called without type dispatch, they check length and contiguity themselves: NaN
    # (the caller's slow way then converts or raises), never a read past x.
    for Fs, args in ((tiers["seed"][2], ()), (tiers["weighted"][2], W)):
        for F in Fs.values():
            x = np.array([0.5, 0.25])
            F.grad(x, *args)
            _, entry, rows, code, with_p = F._local.hot
            p = np.concatenate([np.ravel(a) for a in args]) if args else _NO_PARAMS
            g = np.empty(2)

            def call(x, p=p):
                return entry(code, rows, x, p, g) if with_p else entry(code, rows, x, g)

            assert call(x) == F(x, *args)
            for bad in (np.array([0.5, 9.0, 0.25, 9.0])[::2], np.array([0.5]), np.array([0.5, 0.25, 1.0])):
                assert np.isnan(call(bad))
            if args:
                assert np.isnan(call(x, p[:-1]))


def test_the_tier_switches_the_fast_path_when_ready():
    F = jitad.trace(seed, X0, compile=True)
    x = np.array([0.2, 0.9])
    before = F.value_and_grad(x)  # interpreter; asks the tier again next call
    assert F._local.hot[0] is None and isinstance(F._local.hot[3], np.ndarray)  # the packed program
    F.grad(x)
    assert F._tier.wait(timeout=600)
    assert F._tier.ready(F.tape) is not None, F._tier.errors
    after = F.value_and_grad(x)
    assert F._local.hot[0] is F.tape and F._local.hot[3] == F._tier.ready(F.tape).address
    assert after[0] == before[0]
    same(after[1], before[1])
    # compile=False settles on the interpreter at once; "auto" asks again until it compiled
    G = jitad.trace(seed, X0, compile=False)
    G.grad(x)
    assert G._local.hot[0] is G.tape and isinstance(G._local.hot[3], np.ndarray)
    G = jitad.trace(seed, X0)
    G.grad(x)
    assert G._local.hot[0] is None and isinstance(G._local.hot[3], np.ndarray)
    # a compile that failed leaves the interpreter, settled
    H = jitad.trace(seed, X0, compile=True)
    H._tier._failed.add(H.tape)
    H.grad(x)
    assert H._local.hot[0] is H.tape


def test_direct_does_not_take_the_compiler_lock_for_known_code():
    from numba.core.compiler_lock import global_compiler_lock

    def lookup():
        return compiler.direct(kernels.packed_value_and_grad, compiler.PACKED_TYPES)

    entry = lookup()
    done = []
    with global_compiler_lock:  # as a background compile holds it
        t = threading.Thread(target=lambda: done.append(lookup()))
        t.start()
        t.join(timeout=30)
    assert done and done[0] is entry
    # the sample that compiles it the usual way (announced on stderr) is refused at once
    assert np.isnan(kernels.packed_value_and_grad(*_PACKED_SAMPLE))


def test_without_jit_the_fast_path_runs_python(tmp_path):
    code = (
        "import numpy as np, jitad\n"
        "from test_fast_calls import seed\n"
        "F = jitad.trace(seed, np.array([0.7, -0.4]))\n"
        "v, g = F.value_and_grad(np.array([0.3, 0.5]))\n"
        "print(repr(v), repr(g.tolist()))\n"
        "F.grad(np.array([0.3, 9.0, 0.5])[::2])\n"
        "try:\n    F.grad(np.ones(3))\nexcept ValueError:\n    print('refused')\n"
    )
    import os

    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    v, g = reference(seed, np.array([0.3, 0.5]))
    lines = out.stdout.split("\n")
    got = lines[0].split(" ", 1)
    np.testing.assert_allclose(float(got[0]), v, rtol=1e-14)
    np.testing.assert_allclose(eval(got[1]), g, rtol=1e-14)  # noqa: S307 - our own output
    assert "refused" in out.stdout


# --- batches in the compiled tier ----------------------------------------------------------


def several(x):
    return [x[0] * x[1], jitad.exp(x[1]) - x[0], jitad.sin(x[0]) ** 3]


@pytest.mark.parametrize("name", ["seed", "weighted", "branchy", "several", "weighted per point"])
def test_compiled_batches_equal_the_interpreters(tiers, name, monkeypatch):
    if name == "several":
        f, args = several, ()
        Fs = {"interpreter": jitad.trace(several, X0), "compiled": compiled(several, X0)}
    else:
        f, args, Fs = tiers[name.split()[0]]
    X = RNG.uniform(-2, 2, size=(37, 2))
    if name.endswith("per point"):
        args = (RNG.uniform(-1, 1, size=(37, 2)), RNG.uniform(0.5, 2, size=37))
    I, C = Fs["interpreter"], Fs["compiled"]
    calls = []
    ready = C._tier.ready(C.tape)
    monkeypatch.setattr(ready, "batch", lambda *a, run=ready.batch: calls.append(1) or run(*a))
    same(C.batch(X, *args), I.batch(X, *args))
    if name != "several":
        vi, gi = I.value_and_grad_batch(X, *args)
        vc, gc = C.value_and_grad_batch(X, *args)
        same(vc, vi)
        same(gc, gi)
        same(C.grad_batch(X[:1], *(a[:1] if name.endswith("per point") else a for a in args)), gi[:1])
        same(C.grad_batch(X[:0], *(a[:0] if name.endswith("per point") else a for a in args)), gi[:0])
        # and the scalar path agrees point by point
        for k in (0, 17, 36):
            point = tuple(a[k] for a in args) if name.endswith("per point") else args
            same(C.grad(X[k], *point), gi[k])
    assert calls  # the compiled tier's batch ran (branchy: for the program it has compiled)


def test_compiled_batches_from_threads(tiers):
    _, _, Fs = tiers["seed"]
    C, I = Fs["compiled"], Fs["interpreter"]
    X = RNG.uniform(-2, 2, size=(8, 50, 2))
    expected = [I.grad_batch(x) for x in X]
    results = [None] * len(X)

    def work(k):
        results[k] = C.grad_batch(X[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(X))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        same(r, e)


def _compiled_tape(prog, data):
    """prog traced at a drawn point and compiled, both its modules; None where it cannot be traced."""
    x0 = data.draw(points(prog.n_inputs))
    try:
        program = jitad.trace(prog, x0).tape
    except (ValueError, ZeroDivisionError, OverflowError):
        return None, None
    c = compiler.compile_program(
        program.op, program.a, program.b, program.const, program.value, program.inputs, program.params, program.outputs
    )
    assert c.second(program, wait=True) is not None
    return program, c


def _batch_agrees(program, c, X, workers=1):
    """c.batch of the points X (in lanes, and the first LANES - 1 one by one), values and
    gradients, and values alone, against the interpreter's batch kernel: the same failed
    guards, and the same bits where none failed. Returns which points ran."""
    K, n, m = X.shape[0], program.inputs.size, program.outputs.size
    P = np.empty((1, 0))
    want = np.empty((K, m)), np.empty((K, n)), np.empty(K, dtype=np.int64)
    columns = (program.op, program.a, program.b, program.const, program.value, program.inputs, program.params)
    scratch = np.empty((1, 4, len(program), 4))
    lanes = np.empty((1, 4), dtype=np.int64)
    kernels.batch_share(*columns, program.outputs, X, P, 0, 1, True, *want, scratch[0], lanes[0])
    ok = want[2] < 0
    for points in (X, X[: codegen.LANES - 1]):
        k = points.shape[0]
        for want_grad in (True, False):
            got = np.empty((k, m)), np.empty((k, n)) if want_grad else np.empty((0, 0)), np.empty(k, dtype=np.int64)
            c.batch(program, _Work(program).rows, points, P, want_grad, *got, workers)
            same(got[2], want[2][:k])
            same(got[0][ok[:k]], want[0][:k][ok[:k]])
            if want_grad:
                same(got[1][ok[:k]], want[1][:k][ok[:k]])
    return ok, want


@property_settings(25)
@given(programs(n_inputs=st.integers(1, 4)), st.data())
def test_random_programs_in_lanes(prog, data):
    # Blocks of LANES points side by side (one and two threads) and the points left over,
    # against the interpreter's batch kernel: the same bits, and the same failed guards.
    program, c = _compiled_tape(prog, data)
    if program is None:
        return
    X = np.array([data.draw(points(prog.n_inputs)) for _ in range(2 * codegen.LANES + 3)])
    for workers in (1, 2):
        _batch_agrees(program, c, X, workers)


SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e308, -1e308, 5e-324, -5e-324, 1.0, -1.0, 0.5, 2.0, 1e-300]


@property_settings(25)
@given(programs(n_inputs=st.integers(1, 4)), st.data())
def test_random_programs_at_special_points(prog, data):
    # Zeros of both signs, infinities, NaN, huge and subnormal inputs: the compiled code (one
    # point and lanes) gives the interpreter's bits, and fails the same guards. Its shortcuts
    # (constant partials, a register adjoint's first contribution, kept partials) rest on
    # what zeros' signs and non-finite partials do: this is where they would show.
    program, c = _compiled_tape(prog, data)
    if program is None:
        return
    special = st.sampled_from(SPECIAL)
    X = np.array([[data.draw(special) for _ in range(prog.n_inputs)] for _ in range(codegen.LANES + 2)])
    ok, want = _batch_agrees(program, c, X)
    for k in range(X.shape[0]):  # one point at a time
        w, g = _Work(program), np.empty(prog.n_inputs)
        assert (c.value_and_grad(program, w, X[k], np.empty(0), g) >= 0) == (not ok[k])
        if ok[k]:
            same(w.val[program.outputs[0]], want[0][k, 0])
            same(g, want[1][k])
        w = _Work(program)  # the values alone (F(x))
        assert (c.value(program, w, X[k], np.empty(0)) >= 0) == (not ok[k])
        if ok[k]:
            same(w.val[program.outputs], want[0][k])
