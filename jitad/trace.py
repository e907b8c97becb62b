"""Record once, replay many: ``trace`` records a function into a ``Program`` (the tape as
contiguous arrays plus its inputs, parameters, outputs and guards), and ``TapeFunction``
replays it in Numba at new points, re-recording when a guarded branch goes the other way.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import compiler as _compiler
from . import debug, kernels, ops
from . import progress as _progress
from .optimize import optimize as _optimize
from .tape import Tape
from .value import StaleValueError, Value

MAX_BRANCHES = 16  # programs kept per TapeFunction, one per branch signature (LRU)
SMALL_CALL = 4096  # entries: F(x) of a smaller scalar tape takes the gradient's entry point
# Batch scratch per thread: 4 columns (values, both partials, adjoints) x entries x lanes
# of float64. Lanes are cut so that a thread's scratch stays under this, or under one
# replay's columns (32 bytes per entry, one lane) for tapes too long for two lanes.
BATCH_SCRATCH_BYTES = 64 * 2**20
# A batch of at least BATCH_PROGRESS_WORK entries x points (a few tenths of a second per
# core) may show progress (``progress=``): below that, even the watcher thread's start is
# not worth it. _NOT_RUN marks the points the kernels have not written yet.
BATCH_PROGRESS_WORK = 2**26
_NOT_RUN = -2


class BranchChanged(RuntimeError):
    """A comparison recorded while tracing has another outcome at this input."""


class Program:
    """A recorded tape, frozen: the Wengert list as arrays, and where its inputs,
    parameters, outputs and guards are. Kernels read it; nothing writes it."""

    def __init__(
        self, op, a, b, const, value, inputs, params, outputs, param_shapes, sites=None, da=None, db=None, lines=None
    ):
        self.op = op
        self.a = a
        self.b = b
        self.const = const
        self.value = value  # the values when recorded: constants keep theirs in every replay
        self.inputs = inputs
        self.params = params
        self.outputs = outputs
        self.out = int(outputs[0])  # the output that gradients and Hessians differentiate
        self.param_shapes = param_shapes
        self.sites = sites or {}  # guard entry -> the Python line that made the comparison
        self.lines = lines or {}  # entry -> the Python line that recorded it (debug mode only)
        self._recorded = (value, da, db)
        self.guards = np.flatnonzero(op == ops.GUARD).astype(np.int32)
        self._packed = None  # trace._packed

    def __len__(self):
        return self.op.shape[0]

    @property
    def names(self):
        return [ops.NAMES[k] for k in self.op]

    def __repr__(self):
        return (
            f"<jitad tape: {len(self)} entries, {self.inputs.size} inputs, {self.params.size} parameters, "
            f"{self.outputs.size} outputs, {self.guards.size} guards>"
        )

    def describe_guard(self, i):
        cmp = self.a[i]
        name = ops.NAMES[self.op[cmp]] if cmp >= 0 else "comparison"
        outcome = bool(self.const[i])
        site = self.sites.get(int(i), "unknown line")
        return f"the comparison ({name}) at tape entry {cmp}, made at {site}, was {outcome} when recorded"


def _as_vector(x, n, what="x"):
    if type(x) is np.ndarray and x.dtype == np.float64 and x.shape == (n,):
        return x
    v = _real_array(x, what)
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        expect = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{what} must have shape {expect}, got {v.shape}")
    return np.ascontiguousarray(v)


def _flatten_params(args, shapes):
    """The parameters as one float vector, checked against the traced shapes."""
    if len(args) != len(shapes):
        raise TypeError(f"expected {len(shapes)} extra argument(s) (parameters), got {len(args)}")
    if not args:
        return _NO_PARAMS
    parts = []
    for k, (arg, shape) in enumerate(zip(args, shapes)):
        p = _real_array(arg, f"parameter {k}")
        if p.shape != shape:
            raise ValueError(f"parameter {k} has shape {p.shape}, but was traced with shape {shape}")
        parts.append(p.ravel())
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _real_array(arg, what):
    if isinstance(arg, Value):
        raise TypeError(f"{what} is a Value; parameters are plain numbers or arrays")
    try:
        p = np.asarray(arg)
    except Exception as e:  # noqa: BLE001 - anything NumPy cannot convert
        raise TypeError(f"{what} must be a number or an array of real numbers: {e}") from None
    if p.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold real numbers, got dtype {p.dtype}")
    return p.astype(np.float64, copy=False)


_NO_PARAMS = np.empty(0)


def record(f, x, args, progress=False):
    """Call f on input Values at x and parameter Values at args; return the Program."""
    x = _as_vector(x, None)
    arrays = [_real_array(arg, f"parameter {k}") for k, arg in enumerate(args)]
    shapes = tuple(p.shape for p in arrays)
    with Tape() as tape:
        rec = tape._rec
        rec.tracing = True
        try:
            xs = np.empty(x.shape[0], dtype=object)
            for k in range(x.shape[0]):
                xs[k] = Value(float(x[k]))
            first_param = len(tape)
            ps = []
            for p in arrays:
                boxed = np.empty(p.shape, dtype=object)
                flat = boxed.reshape(-1)
                for k, v in enumerate(p.ravel()):
                    flat[k] = Value(float(v))
                ps.append(boxed if p.ndim else boxed[()])
            n_params = len(tape) - first_param
            with _progress.watch(f"recording {getattr(f, '__name__', 'f')}", progress, count=tape.__len__):
                out = f(xs, *ps)
        finally:
            rec.tracing = False
        outputs = _output_indices(out, rec)
        e = rec.entries()
        columns = {name: e[name].copy() for name in ("op", "a", "b", "c", "val", "da", "db")}
        del e
        sites = rec.sites
        lines = rec.lines
    op = columns["op"]
    op[first_param : first_param + n_params] = ops.PARAM
    return Program(
        op=op,
        a=columns["a"],
        b=columns["b"],
        const=columns["c"],
        value=columns["val"],
        inputs=np.arange(x.shape[0], dtype=np.int32),
        params=np.arange(first_param, first_param + n_params, dtype=np.int32),
        outputs=outputs,
        param_shapes=shapes,
        sites=sites,
        da=columns["da"],
        db=columns["db"],
        lines=lines,
    ), isinstance(out, Value)


def _output_indices(out, rec):
    values = [out] if isinstance(out, Value) else _sequence(out)
    idx = np.empty(len(values), dtype=np.int32)
    for j, v in enumerate(values):
        if not isinstance(v, Value):
            raise TypeError(
                f"the traced function must return a Value or a sequence of Values; output {j} is "
                f"{type(v).__name__} {v!r} (wrap constants: jitad.Value(c))"
            )
        if v._t is not rec:
            raise StaleValueError(f"output {j} ({v!r}) was not recorded while tracing (a Value captured from outside?)")
        idx[j] = v._i
    if idx.size == 0:
        raise ValueError("the traced function returned no outputs")
    return idx


def _sequence(out):
    if isinstance(out, (list, tuple)):
        return list(out)
    if isinstance(out, np.ndarray):
        return list(out.ravel())
    raise TypeError(
        f"the traced function must return a Value or a sequence of Values, got {type(out).__name__} {out!r}"
    )


class _Work:
    """One thread's scratch columns for one program (values start as recorded): the rows
    of one array, with a copy of the constants, so that the packed kernels and the compiled
    entry points take them as one argument."""

    __slots__ = ("rows", "val", "da", "db", "adj", "dot", "adj_dot")

    def __init__(self, program):
        value, da, db = program._recorded
        self.rows = np.zeros((5, len(program)))
        self.val, self.da, self.db, self.adj, const = self.rows
        const[:] = program.const
        self.val[:] = value
        if da is not None:
            self.da[:] = da
        if db is not None:
            self.db[:] = db
        self.dot = None
        self.adj_dot = None


def _packed(program):
    """The program's integer columns as one int32 array for the packed kernels (see
    kernels.PACKED_HEADER), built at its first gradient call and kept with it."""
    ints = program._packed
    if ints is None:
        head = [len(program), program.inputs.size, program.params.size, program.out]
        parts = (head, program.op, program.a, program.b, program.inputs, program.params)
        ints = program._packed = np.concatenate([np.asarray(q, dtype=np.int32) for q in parts])
    return ints


# Arguments of packed_value_and_grad's types that it refuses at once (x is longer than the
# program's 0 inputs): calling it compiles it, nothing is read or written.
_PACKED_SAMPLE = (np.zeros(kernels.PACKED_HEADER, np.int32), np.zeros((5, 0)), np.zeros(1), np.zeros(0), np.zeros(0))

# The fast path's names, looked up once (a call of the seed graph is ~1 us).
_F8 = np.dtype(np.float64)
_NDARRAY = np.ndarray
_EMPTY = np.empty


class TapeFunction:
    """A function recorded once and replayed in compiled code at new inputs.

    ``F(x, *params)`` values; ``grad``, ``value_and_grad``, ``jacobian``, ``hvp``,
    ``hessian``; ``F.tape`` is the recorded Wengert list. Comparisons recorded while tracing
    are re-checked at every call: when one differs, ``retrace="auto"`` records ``f`` again at
    that point (keeping up to ``MAX_BRANCHES`` tapes, one per branch signature) and
    ``retrace="raise"`` raises ``BranchChanged``.
    """

    def __init__(self, f, program, scalar, retrace="auto", optimize=False, compile="auto"):
        if retrace not in ("auto", "raise"):
            raise ValueError(f"retrace must be 'auto' or 'raise', got {retrace!r}")
        self._tier = _compiler.Tier(compile)  # compiled replays, built in the background
        self._optimize = bool(optimize)
        if self._optimize:
            program = _optimize(program)
        self._f = f
        self._scalar = scalar
        self._retrace = retrace
        self._n = program.inputs.size
        self._shape = (self._n,)
        self._m = program.outputs.size
        self._param_shapes = program.param_shapes
        # Where f was first recorded: a retrace whose outputs differ is explained from here.
        self._first_point = (program.value[program.inputs].copy(), program.value[program.params].copy())
        self._programs = OrderedDict([(id(program), program)])
        self._last = program  # the tape the last call used: tried first
        self._no_function = "it has no Python function to record again"  # set by jitad.io
        self._lock = threading.Lock()
        self._local = threading.local()
        self.retraces = 0  # how many times f was recorded again after a branch change

    @property
    def tape(self) -> Program:
        """The most recently used recorded program."""
        with self._lock:
            return next(reversed(self._programs.values()))

    def __repr__(self):
        name = getattr(self._f, "__name__", "loaded tape")
        return f"<jitad.TapeFunction of {name}: {len(self.tape)} entries, {len(self._programs)} branch(es)>"

    # persistence: the tape arrays only, validated on the way in (see io.py) --------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tape to ``path`` as a NumPy ``.npz`` archive (no pickle)."""
        from .io import save

        save(self, path)

    def __reduce__(self):
        # The tape's arrays (validated again on unpickling) and the function when it
        # pickles (cloudpickle), so that the receiving process can re-record.
        from .io import reduce

        return reduce(self)

    # the replay loop -------------------------------------------------------------------
    def _work(self, program):
        """This thread's scratch columns for ``program``."""
        try:
            cache = self._local.work
        except AttributeError:
            cache = self._local.work = {}
        w = cache.get(id(program))
        if w is None or w[0] is not program:
            # A miss: drop the scratch of programs the LRU has evicted (their columns would
            # otherwise stay alive with them), then make this one's.
            with self._lock:
                stale = [key for key in cache if key not in self._programs]
            for key in stale:
                del cache[key]
            w = cache[id(program)] = (program, _Work(program))
        return w[1]

    def _run(self, x, args, values=False):
        """Replay at (x, args): return (program, work) holding this point's values and
        partials; try the last branch's program, then the others, re-record when none matches.
        ``values``: only the outputs' values are needed (compiled code then computes no
        partials and keeps other values in registers)."""
        x = _as_vector(x, self._n)
        p = _flatten_params(args, self._param_shapes)
        first = self._last
        failures = []
        for program in itertools.chain((first,), self._other_programs(first)):
            w = self._work(program)
            compiled = self._tier.get(program)
            if compiled is None:
                failed = None
            elif values and not debug.enabled():  # debug checks every entry's value
                failed = compiled.value(program, w, x, p)
            else:
                failed = compiled.replay(program, w, x, p)
            if failed is None:  # not compiled (yet)
                failed = _replay(program, w, x, p)
            if failed < 0:
                if debug.enabled():
                    debug.check_replay(program, w.val)
                if program is not first:
                    with self._lock:
                        if id(program) in self._programs:
                            self._programs.move_to_end(id(program))
                    self._last = program
                return program, w
            failures.append((program, failed))
        return self._retrace_at(x, args, *failures[0])

    def _other_programs(self, first):
        # A generator: the lock is taken only when the last branch's program did not fit.
        with self._lock:
            others = [q for q in reversed(self._programs.values()) if q is not first]
        yield from others

    def _retrace_at(self, x, args, failed_program, failed):
        """Record f again at x, where ``failed`` is the first guard of ``failed_program``
        that failed; return the new program and work holding this point's values."""
        if self._retrace == "raise" or self._f is None:
            why = "retrace='raise'" if self._f is not None else self._no_function
            raise BranchChanged(
                f"a branch went the other way at this input: {failed_program.describe_guard(failed)}; "
                f"it is not at x = {np.array2string(x, threshold=6)}. Not re-recorded because {why}."
            )
        program, scalar = record(self._f, x, args)
        if scalar != self._scalar or program.outputs.size != self._m:
            raise ValueError(self._outputs_differ(x, args, program, scalar, failed_program, failed))
        work = _Work(program)
        own = _replay(program, work, x, _flatten_params(args, self._param_shapes))
        if own >= 0:
            # Recording (Python) and replay (compiled) disagree at the very point recorded:
            # caching this tape would re-record at every call here, answering would trust
            # one side of a guard that the op table says cannot differ. A bug: refuse.
            raise RuntimeError(
                f"jitad bug: replaying the tape just recorded at x = {np.array2string(x, threshold=6)} fails its "
                f"own guard: {program.describe_guard(own)}, yet replay decides otherwise. Recording and replay "
                "must compute the same bits (tests/test_op_agreement.py); please report this with f and x."
            )
        kept = _optimize(program) if self._optimize else program
        with self._lock:
            self.retraces += 1
            self._programs[id(kept)] = kept
            self._last = kept
            while len(self._programs) > MAX_BRANCHES:
                self._programs.popitem(last=False)
        # The recording holds this point's values and partials: no replay needed now.
        return program, work

    def _outputs_differ(self, x, args, program, scalar, failed_program, failed):
        """The message for a retrace whose outputs differ from the first trace's."""

        def outputs(m, one):
            return "one Value" if one else f"a sequence of {m} Value(s)"

        x0, p0 = self._first_point
        args0 = _unflatten_params(p0, self._param_shapes)
        first_site = _return_site(self._f, x0, args0)
        site = _return_site(self._f, x, args)
        return (
            f"the traced function returns {outputs(program.outputs.size, scalar)} at "
            f"x = {np.array2string(x, threshold=6)} (returned at {site}), but returned "
            f"{outputs(self._m, self._scalar)} where it was first traced, at x = {np.array2string(x0, threshold=6)} "
            f"(returned at {first_site}). The branches part at {failed_program.describe_guard(failed)}. "
            "Every branch of a traced function must return the same number of outputs."
        )

    # public evaluation -----------------------------------------------------------------
    def __call__(self, x: ArrayLike, *args: ArrayLike) -> Any:
        if self._scalar and len(self._last) <= SMALL_CALL:
            # A small tape's value through the gradient's entry point: its fixed cost (~1 us)
            # is below the general path's argument handling (~3-4 us) even with the
            # gradient computed on the way. The same forward: the same bits.
            return self._value_and_grad(x, args)[0]
        program, w = self._run(x, args, values=True)
        out = w.val[program.outputs]
        return float(out[0]) if self._scalar else out

    def _scalar_output(self, what):
        if not self._scalar:
            raise ValueError(
                f"{what} needs a function with one Value output; this one returns a sequence (use jacobian)"
            )

    def value_and_grad(self, x: ArrayLike, *args: ArrayLike) -> tuple[float, NDArray[np.float64]]:
        """(f(x), ∇f(x)): one replay and one reverse sweep."""
        return self._value_and_grad(x, args)

    def grad(self, x: ArrayLike, *args: ArrayLike) -> NDArray[np.float64]:
        """∇f(x) as an ndarray of shape (n,)."""
        return self._value_and_grad(x, args)[1]

    def _value_and_grad(self, x, args):
        # The fast path, for small tapes most of all: the last branch's program, replayed
        # and swept in one compiled call with few arguments (Numba's dispatcher costs ~0.1 us
        # per argument), this thread's work rows, a fresh gradient array for every call.
        # The entry points are called without Numba's type dispatch, which reads any array
        # as the type compiled for: here x becomes a float64 vector, and the entry point
        # returns NaN for one of another length or not contiguous (then the slow way below
        # checks and converts it). p is contiguous float64 (_flatten_params).
        if type(x) is not _NDARRAY or x.dtype is not _F8 or x.ndim != 1:
            x = np.ascontiguousarray(_as_vector(x, self._n))
        p = _flatten_params(args, self._param_shapes) if args or self._param_shapes else _NO_PARAMS
        try:
            program, entry, rows, code, with_p = self._local.hot
        except AttributeError:
            program = None
        if program is not self._last:
            program, entry, rows, code, with_p = self._hot()
        grad = _EMPTY(self._n)
        value = entry(code, rows, x, p, grad) if with_p else entry(code, rows, x, grad)
        if value != value or debug._enabled:
            # NaN: a guard failed, or f is NaN here. The slow way finds (or records) the
            # branch; for a NaN f it repeats the same sweeps and gives the same bits.
            program, w = self._run(x, args)
            kernels.gradient(program.a, program.b, w.da, w.db, w.adj, program.inputs, program.out, grad)
            value = float(w.val[program.out])
        return value, grad

    def _hot(self):
        """This thread's (program, entry point, work rows, code, with_p) for the last
        branch's program: the compiled tier's entry (code: the address of the program's
        machine code; with_p: whether it takes parameters) when it is ready, else the
        interpreter's packed kernel (code: the packed program; with_p True). Kept for the
        next call, under the key None while the tier may still compile the program (so that
        the next call asks it again)."""
        self._scalar_output("value_and_grad")
        program = self._last
        # Asked before get(): code that becomes ready in between is seen at the next call.
        pending = self._tier.pending(program)
        compiled = self._tier.get(program)
        if compiled is None:
            entry = _compiler.direct(kernels.packed_value_and_grad, _compiler.PACKED_TYPES, _PACKED_SAMPLE)
            code, with_p = _packed(program), True
        else:
            entry, code, with_p = compiled.entry, compiled.address, compiled.params
        hot = (program, entry, self._work(program).rows, code, with_p)
        key = None if compiled is None and pending else program
        self._local.hot = (key, *hot[1:])
        return hot

    def compile(self) -> "TapeFunction":
        """Compile every recorded branch now and wait for the code (the gradient, the full
        replay and the batches'), so that the calls that follow run compiled; returns self.
        Without it, ``compile="auto"`` compiles a tape in the background once it is hot. A
        tape that cannot be compiled stays on the interpreter, with a warning saying why."""
        if not self._tier.mode:
            raise ValueError("this function was traced with compile=False: trace it with compile=True or 'auto'")
        with self._lock:
            programs = list(self._programs.values())
        for program in programs:
            self._tier.now(program)
        return self

    def jacobian(self, x: ArrayLike, *args: ArrayLike, sparse: bool = False) -> Any:
        """The (m, n) Jacobian: m reverse sweeps, or n tangent sweeps when n < m. With
        ``sparse=True`` a ``scipy.sparse.csr_array`` (m, n), exact, by one tangent sweep per
        colour of the columns of its sparsity pattern (see ``jacobian_sparsity``)."""
        if sparse:
            from . import sparse as _sparse

            return _sparse.jacobian(self, x, args)
        program, w = self._run(x, args)
        m = program.outputs.size
        jac = np.empty((m, self._n))
        # Tangent sweeps cost n, reverse sweeps m. Where a partial is infinite or NaN the
        # two orders differ: reverse skips it when the adjoint reaching it cancels to 0
        # (s - s with s = sqrt(0)), forward adds inf - inf. Reverse is the reference (grad,
        # hvp): tangents are used only where every partial is finite, which leaves rounding.
        if self._n < m and np.isfinite(w.da).all() and np.isfinite(w.db).all():
            dot = np.empty(len(program))
            kernels.jacobian_forward(program.a, program.b, w.da, w.db, dot, program.inputs, program.outputs, jac)
        else:
            kernels.jacobian_reverse(program.a, program.b, w.da, w.db, w.adj, program.inputs, program.outputs, jac)
        return jac[0] if self._scalar else jac

    def jvp(self, x: ArrayLike, v: ArrayLike, *args: ArrayLike) -> tuple[Any, Any]:
        """(f(x), J v): one replay and one tangent sweep (forward mode); floats for a scalar f."""
        program, w = self._run(x, args)
        v = _as_vector(v, self._n, "v")
        dot = np.zeros(len(program))
        dot[program.inputs] = v
        kernels.tangent(program.a, program.b, w.da, w.db, dot, 0, len(program))
        values, dots = w.val[program.outputs], dot[program.outputs]
        return (float(values[0]), float(dots[0])) if self._scalar else (values.copy(), dots)

    def vjp(self, x: ArrayLike, u: ArrayLike, *args: ArrayLike) -> tuple[Any, NDArray[np.float64]]:
        """(f(x), u^T J): one replay and one reverse sweep seeded with u on the m outputs."""
        program, w = self._run(x, args)
        u = _as_vector(np.reshape(u, 1) if self._m == 1 and np.ndim(u) == 0 else u, self._m, "u")
        g = np.empty(self._n)
        kernels.weighted_gradient(program.a, program.b, w.da, w.db, w.adj, program.inputs, program.outputs, u, g)
        values = w.val[program.outputs]
        return (float(values[0]) if self._scalar else values.copy()), g

    def jacobian_batch(self, X: ArrayLike, *args: ArrayLike) -> NDArray[np.float64]:
        """The Jacobian at each row of X (K, n): shape (K, m, n), or (K, n) for one output.
        Parameters are shared or per point, as in ``batch``; one ``jacobian`` per point."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self._n:
            raise ValueError(f"X must be a real array of shape (K, {self._n}), got {X.shape}")
        _, per_point = self._batch_params(args, X.shape[0])
        rows = [
            self.jacobian(X[k], *(_point_args(args, self._param_shapes, k) if per_point else args))
            for k in range(X.shape[0])
        ]
        return np.array(rows).reshape((X.shape[0],) + (() if self._scalar else (self._m,)) + (self._n,))

    def jacobian_sparsity(self) -> Any:
        """The (m, n) pattern of the Jacobian of the current tape, a boolean
        ``scipy.sparse.csr_array``: entry (j, k) is False only where out_j cannot depend on x_k."""
        from . import sparse as _sparse

        return _sparse.jacobian_sparsity(self.tape)

    def hessian_sparsity(self, weights: ArrayLike | None = None) -> Any:
        """The (n, n) pattern of the Hessian of the first output (of every output with a
        nonzero weight when ``weights`` are given), a symmetric boolean ``csr_array``."""
        from . import sparse as _sparse

        return _sparse.hessian_sparsity(self.tape, _sparse.differentiated(self.tape, weights))

    # batches ------------------------------------------------------------------------------
    def batch(
        self, X: ArrayLike, *args: ArrayLike, block: int | None = None, progress: bool | None = None
    ) -> NDArray[np.float64]:
        """f at each row of X (K, n): shape (K,), or (K, m) for m outputs. Parameters are
        shared (traced shape) or per point (leading dimension K). ``progress`` as in
        ``trace``: a long batch shows how many points are done (never a short one)."""
        values, _ = self._batched(X, args, False, block, progress)
        return values[:, 0] if self._scalar else values

    def value_and_grad_batch(
        self, X: ArrayLike, *args: ArrayLike, block: int | None = None, progress: bool | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(f, ∇f) at each row of X (K, n): shapes (K,) and (K, n)."""
        self._scalar_output("value_and_grad_batch")
        values, grads = self._batched(X, args, True, block, progress)
        return values[:, 0], grads

    def grad_batch(
        self, X: ArrayLike, *args: ArrayLike, block: int | None = None, progress: bool | None = None
    ) -> NDArray[np.float64]:
        """∇f at each row of X (K, n): shape (K, n)."""
        return self.value_and_grad_batch(X, *args, block=block, progress=progress)[1]

    def _batch_params(self, args, K):
        """Parameters as a (1, p) array when shared, (K, p) when given per point."""
        if len(args) != len(self._param_shapes):
            raise TypeError(f"expected {len(self._param_shapes)} extra argument(s) (parameters), got {len(args)}")
        if not args:
            return np.empty((1, 0)), False
        arrays = [_real_array(arg, f"parameter {k}") for k, arg in enumerate(args)]
        if all(p.shape == s for p, s in zip(arrays, self._param_shapes)):
            return _flatten_params(args, self._param_shapes)[None, :], False
        rows = []
        for k, (p, s) in enumerate(zip(arrays, self._param_shapes)):
            if p.shape == (K,) + s:
                rows.append(p.reshape(K, int(np.prod(s, dtype=np.int64))))  # K may be 0: no -1
            elif p.shape == s:
                rows.append(np.broadcast_to(p.reshape(1, -1), (K, p.size)))
            else:
                raise ValueError(f"parameter {k} has shape {p.shape}; expected {s} (shared) or {(K,) + s} (per point)")
        return np.ascontiguousarray(np.concatenate(rows, axis=1)), True

    def _debug_batch(self, X, args, per_point):
        """In debug mode, replay point by point so the first NaN/inf is named."""
        for k in range(X.shape[0]):
            self._run(X[k], _point_args(args, self._param_shapes, k) if per_point else args)

    def _batched(self, X, args, want_grad, block, progress=None):
        X = np.asarray(X, dtype=np.float64) if not isinstance(X, np.ndarray) else X
        if X.ndim != 2 or X.shape[1] != self._n or X.dtype.kind not in "biuf":
            raise ValueError(f"X must be a real array of shape (K, {self._n}), got {X.dtype} {X.shape}")
        X = np.ascontiguousarray(X, dtype=np.float64)
        K = X.shape[0]
        P, per_point = self._batch_params(args, K)
        if debug.enabled():
            self._debug_batch(X, args, per_point)
        m = self._m
        values = np.empty((K, m))
        grads = np.empty((K, self._n)) if want_grad else np.empty((0, 0))
        pending = np.arange(K)
        with self._lock:
            programs = list(reversed(self._programs.values()))
        first_failure = None
        # A long batch that shows progress: a watcher thread counts the points the kernels
        # have written, by the first lane of each block in ``failed`` (NOT_RUN until then),
        # while the kernels run untouched. Short batches start no watcher.
        watched = _progress.wanted(progress) and K * len(programs[0]) >= BATCH_PROGRESS_WORK
        seen = [0, None, 1]  # points done in earlier passes, this pass's failed, points per block

        def finished():
            before, failed, size = seen
            if failed is None:
                return before
            return before + min(failed.size, size * int(np.count_nonzero(failed[::size] != _NOT_RUN)))

        with _progress.watch(f"batch of {K:,} points", watched, finished, "points", K):
            while pending.size:
                if programs:
                    program = programs.pop(0)
                else:
                    # No known branch fits the first pending point: record f there.
                    k = pending[0]
                    point_args = _point_args(args, self._param_shapes, k) if per_point else args
                    # The retrace checked that the new program replays at this point itself.
                    program, _ = self._retrace_at(X[k], point_args, *first_failure)
                whole = pending.size == K  # the first pass writes the results in place
                Xp = X if whole else X[pending]
                Pp = P[pending] if per_point and not whole else P
                v = values if whole else np.empty((pending.size, m))
                g = grads if whole or not want_grad else np.empty((pending.size, self._n))
                failed = np.empty(pending.size, dtype=np.int64)
                if watched:
                    failed[:] = _NOT_RUN
                _check_batch_arrays(program, Xp, Pp, v, g, want_grad)
                columns = (
                    program.op, program.a, program.b, program.const, program.value, program.inputs, program.params
                )  # fmt: skip
                # The compiled tier, when ready: blocks of LANES points side by side in
                # generated code (vectorized; the interpreter's bits).
                compiled = self._tier.get(program)
                size = _compiler.codegen.LANES if compiled is not None else _block_size(block, len(program), pending.size)
                workers = _workers(len(program), pending.size, size)
                scratch, lanes = _batch_scratch(workers, len(program), size) if compiled is None else (None, None)
                seen[:] = [K - pending.size, failed, size]
                if compiled is not None:
                    with _parallel_launch() if workers > 1 else contextlib.nullcontext():
                        compiled.batch(program, self._work(program).rows, Xp, Pp, want_grad, v, g, failed, workers)
                elif workers == 1:
                    kernels.batch_share(
                        *columns, program.outputs, Xp, Pp, 0, 1, want_grad, v, g, failed, scratch[0], lanes[0]
                    )
                else:
                    with _parallel_launch():
                        kernels.batch(
                            *columns, program.outputs, Xp, Pp, workers, want_grad, v, g, failed, scratch, lanes
                        )  # fmt: skip
                del scratch
                ok = failed < 0
                if not whole:
                    values[pending[ok]] = v[ok]
                    if want_grad:
                        grads[pending[ok]] = g[ok]
                if not ok.all() and (first_failure is None or not programs):
                    # the guard to name if re-recording is refused: the last program tried
                    first_failure = (program, int(failed[~ok][0]))
                pending = pending[~ok]
            seen[:] = [K, None, 1]
        return values, grads

    def _second_order(self, x, args):
        self._scalar_output("second order")
        program, w = self._run(x, args)
        if w.dot is None:
            w.dot = np.zeros(len(program))
            w.adj_dot = np.zeros(len(program))
        return program, w

    def hvp(self, x: ArrayLike, v: ArrayLike, *args: ArrayLike, weights: ArrayLike | None = None) -> NDArray[np.float64]:
        """Hessian-vector product H(x) v, exact (forward-over-reverse on the tape); with
        ``weights`` (one per output) the Hessian of sum_j weights[j] out_j."""
        from . import sparse as _sparse

        return _sparse.weighted_hvp(self, x, _as_vector(v, self._n, "v"), args, weights)

    def hessian(
        self, x: ArrayLike, *args: ArrayLike, sparse: bool = False, weights: ArrayLike | None = None
    ) -> Any:
        """The (n, n) Hessian: n forward-over-reverse sweeps, symmetrized. ``sparse=True``
        returns a ``scipy.sparse.csr_array`` by one sweep per colour of its sparsity pattern;
        ``weights`` (one per output) gives the Hessian of sum_j weights[j] out_j, as SciPy's
        ``NonlinearConstraint(hess=lambda x, v: F.hessian(x, weights=v))`` wants."""
        if sparse or weights is not None:
            from . import sparse as _sparse

            h = _sparse.hessian(self, x, args, weights)
            return h if sparse else h.toarray()
        program, w = self._second_order(x, args)
        h = np.empty((self._n, self._n))
        kernels.hessian(
            program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj, w.dot, w.adj_dot,
            program.inputs, program.out, h,
        )  # fmt: skip
        return 0.5 * (h + h.T)


