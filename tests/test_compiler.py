"""The compiler tier: rerolling is exact, compiled code gives the interpreter's bits, the
structure cache is hit, missed and never trusted when damaged, and every TapeFunction path
runs the same through both tiers."""

import multiprocessing
import os
import pickle
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from programs import programs, property_settings

import jitad
from jitad import codegen, compiler, kernels
from jitad.trace import _Work


def rosenbrock(x):
    s = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    for i in range(1, len(x) - 1):
        s = s + (100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2)
    return s


def mlp(p, data):
    # 2-3-1 tanh network, squared loss over the samples of ``data`` (a parameter).
    loss = None
    for s in range(data.shape[0]):
        h = [jitad.tanh(p[6 + j] + p[2 * j] * data[s, 0] + p[2 * j + 1] * data[s, 1]) for j in range(3)]
        out = p[9] + p[10] * h[0] + p[11] * h[1] + p[12] * h[2]
        d = out - data[s, 2]
        loss = d * d if loss is None else loss + d * d
    return loss


def branchy(x, w):
    # A guard in every repetition, a parameter, and a constant leaf.
    s = jitad.Value(0.5)
    for i in range(len(x)):
        if x[i] > 0:
            s = s + w * x[i] ** 2
        else:
            s = s - jitad.sin(x[i]) * w
    return s


def several(x):
    return [x[0] * x[1], jitad.exp(x[1]) - x[2], x[2] ** 3 + x[0]]


DATA = np.random.default_rng(0).uniform(-1, 1, size=(5, 3))
RNG = np.random.default_rng(1)


def compiled(f, x0, *args, **kw):
    """A TapeFunction whose first program is compiled before returning."""
    F = jitad.trace(f, x0, *args, compile=True, **kw).compile()
    assert F._tier.ready(F.tape) is not None, F._tier.errors
    assert F._tier.ready(F.tape)._second is not None  # and its replay and batches
    return F


def same(a, b):
    np.testing.assert_array_equal(a, b)  # bit for bit (NaN equals NaN)


def _tape(f, x0, *args):
    return jitad.trace(f, x0, *args).tape


# --- reroll -------------------------------------------------------------------------------


def _assert_expands(program):
    rr = compiler.reroll(program.op, program.a, program.b)
    op, a, b = rr.expand()
    same(op, program.op)
    same(a, program.a)
    same(b, program.b)
    return rr


def test_rosenbrock_rolls_into_one_loop():
    rr = _assert_expands(_tape(rosenbrock, np.linspace(-1, 1, 200)))
    summary = rr.summary()
    # a loop of leaves, the first term, the first sums peeled, then one loop of 8 entries
    assert summary["blocks"] <= 3 and summary["static"] <= 20, summary


def test_mlp_rolls_samples_and_neurons():
    data = np.random.default_rng(2).uniform(-1, 1, size=(40, 3))
    rr = _assert_expands(_tape(mlp, RNG.uniform(-1, 1, 13), data))
    assert rr.summary()["static"] < 60, rr.summary()


@property_settings(200)
@given(programs())
def test_reroll_of_random_programs_expands_to_the_tape(prog):
    x0 = np.linspace(0.3, 0.9, prog.n_inputs)
    try:
        tape = _tape(prog, x0)
    except (ValueError, ZeroDivisionError, OverflowError):
        return
    _assert_expands(tape)


@property_settings(100)
@given(programs(), st.integers(2, 6))
def test_reroll_of_repeated_random_programs_expands_to_the_tape(prog, repeats):
    def f(x):
        n = prog.n_inputs
        return sum((prog(x[k : k + n]) for k in range(repeats)), jitad.Value(0.0))

    try:
        tape = _tape(f, np.linspace(0.3, 0.9, prog.n_inputs + repeats))
    except (ValueError, ZeroDivisionError, OverflowError):
        return
    _assert_expands(tape)


# --- compiled code == interpreter, bit for bit ---------------------------------------------


def _interpreter_and_compiled(program):
    c = compiler.compile_program(
        program.op, program.a, program.b, program.const, program.value, program.inputs, program.params, program.outputs
    )
    return c


