"""Save/load and pickling of TapeFunctions: round trips give the same numbers, and every
malformed file is refused before a kernel reads it.

The refusal tests run in subprocesses (this file is also their script: ``python
tests/test_io.py CASES DIR``), so a memory-safety hole shows up as a failed test naming
the case, not as a crashed pytest.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import jitad
from jitad import io, ops

HERE = os.path.abspath(__file__)


# --- the functions under test (module level: the subprocesses rebuild them) -------------


def model(x, w):
    """Weighted Rosenbrock terms, parameters, a guarded branch and several op kinds."""
    s = 0.0
    for i in range(len(x) - 1):
        s = s + w[i] * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2
    if x[0] > 0:
        s = s + jitad.sin(x[0]) * x[1].exp()
    else:
        s = s - x[0] ** 3
    return s / (1 + x[-1] ** 2)


def wide(x):
    """More outputs than inputs: the Jacobian takes the forward path."""
    return [x[0] * x[1], jitad.tanh(x[1]) + x[2] ** 2, jitad.sqrt(x[0] ** 2 + 1.0) / x[2], x[0] - x[2]]


def tall(x):
    """Fewer outputs than inputs: the Jacobian takes the reverse path."""
    return [x[0] * x[1] * x[2] + x[3], jitad.atan2(x[3], x[1]) + jitad.maximum(x[0], x[2])]


X0 = np.array([0.7, -0.4, 1.3, 0.2])
W0 = np.array([1.0, 2.0, 0.5])
POINTS = [X0, X0 + 0.25, np.array([2.0, 1.5, -1.0, 3.0])]  # x[0] > 0: the recorded branch


def traced_model():
    return jitad.trace(model, X0, W0)


def results(F, x, *args):
    """Everything a scalar TapeFunction computes at x, for exact comparison."""
    v = np.ones_like(x)
    return [F(x, *args), *F.value_and_grad(x, *args), F.hvp(x, v, *args), F.hessian(x, *args), F.jacobian(x, *args)]


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# --- round trips ----------------------------------------------------------------------


def test_save_load_scalar_with_parameters(tmp_path):
    F = traced_model()
    path = tmp_path / "model.jitad"
    F.save(path)
    G = jitad.io.load(path)
    assert path.exists() and not (tmp_path / "model.jitad.npz").exists()  # written at path exactly
    assert G._f is None
    for x in POINTS:
        for w in (W0, 2 * W0 - 0.3):
            assert_same(results(G, x, w), results(F, x, w))


def test_save_load_vector_outputs(tmp_path):
    for f, x0 in ((wide, X0[:3]), (tall, X0)):
        F = jitad.trace(f, x0)
        F.save(tmp_path / "v.npz")
        G = io.load(tmp_path / "v.npz")
        for x in (x0, x0 * 1.5 + 0.1):
            np.testing.assert_array_equal(G(x), F(x))
            np.testing.assert_array_equal(G.jacobian(x), F.jacobian(x))
        with pytest.raises(ValueError, match="one Value output"):
            G.grad(x0)


def test_save_to_file_object_and_tape_columns(tmp_path):
    F = traced_model()
    with open(tmp_path / "f.npz", "wb") as fh:
        io.save(F, fh)
    with open(tmp_path / "f.npz", "rb") as fh:
        G = io.load(fh)
    for name in ("op", "a", "b", "const", "value", "inputs", "params", "outputs", "guards"):
        np.testing.assert_array_equal(getattr(G.tape, name), getattr(F.tape, name))
    assert G.tape.param_shapes == F.tape.param_shapes == ((3,),)
    assert G.tape.sites == F.tape.sites and G.tape.sites
    assert G._scalar is True and G._retrace == F._retrace


def test_debug_source_lines_are_kept(tmp_path):
    with jitad.debug_nans():
        F = jitad.trace(lambda x: jitad.log(x[0]) * x[1], np.array([1.0, 2.0]))
    assert F.tape.lines
    F.save(tmp_path / "f.npz")
    G = io.load(tmp_path / "f.npz")
    assert G.tape.lines == F.tape.lines
    with jitad.debug_nans(), pytest.raises(FloatingPointError, match="test_io.py:"):
        G(np.array([-1.0, 2.0]))


def test_the_file_is_plain_arrays(tmp_path):
    F = traced_model()
    F.save(tmp_path / "f.npz")
    with np.load(tmp_path / "f.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    assert set(arrays) == {"meta", "op", "a", "b", "const", "value", "inputs", "params", "outputs", "guards"}
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(arrays["meta"].tobytes())
    assert meta["version"] == io.VERSION and meta["format"] == "jitad-tape"


def test_loaded_tape_cannot_rerecord(tmp_path):
    F = traced_model()
    F.save(tmp_path / "f.npz")
    G = io.load(tmp_path / "f.npz")
    other_branch = np.array([-0.5, 0.3, 0.2, 0.1])
    with pytest.raises(jitad.BranchChanged, match="test_io.py:"):
        G(other_branch, W0)
    assert F(other_branch, W0) == pytest.approx(model_float(other_branch, W0))  # F re-records


def model_float(x, w):
    s = sum(w[i] * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))
    s = s + np.sin(x[0]) * np.exp(x[1]) if x[0] > 0 else s - x[0] ** 3
    return s / (1 + x[-1] ** 2)


def test_pickle_round_trip():
    F = traced_model()
    G = pickle.loads(pickle.dumps(F))
    for x in POINTS:
        assert_same(results(G, x, W0), results(F, x, W0))


def test_pickle_with_function_can_rerecord():
    F = traced_model()
    G = io.restore(*io.reduce(F)[1])
    assert G._f is not None
    other_branch = np.array([-0.5, 0.3, 0.2, 0.1])
    assert G(other_branch, W0) == F(other_branch, W0)
    assert G.retraces == 1


def test_unpicklable_function_travels_without_it():
    lock = __import__("threading").Lock()

    def locked(x):
        with lock:
            return x[0] * x[1] if x[0] > 0 else -x[1]

    F = jitad.trace(locked, np.array([1.0, 2.0]))
    function, why = io.function_payload(F)
    assert function is None and "could not be pickled" in why
    G = io.restore(*io.reduce(F)[1])
    assert G(np.array([3.0, 2.0])) == 6.0
    with pytest.raises(jitad.BranchChanged):
        G(np.array([-3.0, 2.0]))


def test_from_arrays_copies_its_input():
    F = traced_model()
    arrays = io.to_arrays(F)
    G = io.from_arrays(arrays)
    arrays["a"][:] = 10**6  # would be out of bounds, had it been kept
    arrays["inputs"][:] = -5
    assert G(X0, W0) == F(X0, W0)
    to = io.to_arrays(G)
    to["op"][:] = 0
    assert G(X0, W0) == F(X0, W0)


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "unpickled"
    arrays = io.to_arrays(traced_model())
    arrays["op"] = np.array([_Trap(str(marker))], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(io.InvalidTape, match="'op' cannot be read"):
        io.load(tmp_path / "evil.npz")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(io.InvalidTape, match="not a jitad tape archive"):
        io.load(tmp_path / "evil.pkl")
    assert not marker.exists()


class _Trap:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "nothing.npz")


def test_invalid_tape_is_a_value_error():
    assert issubclass(io.InvalidTape, ValueError)
    with pytest.raises(io.InvalidTape, match="dict of arrays"):
        io.from_arrays([1, 2])
    arrays = io.to_arrays(traced_model())
    arrays["a"] = arrays["a"].tolist()
    with pytest.raises(io.InvalidTape, match="'a' must be a NumPy array"):
        io.from_arrays(arrays)


# --- refusals, each in a subprocess ------------------------------------------------------
#
# A case is a name and a change to the arrays of ``traced_model()`` (or to the file's
# bytes); the expected message fragment follows. The subprocess prints one JSON line per
# case before and after it, so a crash names the case that was running.


def _entry(d, name):
    """The first entry with op ``name``."""
    return int(np.flatnonzero(d["op"] == ops.CODE[name])[0])


def _set(column, index, value):
    def change(d):
        i = index(d) if callable(index) else index
        d[column] = d[column].copy()
        d[column][i] = value(d, i) if callable(value) else value

    return change


def _replace(column, fn):
    def change(d):
        d[column] = fn(d[column], d)

    return change


def _meta(**changes):
    def change(d):
        meta = json.loads(d["meta"].tobytes())
        for key, value in changes.items():
            if value is _DROP:
                del meta[key]
            else:
                meta[key] = value
        d["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy()

    return change


_DROP = object()


def _MUL(d):
    return _entry(d, "mul")


def _EXP(d):
    return _entry(d, "exp")


def _GUARD(d):
    return _entry(d, "guard")


ARRAY_CASES = {
    "a past the end": (_set("a", _MUL, lambda d, i: d["op"].size + 5), "must be -1 or point to an earlier"),
    "a huge": (_set("a", _MUL, 2**31 - 1), "must be -1 or point to an earlier"),
    "a forward": (_set("a", _MUL, lambda d, i: i + 1), "must be -1 or point to an earlier"),
    "a self-reference": (_set("a", _MUL, lambda d, i: i), "must be -1 or point to an earlier"),
    "b self-reference": (_set("b", _MUL, lambda d, i: i), "must be -1 or point to an earlier"),
    "b negative": (_set("b", _MUL, -7), "must be -1 or point to an earlier"),
    "unary a forward": (_set("a", _EXP, lambda d, i: i + 3), "unary op (exp) must point to an earlier"),
    "unary a constant": (_set("a", _EXP, -1), "unary op (exp) must point to an earlier"),
    "unary with b": (_set("b", _EXP, 0), "must have b = -1"),
    "binary without operands": (_replace("b", lambda b, d: _both_constant(d)), "at least one operand"),
    "leaf with operand": (_set("a", 1, 0), "source (leaf) must have no operands"),
    "param with operand": (_set("b", lambda d: int(d["params"][0]), 0), "source (param) must have no"),
    "unknown opcode": (_set("op", _MUL, len(ops.OPS)), "not in the op table"),
    "opcode 255": (_set("op", 0, 255), "opcode 255 is not in the op table"),
    "float opcodes": (_replace("op", lambda c, d: c.astype(np.float64)), "'op' must have dtype uint8"),
    "int64 operands": (_replace("a", lambda c, d: c.astype(np.int64)), "'a' must have dtype int32"),
    "int64 inputs": (_replace("inputs", lambda c, d: c.astype(np.int64)), "'inputs' must have dtype int32"),
    "big-endian operands": (_replace("b", lambda c, d: c.astype(">i4")), "'b' must have dtype int32"),
    "float32 values": (_replace("value", lambda c, d: c.astype(np.float32)), "'value' must have dtype float64"),
    "object opcodes": (_replace("op", lambda c, d: c.astype(object)), "'op' cannot be read"),
    "2-D column": (_replace("const", lambda c, d: c.reshape(1, -1)), "'const' must be 1-D"),
    "truncated operands": (_replace("a", lambda c, d: c[:-1]), "column 'a' has"),
    "truncated values": (_replace("value", lambda c, d: c[:-3]), "column 'value' has"),
    "longer b": (_replace("b", lambda c, d: np.append(c, np.int32(-1))), "column 'b' has"),
    "empty tape": (
        lambda d: d.update({k: d[k][:0] for k in ("op", "a", "b", "const", "value")}),
        "the tape has no entries",
    ),
    "input past the end": (_set("inputs", 1, lambda d, i: d["op"].size), "inputs[1]"),
    "input negative": (_set("inputs", 0, -1), "inputs[0] = -1"),
    "input on a computed entry": (_set("inputs", 2, lambda d, i: _MUL(d)), "must be a leaf entry"),
    "input on a parameter": (_set("inputs", 2, lambda d, i: int(d["params"][0])), "must be a leaf entry"),
    "duplicate inputs": (_set("inputs", 3, 0), "inputs must be distinct"),
    "param past the end": (_set("params", 0, 10**6), "params[0] = 1000000"),
    "param on a leaf": (_set("params", 0, 0), "every parameter entry"),
    "missing param": (_replace("params", lambda c, d: c[:-1]), "every parameter entry"),
    "params out of order": (_replace("params", lambda c, d: c[::-1].copy()), "every parameter entry"),
    "output past the end": (_set("outputs", 0, lambda d, i: d["op"].size), "outputs[0]"),
    "no outputs": (_replace("outputs", lambda c, d: c[:0]), "no outputs"),
    "two outputs, scalar": (_replace("outputs", lambda c, d: np.append(c, c)), "scalar function has one output"),
    "guard past the end": (_set("guards", 0, 10**5), "guards[0] = 100000"),
    "guard on a non-guard": (_set("guards", 0, lambda d, i: _MUL(d)), "guards must list every guard entry"),
    "guard of a non-comparison": (_set("a", _GUARD, 0), "must be a comparison entry"),
    "guard outcome 0.5": (_set("const", _GUARD, 0.5), "outcome must be 0 or 1"),
    "opcode turned guard": (_set("op", _EXP, ops.GUARD), "must be a comparison entry"),
    "opcode turned leaf": (_set("op", _MUL, ops.LEAF), "source (leaf) must have no operands"),
    "missing array": (lambda d: d.pop("guards"), "missing array(s) guards"),
    "extra array": (lambda d: d.update(function=np.zeros(3, np.uint8)), "unexpected array(s) 'function'"),
    "meta not json": (lambda d: d.update(meta=np.frombuffer(b"\xff{", np.uint8)), "not UTF-8 JSON"),
    "meta deeply nested": (lambda d: d.update(meta=np.frombuffer(b"[" * 10**5, np.uint8)), "not UTF-8 JSON"),
    "meta a list": (lambda d: d.update(meta=np.frombuffer(b"[1]", np.uint8)), "must be a JSON object"),
    "meta as text": (lambda d: d.update(meta=np.array(bytes(d["meta"]).decode())), "'meta' must have dtype"),
    "future version": (_meta(version=2), "version 2 is not supported"),
    "version as text": (_meta(version="1"), "version '1' is not supported"),
    "version true": (_meta(version=True), "version True is not supported"),
    "other format": (_meta(format="zip"), "format is 'zip'"),
    "meta missing key": (_meta(sites=_DROP), "exactly the keys"),
    "meta extra key": (_meta(function="..."), "exactly the keys"),
    "scalar as number": (_meta(scalar=1), "'scalar' must be true or false"),
    "unknown retrace": (_meta(retrace="sometimes"), "'retrace' must be"),
    "param shapes too many": (_meta(param_shapes=[[3], [2]]), "describe 5 parameter values"),
    "param shapes too few": (_meta(param_shapes=[]), "describe 0 parameter values"),
    "param shape negative": (_meta(param_shapes=[[-3]]), "list of shapes"),
    "param shape float": (_meta(param_shapes=[[3.0]]), "list of shapes"),
    "param shapes a string": (_meta(param_shapes="3"), "list of shapes"),
    "site of a non-guard": (_meta(sites={"1": "x.py:1"}), "'sites' must map guard entries"),
    "site not a number": (_meta(sites={"²": "x.py:1"}), "'sites' must map guard entries"),
    "site not text": (lambda d: _meta(sites={str(_GUARD(d)): 3})(d), "'sites' must map guard entries"),
    "line past the end": (lambda d: _meta(lines={str(d["op"].size): "x.py:1"})(d), "'lines' must map tape entries"),
    "line negative": (_meta(lines={"-1": "x.py:1"}), "'lines' must map tape entries"),
    "line not a number": (_meta(lines={"1e3": "x.py:1"}), "'lines' must map tape entries"),
    "lines a list": (_meta(lines=["x.py:1"]), "'lines' must be an object"),
}


def _both_constant(d):
    b = d["b"].copy()
    i = _MUL(d)
    d["a"] = d["a"].copy()
    d["a"][i] = -1
    b[i] = -1
    return b


BYTE_CASES = {
    "empty file": (lambda data: b"", "not a jitad tape archive"),
    "text file": (lambda data: b"op,a,b\n1,2,3\n", "not a jitad tape archive"),
    "first half": (lambda data: data[: len(data) // 2], "not a jitad tape archive"),
    "all but the last byte": (lambda data: data[:-1], "not a jitad tape archive"),
    "a .npy array": (lambda data: _npy_bytes(), "found a single ndarray"),
    "a pickle": (lambda data: pickle.dumps({"op": np.zeros(3)}), "not a jitad tape archive"),
    "zip of junk": (lambda data: _zip_bytes({"op.npy": b"junk"}), "missing array"),
    "zip with junk members": (lambda data: _junk_members(data), "cannot be read"),
}


def _npy_bytes():
    import io as stdio

    buf = stdio.BytesIO()
    np.save(buf, np.arange(5, dtype=np.uint8))
    return buf.getvalue()


def _zip_bytes(members):
    import io as stdio
    import zipfile

    buf = stdio.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _junk_members(data):
    import io as stdio
    import zipfile

    with zipfile.ZipFile(stdio.BytesIO(data)) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["a.npy"] = members["a.npy"][:-10]  # a valid header, too few bytes of data
    return _zip_bytes(members)


def _subprocess(mode, tmp_path, timeout=120):
    """Run this file as a script; return its JSON lines and how it ended."""
    proc = subprocess.run(
        [sys.executable, HERE, mode, str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return lines, proc


def _outcomes(lines, proc):
    started = [line["case"] for line in lines if "start" in line]
    done = {line["case"]: line for line in lines if "start" not in line}
    crashed = [case for case in started if case not in done]
    assert proc.returncode == 0 and not crashed, (
        f"the subprocess ended with code {proc.returncode} during case {crashed}:\n{proc.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    traced_model()  # compile the kernels into the shared cache first
    return _outcomes(*_subprocess("cases", tmp_path_factory.mktemp("cases")))


@pytest.mark.parametrize("case", sorted({**ARRAY_CASES, **BYTE_CASES}))
def test_malformed_tape_is_refused(refusals, case):
    expected = {**ARRAY_CASES, **BYTE_CASES}[case][1]
    outcome = refusals[case]
    assert outcome["error"] == "InvalidTape", outcome
    assert expected in outcome["message"], outcome


def test_random_corruptions_are_refused_or_harmless(tmp_path):
    """Random byte changes to a saved file (seeded): each is refused with InvalidTape, or
    the file still gives exactly the original numbers (changes the archive ignores)."""
    traced_model()
    done = _outcomes(*_subprocess("fuzz-bytes", tmp_path))
    assert len(done) == FUZZ_BYTES
    for case, outcome in done.items():
        assert outcome["error"] in ("InvalidTape", None), (case, outcome)
        if outcome["error"] is None:
            assert outcome["same"], (case, outcome)
    assert sum(o["error"] == "InvalidTape" for o in done.values()) > FUZZ_BYTES // 2


def test_random_tape_edits_are_refused_or_in_bounds(tmp_path):
    """Random changes to the arrays themselves, saved as well-formed archives (seeded):
    every accepted tape passes a slow reference check of the invariants the kernels rely
    on, and replays without crashing."""
    traced_model()
    done = _outcomes(*_subprocess("fuzz-arrays", tmp_path))
    assert len(done) == FUZZ_ARRAYS
    for case, outcome in done.items():
        assert outcome["error"] in ("InvalidTape", "BranchChanged", None), (case, outcome)
        if outcome["error"] != "InvalidTape":
            assert outcome["reference_check"] == "ok", (case, outcome)
    kinds = {o["error"] for o in done.values()}
    assert "InvalidTape" in kinds and None in kinds


# --- the subprocess side -------------------------------------------------------------------

FUZZ_BYTES = 150
FUZZ_ARRAYS = 300


def _report(case, **fields):
    print(json.dumps({"case": case, **fields}), flush=True)


def _try_load(case, path, check, **extra):
    """Load and replay ``path``, reporting the outcome of ``case``."""
    _report(case, start=True)
    try:
        G = io.load(path)
        fields = check(G)
    except io.InvalidTape as e:
        _report(case, error="InvalidTape", message=str(e), **extra)
        return
    except jitad.BranchChanged as e:
        _report(case, error="BranchChanged", message=str(e), **extra)
        return
    _report(case, error=None, **fields, **extra)


def _run_cases(tmp):
    F = traced_model()
    original = io.to_arrays(F)
    for case, (change, _) in ARRAY_CASES.items():
        d = {k: v.copy() for k, v in original.items()}
        change(d)
        path = os.path.join(tmp, "case.npz")
        np.savez(path, **d)
        _try_load(case, path, lambda G: {"value": G(X0, W0)})
    path = os.path.join(tmp, "good.npz")
    F.save(path)
    with open(path, "rb") as fh:
        data = fh.read()
    for case, (change, _) in BYTE_CASES.items():
        bad = os.path.join(tmp, "bytes.npz")
        with open(bad, "wb") as fh:
            fh.write(change(data))
        _try_load(case, bad, lambda G: {"value": G(X0, W0)})


def _fuzz_bytes(tmp):
    F = traced_model()
    path = os.path.join(tmp, "good.npz")
    F.save(path)
    with open(path, "rb") as fh:
        data = np.frombuffer(fh.read(), dtype=np.uint8)
    want = [results(F, x, W0) for x in POINTS]
    rng = np.random.default_rng(20240611)
    for k in range(FUZZ_BYTES):
        bad = data.copy()
        where = rng.integers(0, bad.size, size=rng.integers(1, 9))
        bad[where] = rng.integers(0, 256, size=where.size, dtype=np.uint8)
        if k % 5 == 0:  # also mutate zip headers, which are near the end of the file
            tail = rng.integers(max(0, bad.size - 600), bad.size)
            bad[tail] ^= np.uint8(1 << rng.integers(0, 8))
        mutated = os.path.join(tmp, "mutated.npz")
        bad.tofile(mutated)

        def check(G):
            got = [results(G, x, W0) for x in POINTS]
            same = all(np.array_equal(g, w) for gs, ws in zip(got, want) for g, w in zip(gs, ws))
            return {"same": same}

        _try_load(f"bytes-{k}", mutated, check)


def _fuzz_arrays(tmp):
    F = traced_model()
    original = io.to_arrays(F)
    n = original["op"].size
    rng = np.random.default_rng(7)
    columns = ["op", "a", "b", "inputs", "params", "outputs", "guards", "const"]
    for k in range(FUZZ_ARRAYS):
        d = {key: v.copy() for key, v in original.items()}
        for _ in range(rng.integers(1, 4)):
            name = columns[rng.integers(0, len(columns))]
            col = d[name]
            i = rng.integers(0, col.size)
            if name == "op":
                col[i] = rng.integers(0, len(ops.OPS) + 2)
            elif name == "const":
                col[i] = rng.choice([0.0, 1.0, 0.5, np.inf, np.nan])
            else:
                col[i] = rng.integers(-3, n + 3)
        path = os.path.join(tmp, "edited.npz")
        np.savez(path, **d)

        def check(G):
            G(X0, W0)
            G.grad(X0, W0)
            G.hvp(X0, np.ones(4), W0)
            G.jacobian(X0, W0)
            return {}

        _try_load(f"arrays-{k}", path, check, reference_check=_reference_check(d))


def _reference_check(d):
    """The invariants kernels rely on, checked one entry at a time in plain Python."""
    op, a, b = d["op"].tolist(), d["a"].tolist(), d["b"].tolist()
    n = len(op)
    for i in range(n):
        if op[i] >= len(ops.OPS):
            return f"entry {i}: opcode"
        arity = ops.OPS[op[i]].arity
        for operand in (a[i], b[i]):
            if not (operand == -1 or 0 <= operand < i):
                return f"entry {i}: operand {operand}"
        if arity == 0 and (a[i] != -1 or b[i] != -1):
            return f"entry {i}: source operands"
        if arity == 1 and (a[i] == -1 or b[i] != -1):
            return f"entry {i}: unary operands"
        if op[i] == ops.GUARD and op[a[i]] not in ops.COMPARISONS:
            return f"entry {i}: guard"
    for name, kinds in (("inputs", {ops.LEAF}), ("params", {ops.PARAM}), ("outputs", None), ("guards", {ops.GUARD})):
        for j in d[name].tolist():
            if not 0 <= j < n or (kinds is not None and op[j] not in kinds):
                return f"{name}: {j}"
    return "ok"


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    {"cases": _run_cases, "fuzz-bytes": _fuzz_bytes, "fuzz-arrays": _fuzz_arrays}[mode](directory)
