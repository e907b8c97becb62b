"""Regression tests for the reliability holes of issue 11: branches with different outputs,
recording and replay disagreeing, scratch kept for evicted programs, the programs dict read
without the lock, decompression bombs, unclear errors, forward vs reverse Jacobians and
unbounded batch scratch. Each test failed before its fix."""

import io as _io
import json
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jitad
from jitad import io, kernels, ops
from programs import points, programs, property_settings

trace_mod = sys.modules["jitad.trace"]  # the module: jitad.trace is the function

HERE = __file__


def _line_of(marker):
    """The line number of the line of this file that ends with ``marker``."""
    with open(HERE) as f:
        for k, line in enumerate(f, 1):
            if line.rstrip().endswith(marker) and "_line_of" not in line:
                return k
    raise LookupError(marker)


# --- 1. branches that return different numbers of outputs --------------------------------


def one_or_many(x):
    if x[0] > 0:
        return x[0] * x[1]  # returns: one
    return [x[0] * k for k in range(2000)]  # returns: many


def _names_both_returns(message):
    assert f"test_reliability.py:{_line_of('# returns: one')}" in message
    assert f"test_reliability.py:{_line_of('# returns: many')}" in message
    assert f"test_reliability.py:{_line_of('if x[0] > 0:')}" in message  # where they part


def test_batch_across_branches_with_different_outputs_is_refused():
    # Was a segfault: batch_block wrote 2000 columns into a one-column output.
    F = jitad.trace(one_or_many, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="same number of outputs") as e:
        F.grad_batch(np.column_stack([-np.ones(64), np.ones(64)]))
    _names_both_returns(str(e.value))
    assert F.tape.outputs.size == 1 and len(F._programs) == 1