def _check_bits(program, points, p):
    c = _interpreter_and_compiled(program)
    assert c.second(program, wait=True) is not None  # the full replay
    wi, wc = _Work(program), _Work(program)  # each reused across points, as in TapeFunction
    for x in points:
        gi = np.empty(program.inputs.size)
        gc = np.empty(program.inputs.size)
        fi = kernels.replay_value_and_grad(
            program.op, program.a, program.b, program.const, wi.val, wi.da, wi.db, wi.adj,
            program.inputs, program.params, program.out, x, p, gi,
        )  # fmt: skip
        fc = c.value_and_grad(program, wc, x, p, gc)
        assert fi == fc
        if fi < 0:  # the fused kernel stores only values other iterations read
            same(wc.val[program.outputs[0]], wi.val[program.outputs[0]])
            same(gc, gi)
        fi = kernels.replay(
            program.op, program.a, program.b, program.const, wi.val, wi.da, wi.db, program.inputs, program.params, x, p
        )
        assert c.replay(program, wc, x, p) == fi
        stop = len(program) if fi < 0 else fi + 1  # past a failed guard both stopped
        same(wc.val[:stop], wi.val[:stop])
        same(wc.da[:stop], wi.da[:stop])
        same(wc.db[:stop], wi.db[:stop])


def test_rosenbrock_compiled_bits():
    program = _tape(rosenbrock, np.linspace(-1, 1, 30))
    _check_bits(program, RNG.uniform(-2, 2, size=(4, 30)), np.empty(0))


def test_mlp_compiled_bits():
    program = _tape(mlp, RNG.uniform(-1, 1, 13), DATA)
    _check_bits(program, RNG.uniform(-1, 1, size=(4, 13)), DATA.ravel())


@pytest.mark.parametrize("c", [0.5, 1.5, 2.5, 3.0, 4.0, -1.0, -0.5, 0.25, 1 / 3, 5.0, -2.0, 7.5])
def test_exponents_give_the_interpreters_bits(c):
    # With the exponent a literal, LLVM rewrites pow(x, 0.5) as sqrt(x), pow(x, -1) as 1 / x
    # and pow(x, 2) as x * x, all correctly rounded, which libm's pow is not always (1 ulp
    # apart at ~0.1% of points). Every exponent gives the interpreter's bits.
    program = _tape(lambda x: sum((x[i] ** c for i in range(len(x))), jitad.Value(0.0)), np.full(500, 1.5))
    _check_bits(program, np.random.default_rng(7).uniform(0.05, 20.0, size=(8, 500)), np.empty(0))


def test_first_failed_guard_is_the_interpreters():
    x0 = np.array([0.5, -0.3, 0.8, 0.2, -0.9, 0.4])
    program = _tape(branchy, x0, 1.5)
    points = [x0, -x0, x0 * np.array([1, 1, 1, -1, 1, 1]), np.zeros(6), np.full(6, np.nan)]
    _check_bits(program, points, np.array([1.5]))


@property_settings(4)
@given(programs(), st.integers(2, 5))
def test_repeated_random_programs_compiled_bits(prog, repeats):
    def f(x):
        n = prog.n_inputs
        return sum((prog(x[k : k + n]) for k in range(repeats)), jitad.Value(0.0))

    n = prog.n_inputs + repeats
    try:
        program = _tape(f, np.linspace(0.3, 0.9, n))
    except (ValueError, ZeroDivisionError, OverflowError):
        return
    # IEEE everywhere: points outside a domain give NaN in both tiers alike.
    _check_bits(program, RNG.uniform(-3, 3, size=(3, n)), np.empty(0))


# --- every TapeFunction path through both tiers ----------------------------------------------


def test_tape_function_paths_agree_between_tiers():
    x0 = RNG.uniform(-1, 1, 13)
    I = jitad.trace(mlp, x0, DATA)
    C = compiled(mlp, x0, DATA)
    for x in RNG.uniform(-1, 1, size=(3, 13)):
        data = DATA + 0.1 * x[0]
        same(C(x, data), I(x, data))
        vi, gi = I.value_and_grad(x, data)
        vc, gc = C.value_and_grad(x, data)
        assert vi == vc
        same(gc, gi)
        same(C.grad(x, data), I.grad(x, data))
        same(C.jacobian(x, data), I.jacobian(x, data))
        v = RNG.uniform(-1, 1, 13)
        same(C.hvp(x, v, data), I.hvp(x, v, data))
        same(C.hessian(x, data), I.hessian(x, data))
    X = RNG.uniform(-1, 1, size=(7, 13))
    same(C.grad_batch(X, DATA), I.grad_batch(X, DATA))
    same(C.batch(X, DATA), I.batch(X, DATA))