def _point_args(args, shapes, k):
    return tuple(arg if np.shape(arg) == s else np.asarray(arg)[k] for arg, s in zip(args, shapes))


def _replay(program, w, x, p):
    """Replay ``program`` at (x, p) into ``w``; the first failed guard, or -1."""
    return kernels.replay(
        program.op, program.a, program.b, program.const, w.val, w.da, w.db, program.inputs, program.params, x, p
    )


def _unflatten_params(p, shapes):
    """The parameters as traced: arrays of ``shapes`` cut from the flat vector p."""
    args = []
    start = 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        args.append(p[start : start + size].reshape(shape))
        start += size
    return tuple(args)


def _return_site(f, x, args):
    """``file:line`` where f returns at (x, args), found by recording it once more under a
    profiler (only to explain an error: profiling slows every call while it is on)."""
    code = getattr(f, "__code__", None)
    sites = []

    def hook(frame, event, arg):
        if event == "return" and frame.f_code is code:
            sites.append(f"{code.co_filename}:{frame.f_lineno}")

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        record(f, x, args)
    except Exception:  # noqa: BLE001, S110 - the site is a courtesy; the caller raises anyway
        pass
    finally:
        sys.setprofile(previous)
    return sites[-1] if sites else "an unknown line"


_WORKQUEUE_LOCK = threading.Lock()