def test_call_across_branches_with_different_outputs_is_refused():
    # Was uninitialized memory (batch) and a silently truncated result (call).
    F = jitad.trace(one_or_many, np.array([-1.0, 2.0]))
    with pytest.raises(ValueError, match="one Value") as e:
        F(np.array([1.0, 2.0]))
    _names_both_returns(str(e.value))
    with pytest.raises(ValueError, match="same number of outputs"):
        F.batch(np.array([[-1.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_array_equal(F(np.array([-2.0, 1.0])), -2.0 * np.arange(2000))


def test_batch_kernel_arrays_are_checked_against_the_tape():
    F = jitad.trace(lambda x: [x[0] * x[1], x[0]], np.array([1.0, 2.0]))
    p = F.tape
    X = np.ones((3, 2))
    P = np.empty((1, 0))
    with pytest.raises(RuntimeError, match="refused before the kernel"):
        trace_mod._check_batch_arrays(p, X, P, np.empty((3, 1)), np.empty((0, 0)), False)
    with pytest.raises(RuntimeError, match="refused before the kernel"):
        trace_mod._check_batch_arrays(p, X, P, np.empty((3, 2)), np.empty((3, 1)), True)
    trace_mod._check_batch_arrays(p, X, P, np.empty((3, 2)), np.empty((3, 2)), True)


# --- 2. recording and replay compute the same bits -----------------------------------------

ISSUE_POINT = np.array([0.9163934575847681, -0.400278691533579])


def unit_disk(x):
    if jitad.hypot(x[0], x[1]) <= 1.0:
        return x[0] * x[0] + 2.0 * x[1]
    return x[0] + x[1] * x[1] * x[0] + 2.0


def _eager(f, x):
    with jitad.Tape():
        xs = [jitad.Value(float(v)) for v in x]
        y = f(np.array(xs, dtype=object))
        return y.data, jitad.gradients(y, xs)


def test_hypot_guard_goes_the_same_way_in_recording_and_replay():
    # Python's math.hypot and libm's hypot differ in the last bit here (the issue's point):
    # the answer depended on where F was first traced.
    value, grad = _eager(unit_disk, ISSUE_POINT)
    for x0 in (np.array([0.1, 0.1]), np.array([3.0, 3.0]), ISSUE_POINT):
        F = jitad.trace(unit_disk, x0)
        for _ in range(50):
            v, g = F.value_and_grad(ISSUE_POINT)
            assert v == value
            np.testing.assert_array_equal(g, grad)
        assert F.retraces <= 1
        np.testing.assert_array_equal(F.grad_batch(np.tile(ISSUE_POINT, (5, 1))), np.tile(grad, (5, 1)))


def _flip_last_guard(record):
    """``record`` whose program claims the other outcome for its last guard, as if the
    compiled comparison disagreed with Python's at the very point recorded."""

    def flipped(f, x, args):
        program, scalar = record(f, x, args)
        g = program.guards[-1]
        program.const[g] = 1.0 - program.const[g]
        return program, scalar

    return flipped


def test_recording_that_fails_its_own_guards_is_refused_not_rerecorded(monkeypatch):
    # Was: every call at such a point recorded f again (400 calls, 400 retraces).
    F = jitad.trace(lambda x: x[0] * 2.0 if x[0] > 0 else -x[0], np.array([1.0]))
    monkeypatch.setattr(trace_mod, "record", _flip_last_guard(trace_mod.record))
    for call in (F, F.grad, F.hessian, F.jacobian):
        with pytest.raises(RuntimeError, match="fails its own guard"):
            call(np.array([-1.0]))
    with pytest.raises(RuntimeError, match="fails its own guard"):
        F.value_and_grad_batch(np.array([[-1.0], [-2.0]]))
    assert F.retraces == 0 and len(F._programs) == 1
    assert F(np.array([3.0])) == 6.0


# --- 3. scratch for evicted programs ----------------------------------------------------------

BRANCHES = trace_mod.MAX_BRANCHES + 4


def staircase(x):
    # BRANCHES branches, each a tape of ~100 entries: cycling through them evicts one per call.
    for k in range(BRANCHES):
        if x[0] < k + 1:
            y = x[0]
            for _ in range(50):
                y = y * 1.0001 + k
            return y
    return x[0]


def test_memory_is_flat_under_branch_churn():
    F = jitad.trace(staircase, np.array([0.5]))
    calls = 10_000
    tracemalloc.start()
    try:
        for k in range(calls):
            F(np.array([k % BRANCHES + 0.5]))
            if k == 2_000:
                before = tracemalloc.get_traced_memory()[0]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert F.retraces >= calls - BRANCHES
    assert len(F._local.work) <= trace_mod.MAX_BRANCHES
    # one program's scratch is ~5 kB: the old leak grew by 40 MB over these calls
    assert after - before < 2**20, (before, after)


# --- 4. F.tape without the lock ----------------------------------------------------------------


def test_tape_is_read_under_the_lock_while_other_threads_retrace():
    F = jitad.trace(staircase, np.array([0.5]))
    errors = []
    stop = threading.Event()

    def churn(offset):
        try:
            for k in range(600):
                x = (k + offset) % BRANCHES + 0.5
                assert F(np.array([x])) == staircase(np.array([x]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    def read():
        try:
            while not stop.is_set():
                assert len(F.tape) > 0
                F.batch(np.array([[0.5], [3.5]]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race needs a switch mid-iteration
    try:
        threads = [threading.Thread(target=churn, args=(7 * j,)) for j in range(2)]
        threads += [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors


# --- 5. decompression bombs ---------------------------------------------------------------------


def _npy_header(dtype, n):
    """A .npy file's header claiming n elements of dtype, with no data after it."""
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
    )
    return buf.getvalue()


def _archive(arrays, claims=None):
    """An .npz (deflated) of ``arrays``, where ``claims`` maps names to a header claiming
    that many elements and no data."""
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            if claims and name in claims:
                z.writestr(name + ".npy", _npy_header(arr.dtype, claims[name]))
            else:
                member = _io.BytesIO()
                np.lib.format.write_array(member, arr)
                z.writestr(name + ".npy", member.getvalue())
    buf.seek(0)
    return buf


def _saved_arrays():
    F = jitad.trace(lambda x: x[0] * x[1] + 1.0, np.array([1.0, 2.0]))
    return io.to_arrays(F)


def _load_peak(buf, **kwargs):
    tracemalloc.start()
    try:
        with pytest.raises(io.InvalidTape) as e:
            io.load(buf, **kwargs)
        return str(e.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_oversized_column_is_refused_before_reading():
    # Was: a 1 MB file with one oversized column peaked at 2.15 GB before being refused.
    message, peak = _load_peak(_archive(_saved_arrays(), {"a": 2**27}))
    assert "column 'a' has 134217728 entries" in message
    assert peak < 2**22


def test_consistent_huge_tape_is_refused_above_max_entries():
    # Was: a consistent 1.5 MB file of 2^26 entries was accepted at 4.6 GB.
    arrays = _saved_arrays()
    claims = {name: 2**26 for name in io.COLUMNS}
    message, peak = _load_peak(_archive(arrays, claims))
    assert "more than max_entries" in message and "67108864" in message
    assert peak < 2**22
    message, _ = _load_peak(_archive(arrays, {"meta": 2**30}))
    assert "'meta' has 1073741824 bytes" in message


def test_max_entries_raises_the_limit():
    arrays = _saved_arrays()
    n = arrays["op"].size
    assert "more than max_entries" in _load_peak(_archive(arrays), max_entries=n - 1)[0]
    F = io.load(_archive(arrays), max_entries=n)
    assert F(np.array([2.0, 3.0])) == 7.0
    for bad in (0, 1.5, True, "8"):
        with pytest.raises(ValueError, match="max_entries"):
            io.load(_archive(arrays), max_entries=bad)


def test_bare_npy_is_refused_without_reading_it():
    buf = _io.BytesIO(_npy_header(np.float64, 2**30))
    message, peak = _load_peak(buf)
    assert "found a single ndarray" in message and peak < 2**22


def test_header_dtype_is_checked_before_reading():
    arrays = _saved_arrays()
    arrays["const"] = arrays["const"].astype(np.float32)
    message, _ = _load_peak(_archive(arrays))
    assert "'const' must have dtype float64, got float32" in message
    meta = json.loads(arrays["meta"].tobytes())
    assert meta["format"] == io.FORMAT


# --- 6. unclear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1.5, "8", True, 8.0])
def test_block_must_be_an_integer(block):
    F = jitad.trace(lambda x: x[0] * x[1], np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="block must be a positive integer"):
        F.grad_batch(np.ones((4, 2)), block=block)


@pytest.mark.parametrize("block", [0, -3, 2**63, 10**30])
def test_block_must_be_positive_and_fit(block):
    F = jitad.trace(lambda x: x[0] * x[1], np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="block must be a positive integer"):
        F.grad_batch(np.ones((4, 2)), block=block)


def test_huge_block_is_capped_to_the_batch():
    F = jitad.trace(lambda x: x[0] * x[1], np.array([1.0, 2.0]))
    X = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(F.grad_batch(X, block=2**62), X[:, ::-1])
    np.testing.assert_array_equal(F.grad_batch(X, block=np.int64(2)), X[:, ::-1])


def test_empty_batch_with_per_point_parameters():
    F = jitad.trace(lambda x, w: x[0] * w[0] + x[1] * w[1], np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    values, grads = F.value_and_grad_batch(np.empty((0, 2)), np.empty((0, 2)))
    assert values.shape == (0,) and grads.shape == (0, 2)
    assert F.batch(np.empty((0, 2)), np.array([3.0, 4.0])).shape == (0,)


def test_out_of_memory_in_the_parallel_batch_is_a_memory_error(tmp_path):
    # Was: SystemError "returned a result with an exception set" from the parallel kernel.
    script = textwrap.dedent(
        """
        import resource, sys
        import numpy as np
        import jitad

        def f(x):
            y = x[0]
            for _ in range(2000):
                y = y * 1.0001 + x[1]
            return y

        F = jitad.trace(f, np.array([1.0, 2.0]))
        X = np.ones((40000, 2))
        F.grad_batch(X[:2000])  # compile and start the thread pool first
        sys.modules["jitad.trace"].BATCH_SCRATCH_BYTES = 2**50
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as fh:
            vm = int(fh.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**29, hard))
        try:
            F.grad_batch(X, block=20000)  # 2 threads x 2.6 GB of scratch
        except MemoryError as e:
            print("MemoryError:", e)
            sys.exit(0)
        except BaseException as e:
            print(type(e).__name__, e)
            sys.exit(1)
        print("no error")
        sys.exit(1)
        """
    )
    path = tmp_path / "oom.py"
    path.write_text(script)
    env = {**__import__("os").environ, "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "out of memory allocating batch scratch" in done.stdout


# --- 7. forward and reverse Jacobians agree ---------------------------------------------------


def test_forward_jacobian_skips_what_reverse_skips():
    # s - s with s = sqrt(x) at 0: the adjoint reaching s cancels to 0, so reverse never
    # multiplies sqrt'(0) = inf; the tangent sweep gave inf - inf = NaN.
    def f(x):
        s = jitad.sqrt(x[0])
        return [s - s, 2.0 * x[0], x[0] * x[0]]

    F = jitad.trace(f, np.array([0.0]))
    np.testing.assert_array_equal(F.jacobian(np.array([0.0])), [[0.0], [2.0], [0.0]])
    G = jitad.trace(lambda x: f(x)[0], np.array([0.0]))
    assert G.grad(np.array([0.0]))[0] == 0.0  # reverse, the reference


def _reverse_jacobian(F, x):
    program, w = F._run(x, ())
    jac = np.empty((program.outputs.size, F._n))
    kernels.jacobian_reverse(program.a, program.b, w.da, w.db, w.adj, program.inputs, program.outputs, jac)
    return jac


@property_settings(60)
@given(prog=programs(n_inputs=st.just(2), n_outputs=lambda n: st.integers(3, 6)), data=st.data())
def test_forward_jacobian_equals_reverse_on_random_programs(prog, data):
    x0 = data.draw(points(2))
    F = jitad.trace(prog, x0)
    for x in (x0, data.draw(points(2)), np.zeros(2)):
        forward = F.jacobian(x)  # n = 2 < m = 4: tangent sweeps, unless a partial is not finite
        reverse = _reverse_jacobian(F, x)
        np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-300, equal_nan=True)


# --- 8. batch scratch is bounded ----------------------------------------------------------------


def test_block_size_keeps_scratch_per_thread_bounded():
    # The issue's case: 16 points on a 10^7-entry tape took 8 lanes (2.5 GB per thread).
    assert trace_mod._block_size(None, 10**7, 16) == 1
    assert trace_mod._block_size(64, 10**7, 16) == 1
    for entries in (10, 10**3, 10**5, 10**6):
        lanes = trace_mod._block_size(10**6, entries, 10**6)
        assert lanes * entries * 32 <= max(trace_mod.BATCH_SCRATCH_BYTES, 32 * entries)


def test_batch_scratch_is_bounded_whatever_the_block(monkeypatch):
    monkeypatch.setattr(trace_mod, "BATCH_SCRATCH_BYTES", 2**20)

    def f(x):
        y = x[0]
        for _ in range(1000):
            y = y * 1.0001 + x[1]
        return y

    F = jitad.trace(f, np.array([1.0, 2.0]))
    X = np.ones((4000, 2))
    F.grad_batch(X, block=4000)  # compile first: compiling allocates
    tracemalloc.start()
    try:
        G = F.grad_batch(X, block=4000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    entries = len(F.tape)
    scratch = trace_mod.numba.get_num_threads() * max(2**20, 32 * entries)
    assert peak < scratch + 3 * X.nbytes + 2**20, (peak, scratch)  # was 4 x 1004 x 4000 x 8 = 128 MB
    np.testing.assert_array_equal(G, np.tile(F.grad(X[0]), (4000, 1)))