def test_branches_retrace_the_same_in_both_tiers():
    # few guards and points: every new branch signature is compiled in the background
    x0 = np.array([0.5, -0.3, 0.8])
    I = jitad.trace(branchy, x0, 1.5)
    C = compiled(branchy, x0, 1.5)
    rng = np.random.default_rng(5)
    for _ in range(6):
        x = rng.uniform(-1, 1, 3)
        w = rng.uniform(0.5, 2)
        vi, gi = I.value_and_grad(x, w)
        vc, gc = C.value_and_grad(x, w)
        assert vi == vc
        same(gc, gi)
    assert C.retraces == I.retraces > 0
    # retraced programs compile too; results stay identical once they have
    C._tier.wait(timeout=600)
    x = rng.uniform(-1, 1, 3)
    same(C.grad(x, 1.1), I.grad(x, 1.1))


def test_multiple_outputs_and_raise_mode():
    x0 = np.array([0.3, 0.7, -0.2])
    I = jitad.trace(several, x0)
    C = compiled(several, x0)
    for x in RNG.uniform(-1, 1, size=(3, 3)):
        same(C(x), I(x))
        same(C.jacobian(x), I.jacobian(x))
    R = compiled(branchy, np.full(4, 0.5), 1.0, retrace="raise")
    with pytest.raises(jitad.BranchChanged):
        R.grad(np.full(4, -0.5), 1.0)


def test_save_load_and_pickle_keep_working(tmp_path):
    x0 = np.linspace(-1, 1, 20)
    C = compiled(rosenbrock, x0)
    x = RNG.uniform(-1, 1, 20)
    expected = jitad.trace(rosenbrock, x0).value_and_grad(x)
    C.save(tmp_path / "f.npz")
    for G in (jitad.load(tmp_path / "f.npz"), pickle.loads(pickle.dumps(C))):
        v, g = G.value_and_grad(x)
        assert v == expected[0]
        same(g, expected[1])
    # What travels is the tape; the receiving side runs the interpreter (io.reduce and
    # io.load do not carry compile=, see issue 13's notes) and its results are the same.