def _parallel_launch():
    """Numba's fallback 'workqueue' threading layer aborts the process when two threads
    launch parallel kernels at once; OpenMP and TBB do not need this lock."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return contextlib.nullcontext() if layer in ("omp", "tbb") else _WORKQUEUE_LOCK


def _workers(n_entries, K, block):
    """Threads for a batch: one unless there are several blocks and enough work to pay for
    waking Numba's thread pool (milliseconds on a busy machine)."""
    if K * n_entries < 2_000_000:
        return 1
    return max(1, min(numba.get_num_threads(), -(-K // block)))


def _block_size(block, n_entries, K):
    """Points per block: given, or 8 (measured best for tapes of 10^3-10^5 entries: the
    per-entry cost is paid once per block, while 8 lanes of values, partials and adjoints
    per entry stay small), and no more than an even share per thread; never more than K
    nor more lanes than ``BATCH_SCRATCH_BYTES`` hold (at least one)."""
    if block is not None:
        if isinstance(block, bool) or not isinstance(block, numbers.Integral):
            raise TypeError(f"block must be a positive integer number of points, got {type(block).__name__} {block!r}")
        if not 1 <= block < 2**63:
            raise ValueError(f"block must be a positive integer number of points below 2**63, got {block}")
        size = int(block)
    else:
        size = -(-K // numba.get_num_threads())
        size = min(8, size)
    fits = BATCH_SCRATCH_BYTES // (32 * max(n_entries, 1))
    return int(max(1, min(size, K, fits)))


def _batch_scratch(workers, n_entries, block):
    """Each worker's scratch columns (workers x 4 x entries x block) and lane guards,
    allocated here, outside the parallel kernel, so running out of memory is a MemoryError."""
    try:
        return np.empty((workers, 4, n_entries, block)), np.empty((workers, block), dtype=np.int64)
    except MemoryError:
        size = workers * 4 * n_entries * block * 8
        raise MemoryError(
            f"out of memory allocating batch scratch: {size / 2**30:.2f} GiB for {workers} thread(s) x "
            f"{n_entries} tape entries x {block} points per block (pass a smaller block=)"
        ) from None


def _check_batch_arrays(program, X, P, values, grads, want_grad):
    """The batch kernels write values[:, outputs], grads[:, inputs] and read X, P without
    bounds checks: every shape must match this program before they run."""
    ok = (
        values.shape == (X.shape[0], program.outputs.size)
        and X.shape[1] == program.inputs.size
        and P.shape[1] == program.params.size
        and P.shape[0] in (1, X.shape[0])
        and (not want_grad or grads.shape == (X.shape[0], program.inputs.size))
    )
    if not ok:
        raise RuntimeError(
            f"jitad bug: a batch's arrays (X {X.shape}, P {P.shape}, values {values.shape}, grads {grads.shape}) "
            f"do not fit its tape ({program.inputs.size} inputs, {program.params.size} parameters, "
            f"{program.outputs.size} outputs); refused before the kernel could write out of bounds"
        )


def trace(
    f: Callable[..., Any],
    x0: ArrayLike,
    *args: ArrayLike,
    retrace: Literal["auto", "raise"] = "auto",
    optimize: bool = False,
    progress: bool | None = None,
    compile: bool | Literal["auto"] = "auto",
) -> TapeFunction:
    """Record ``f(x, *args)`` at ``x0`` and return a ``TapeFunction`` that replays it.

    ``f`` receives ``x`` as a 1-D object array of Values and returns a Value or a sequence of
    Values. ``args`` (numbers or arrays) become parameters: they can change between calls
    without re-recording and get no derivative. ``optimize=True`` folds constants, shares
    common subexpressions and drops unused entries before replaying (worth it for tapes
    with repeated work and many replays; see benchmarks/RESULTS.md). ``progress`` shows
    how recording and optimizing go once they take more than a few seconds (``None``: when
    stderr is a terminal; tqdm when installed). ``compile``: the tape's repetition is
    compiled into loops in a background thread once the tape has been called 64 times
    (``"auto"``), at the second call (``True``) or never (``False``); calls run on the
    interpreter until the code is ready, with identical results (see jitad/compiler.py).
    """
    program, scalar = record(f, x0, args, progress=progress)
    with _progress.watch(f"optimizing {len(program):,} entries", progress if optimize else False):
        return TapeFunction(f, program, scalar, retrace=retrace, optimize=optimize, compile=compile)