def test_threads_share_a_compiled_tape_function():
    x0 = np.linspace(-1, 1, 40)
    C = compiled(rosenbrock, x0)
    I = jitad.trace(rosenbrock, x0)
    X = RNG.uniform(-2, 2, size=(64, 40))
    expected = [I.grad(x) for x in X]
    results = [None] * len(X)

    def work(k0):
        for k in range(k0, len(X), 4):
            results[k] = C.grad(X[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        same(r, e)


def test_interpreter_runs_until_compiled_and_modes_are_checked():
    F = jitad.trace(rosenbrock, np.linspace(-1, 1, 10))  # compile="auto", the default
    x = np.linspace(-1, 1, 10)
    expected = F.grad(x)
    for _ in range(compiler.AUTO_CALLS - 1):
        F.grad(x)
    assert not F._tier._threads  # nothing started before AUTO_CALLS calls
    F.grad(x)
    F.grad(x)
    assert F._tier._threads and F._tier.wait(timeout=600)
    assert F._tier.ready(F.tape) is not None, F._tier.errors
    same(F.grad(x), expected)
    G = jitad.trace(rosenbrock, x, compile=False)
    for _ in range(compiler.AUTO_CALLS + 1):
        G.grad(x)
    assert G._tier.ready(G.tape) is None and not G._tier._threads
    with pytest.raises(ValueError, match="compile"):
        jitad.trace(rosenbrock, np.zeros(3), compile="yes")


def test_compile_builds_every_branch_now():
    x = np.array([0.5, -0.3, 1.2, -2.0])
    F = jitad.trace(branchy, x, 1.5)  # "auto": nothing compiled before 64 calls
    R = jitad.trace(branchy, x, 1.5, compile=False)
    F(-x, 1.5)  # a second branch
    assert F.compile() is F and len(F._programs) == 2
    for program in F._programs.values():
        assert F._tier.ready(program)._second is not None, F._tier.errors
    X = np.array([x, -x, 0.5 * x, x[::-1]] * 4)
    for point in X[:4]:
        for got, expected in zip(F.value_and_grad(point, 1.5), R.value_and_grad(point, 1.5)):
            same(got, expected)
        same(F(point, 1.5), R(point, 1.5))
    for got, expected in zip(F.value_and_grad_batch(X, 1.5), R.value_and_grad_batch(X, 1.5)):
        same(got, expected)
    with pytest.raises(ValueError, match="compile=False"):
        R.compile()


def _in_forked_child(work, timeout=120):
    """work() in a child forked now; its result, or "hung" when it did not answer in time."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()

    def run():
        there.send(work())

    child = ctx.Process(target=run, daemon=True)
    child.start()
    answer = here.recv() if here.poll(timeout) else "hung"
    child.kill()
    child.join()
    return answer


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_during_a_compile_does_not_hang():
    # A compile holds Numba's lock for seconds; a child forked meanwhile inherited it held
    # by a thread it does not have and hung at its first compile. The fork now waits.
    held, release = threading.Event(), threading.Event()

    def compiling():
        with codegen.global_compiler_lock:
            held.set()
            release.wait(1.0)

    thread = threading.Thread(target=compiling)
    thread.start()
    held.wait()

    def work():
        return numba.njit(lambda v: v + 1.0)(1.0)

    assert _in_forked_child(work) == 2.0
    release.set()
    thread.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_compile_in_flight_at_a_fork_starts_again_in_the_child(monkeypatch):
    go = threading.Event()
    original = compiler.compile_program

    def waiting(*args):
        go.wait()
        return original(*args)

    monkeypatch.setattr(compiler, "compile_program", waiting)
    x = np.linspace(-1, 1, 7)
    expected = jitad.trace(rosenbrock, x, compile=False).grad(x)
    F = jitad.trace(rosenbrock, x, compile=True)
    F.grad(x)
    F.grad(x)  # the compile thread starts and waits for go

    def work():
        go.set()  # the child's copy: its thread was not forked along
        F.grad(x)
        assert F._tier.wait(timeout=100)
        return F._tier.ready(F.tape) is not None and bool(np.array_equal(F.grad(x), expected))

    assert _in_forked_child(work) is True
    go.set()
    assert F._tier.wait(timeout=100) and F._tier.ready(F.tape) is not None


# --- the cache ----------------------------------------------------------------------------


@pytest.fixture
def fresh_memory(monkeypatch):
    monkeypatch.setattr(compiler, "_MEMORY", {})


def _compile(program):
    return compiler.compile_program(
        program.op, program.a, program.b, program.const, program.value, program.inputs, program.params, program.outputs
    )


def _gradient(c, program, x):
    g = np.empty(program.inputs.size)
    assert c.value_and_grad(program, _Work(program), x, np.empty(0), g) == -1
    return g


def _reference_gradient(program, x):
    w = _Work(program)
    g = np.empty(program.inputs.size)
    kernels.replay_value_and_grad(
        program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj,
        program.inputs, program.params, program.out, x, np.empty(0), g,
    )  # fmt: skip
    return g


def test_cache_hit_in_memory_and_on_disk_miss_for_another_structure(fresh_memory):
    if compiler.cache_dir() is None:
        pytest.skip("no disk cache (JITAD_CACHE=0)")
    program = _tape(rosenbrock, np.linspace(-1, 1, 17))
    c = _compile(program)
    assert not c.summary["disk"] and c.cache_path.exists()
    assert _compile(program) is c  # memory

    # another program of the same structure (other constants and values) shares the code
    def other_constants(x):
        s = 50 * (x[1] - x[0] ** 2) ** 2 + (2 - x[0]) ** 2
        for i in range(1, len(x) - 1):
            s = s + (50 * (x[i + 1] - x[i] ** 2) ** 2 + (2 - x[i]) ** 2)
        return s

    other = _tape(other_constants, np.linspace(-1, 1, 17))
    assert _compile(other) is c
    x = RNG.uniform(-1, 1, 17)
    same(_gradient(c, other, x), _reference_gradient(other, x))
    compiler._MEMORY.clear()
    d = _compile(program)  # disk
    assert d is not c and d.summary["disk"] and d.key == c.key
    x = RNG.uniform(-1, 1, 17)
    same(_gradient(d, program, x), _reference_gradient(program, x))
    e = _compile(_tape(rosenbrock, np.linspace(-1, 1, 18)))  # miss: another structure
    assert e.key != c.key and e.cache_path != c.cache_path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "plausible", "symbols"])
def test_a_damaged_cache_file_is_refused(fresh_memory, damage):
    if compiler.cache_dir() is None:
        pytest.skip("no disk cache (JITAD_CACHE=0)")
    program = _tape(rosenbrock, np.linspace(-1, 1, 19))
    c = _compile(program)
    path = c.cache_path
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(300))
    elif damage == "plausible":
        # the right header, one byte of the machine code changed: the digest catches it
        k = len(data) - 100
        path.write_bytes(data[:k] + bytes([data[k] ^ 1]) + data[k + 1 :])
    else:
        # a whole, valid file whose code needs a symbol this process lacks: not loaded
        # (LLVM would abort the process), rebuilt
        body = codegen.read_checked(path, c.key)
        codegen.write_checked(path, c.key, b"jitad_no_such_symbol\n" + body.partition(b"\n")[2])
    compiler._MEMORY.clear()
    c = _compile(program)
    assert not c.summary["disk"]
    x = RNG.uniform(-1, 1, 19)
    same(_gradient(c, program, x), _reference_gradient(program, x))
    assert path.read_bytes() == data  # rewritten whole


def test_damaged_formula_ir_is_not_trusted(fresh_memory, monkeypatch):
    if compiler.cache_dir() is None:
        pytest.skip("no disk cache (JITAD_CACHE=0)")
    program = _tape(rosenbrock, np.linspace(-1, 1, 21))
    _compile(program)
    files = list((compiler.cache_dir() / "formulas").glob("*.ll"))
    assert files
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data.replace(b"fmul", b"fadd"))  # plausible IR, the wrong formulas
    monkeypatch.setattr(codegen, "_FORMULA_IR", {})
    compiler._MEMORY.clear()
    for path in compiler.cache_dir().glob("*.o"):
        path.unlink()
    d = _compile(program)
    assert not d.summary["disk"]
    x = RNG.uniform(-1, 1, 21)
    same(_gradient(d, program, x), _reference_gradient(program, x))


def test_concurrent_writers_of_one_entry(fresh_memory):
    program = _tape(rosenbrock, np.linspace(-1, 1, 23))
    results = []
    errors = []

    def build():
        try:
            results.append(_compile(program))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(r) for r in results}) == 1  # one Compiled per structure wins
    x = RNG.uniform(-1, 1, 23)
    same(_gradient(results[0], program, x), _reference_gradient(program, x))
    if compiler.cache_dir() is not None:
        assert not list(compiler.cache_dir().glob("*.tmp"))
        # many writers of the same text: every reader sees a whole, valid file
        path = results[0].cache_path
        data = path.read_bytes()
        body = codegen.read_checked(path, results[0].key)
        writers = [
            threading.Thread(target=codegen.write_checked, args=(path, results[0].key, body)) for _ in range(8)
        ]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        assert path.read_bytes() == data


def test_a_new_process_loads_from_disk(tmp_path):
    if compiler.cache_dir() is None:
        pytest.skip("no disk cache (JITAD_CACHE=0)")
    script = (
        "import numpy as np, jitad\n"
        "from jitad import compiler\n"
        "def rosenbrock(x):\n"
        "    s = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2\n"
        "    for i in range(1, len(x) - 1):\n"
        "        s = s + (100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2)\n"
        "    return s\n"
        "program = jitad.trace(rosenbrock, np.linspace(-1, 1, 25)).tape\n"
        "c = compiler.compile_program(program.op, program.a, program.b, program.const, program.value,"
        " program.inputs, program.params, program.outputs)\n"
        "print(c.summary['disk'])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(compiler._config.CACHE_DIR)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        for _ in range(2)
    ]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[1].stdout.split()[-1] == "True"


def test_a_tape_that_does_not_repeat_stays_on_the_interpreter(monkeypatch):
    # Each entry would be its own code: not compiled (quietly by default, with a warning when
    # compile=True asked for it), and the interpreter's results are unchanged.
    monkeypatch.setattr(compiler, "MAX_STATIC", 10)

    def irregular(x):
        return jitad.sin(x[0]) * jitad.exp(x[1]) + jitad.log(x[0] + 2.0) / (x[1] ** 3 + 4.0) - jitad.tanh(x[0] * x[1])

    x = np.array([0.3, 0.7])
    expected = jitad.trace(irregular, x, compile=False).grad(x)
    F = jitad.trace(irregular, x)
    for _ in range(compiler.AUTO_CALLS + 2):
        F.grad(x)
    assert F._tier.wait(timeout=600)
    assert F._tier.ready(F.tape) is None and isinstance(F._tier.errors[0], compiler.TooIrregular)
    same(F.grad(x), expected)
    G = jitad.trace(irregular, x, compile=True)
    G.grad(x)
    with pytest.warns(RuntimeWarning, match="entries in code"):
        G.grad(x)
        assert G._tier.wait(timeout=600)
    same(G.grad(x), expected)
    H = jitad.trace(irregular, x)
    with pytest.warns(RuntimeWarning, match="entries in code"):
        H.compile()  # asked for: says why it stays on the interpreter
    same(H.grad(x), expected)


def test_the_memory_cache_keeps_the_last_structures(fresh_memory, monkeypatch):
    monkeypatch.setattr(compiler, "MEMORY_KEPT", 2)
    built = [_compile(_tape(rosenbrock, np.linspace(-1, 1, n))) for n in (5, 6, 7)]
    assert list(compiler._MEMORY.values()) == built[1:]
    x = np.linspace(-1, 1, 5)
    same(_gradient(built[0], _tape(rosenbrock, x), x), _reference_gradient(_tape(rosenbrock, x), x))
