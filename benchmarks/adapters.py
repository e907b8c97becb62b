"""One adapter per system: ``prepare(workload)`` returns a ``Prepared`` whose ``grad(x)``
gives ``(value, gradient ndarray)`` at a new point.

The harness times ``prepare`` + the first ``grad`` as "first gradient" (tracing and
compiling included), then ``grad`` alone at new points. A peer that is not installed
raises ``Unavailable`` from ``check()``; a workload a system cannot or should not run
gives the reason from ``skip(workload)``.
"""

import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np


class Unavailable(Exception):
    """The system cannot run here (not installed, or the API is not there yet)."""


@dataclass
class Prepared:
    grad: Callable  # x -> (value, grad)
    ops: int | Callable | None = None  # own op count of the forward function (a callable: counted after timing)
    ops_note: str = ""
    compile_s: float | None = None  # trace / compile part of the first call, when separable
    note: str = ""


class Adapter:
    key = ""
    label = ""
    kind = ""  # eager | replay | compiled | reference
    native_memory = False  # allocations outside Python's allocators (tracemalloc blind)

    def check(self):
        """Raise Unavailable when the system is missing."""

    def skip(self, w):
        """A reason not to run workload w, or None."""
        return None

    def prepare(self, w):
        raise NotImplementedError


# --- the reference: hand-written Numba gradients ------------------------------------------


class NumbaHand(Adapter):
    key = "numba"
    label = "hand-written Numba"
    kind = "reference"

    def prepare(self, w):
        fn = w.hand
        data = w.hand_data
        compiled_before = len(fn.signatures) > 0
        t0 = time.perf_counter()
        fn(w.x0, *data)
        compile_s = time.perf_counter() - t0

        def grad(x):
            return fn(x, *data)

        note = "already compiled for another size" if compiled_before else "first call compiles (cache off)"
        return Prepared(grad, ops=None, compile_s=compile_s, note=note)


# --- jitad -------------------------------------------------------------------------------


def _jitad():
    try:
        import jitad
    except ImportError as e:
        raise Unavailable(f"not installed ({e})") from None
    return jitad


def jitad_namespace():
    jitad = _jitad()
    return SimpleNamespace(**{k: getattr(jitad, k) for k in ("exp", "log", "sin", "cos", "tanh", "maximum")})


class JitadEager(Adapter):
    key = "jitad_eager"
    label = "jitad eager (record + backward)"
    kind = "eager"

    def check(self):
        _jitad()

    def prepare(self, w):
        jitad = _jitad()
        M = jitad_namespace()
        Value = jitad.Value
        f = w.f
        count = []

        def grad(x):
            # A fresh tape per evaluation so tapes do not grow; backward() then .grad, as
            # micrograd and PyTorch users write it.
            with jitad.Tape() as tape:
                xs = [Value(v) for v in x.tolist()]
                y = f(xs, M)
                y.backward()
                g = np.array([xi.grad for xi in xs])
                if not count:
                    count.append(len(tape))
                return y.data, g

        return Prepared(grad, ops=lambda: count[0], ops_note="tape entries (leaves included)")


class JitadReplay(Adapter):
    key = "jitad_replay"
    label = "jitad interpreter (trace once, compile=False, F.value_and_grad)"
    kind = "replay"

    def check(self):
        if not hasattr(_jitad(), "trace"):
            raise Unavailable("jitad.trace not available yet")

    def prepare(self, w):
        jitad = _jitad()
        M = jitad_namespace()
        f = w.f
        t0 = time.perf_counter()
        F = jitad.trace(lambda x: f(x, M), w.x0, compile=False)  # the interpreter
        trace_s = time.perf_counter() - t0
        p = Prepared(F.value_and_grad, ops=len(F.tape), ops_note="tape entries (leaves included)", compile_s=trace_s)
        p.F = F
        return p


def purge_compiled(root):
    """Forget the compiled tier's code, in memory and on disk, so that the next compile is
    cold. Only when its cache directory lies under ``root`` (the benchmark's own temporary
    Numba cache): a user's cache is never touched. The op formulas' IR (``formulas/``, once
    per machine, compiled in the warm-up) is kept. Returns whether it purged."""
    from pathlib import Path

    from jitad import compiler

    directory = compiler.cache_dir()
    memory, lock = getattr(compiler, "_MEMORY", None), getattr(compiler, "_MEMORY_LOCK", None)
    if root is None or directory is None or memory is None or lock is None:
        return False  # (jitad's in-memory cache moved: then nothing here claims a cold compile)
    try:
        Path(directory).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    with lock:
        memory.clear()
    for path in Path(directory).glob("*.o"):
        path.unlink(missing_ok=True)
    return True


def compiled_state(F):
    """(compiled programs, programs, cache hits) of a TapeFunction's branches, read from
    jitad's tier; None where jitad's internals changed."""
    try:
        programs = list(F._programs.values())
        ready = [F._tier._ready.get(p) for p in programs]
    except AttributeError:
        return None
    done = [c for c in ready if c is not None]
    disk = sum(1 for c in done if (getattr(c, "summary", None) or {}).get("disk"))
    return len(done), len(programs), disk


class JitadCompiled(Adapter):
    key = "jitad_compiled"
    label = "jitad compiled (trace, F.compile(), F.value_and_grad)"
    kind = "compiled"
    purge_root = None  # run.py: its temporary Numba cache, so that every compile here is cold

    def check(self):
        jitad = _jitad()
        if not hasattr(getattr(jitad, "TapeFunction", object), "compile"):
            raise Unavailable("TapeFunction.compile not available yet")

    def prepare(self, w):
        import warnings

        jitad = _jitad()
        M = jitad_namespace()
        f = w.f
        purged = purge_compiled(self.purge_root)
        t0 = time.perf_counter()
        F = jitad.trace(lambda x: f(x, M), w.x0)  # compile="auto", the default
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            F.compile()  # every branch: the gradient, the full replay and the lanes; waits
        t2 = time.perf_counter()
        trace_s, compile_s = t1 - t0, t2 - t1
        state = compiled_state(F)
        note = f"trace {_secs(trace_s)} + F.compile() {_secs(compile_s)}"
        if state is not None:
            done, total, disk = state
            if done < total:
                note += f"; {total - done} of {total} branch(es) stay on the interpreter"
            elif disk:
                note += ", from the disk cache"
            elif purged:
                note += ", cold (empty cache)"
        for wm in caught:
            note += f"; warning: {str(wm.message)[:120]}"
        p = Prepared(
            F.value_and_grad, ops=len(F.tape), ops_note="tape entries (leaves included)", compile_s=trace_s + compile_s
        )
        p.note = note
        p.F = F
        p.trace_s = trace_s
        p.jit_s = compile_s
        return p


def _secs(s):
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


# --- micrograd 0.1.0, with the functions it lacks added in its own closure style -------------


def _micrograd():
    try:
        from micrograd.engine import Value
    except ImportError as e:
        raise Unavailable(f"not installed ({e})") from None
    return Value


def micrograd_namespace():
    import math

    Value = _micrograd()

    def unary(name, fn, dfn):
        def op(a):
            out = Value(fn(a.data), (a,), name)

            def _backward():
                a.grad += dfn(a.data, out.data) * out.grad

            out._backward = _backward
            return out

        op.__name__ = name
        return op

    return SimpleNamespace(
        exp=unary("exp", math.exp, lambda x, y: y),
        log=unary("log", math.log, lambda x, y: 1.0 / x),
        sin=unary("sin", math.sin, lambda x, y: math.cos(x)),
        cos=unary("cos", math.cos, lambda x, y: -math.sin(x)),
        tanh=unary("tanh", math.tanh, lambda x, y: 1.0 - y * y),
        maximum=lambda a, b: a + (b - a).relu(),
    )


def _count_micrograd(y):
    """Operations (non-leaf nodes) in a micrograd graph, without recursion; and all nodes."""
    seen = {id(y)}
    stack = [y]
    ops = 0
    while stack:
        v = stack.pop()
        if v._op:
            ops += 1
        for c in v._prev:
            if id(c) not in seen:
                seen.add(id(c))
                stack.append(c)
    return ops, len(seen)


class Micrograd(Adapter):
    key = "micrograd"
    label = "micrograd 0.1.0"
    kind = "eager"

    def check(self):
        _micrograd()

    def prepare(self, w):
        Value = _micrograd()
        M = micrograd_namespace()
        f = w.f
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 1_000_000))

        def grad(x):
            xs = [Value(v) for v in x.tolist()]
            y = f(xs, M)
            y.backward()  # recursive topological sort: RecursionError on deep graphs
            return y.data, np.array([xi.grad for xi in xs], dtype=float)

        p = Prepared(grad, ops_note="operations (leaves and constants excluded)")

        def count():
            ops, nodes = _count_micrograd(f([Value(v) for v in w.x0.tolist()], M))
            p.ops_note = f"operations; {nodes} nodes with leaves and constants"
            return ops

        p.ops = count
        return p


class MicrogradNoGC(Micrograd):
    key = "micrograd_nogc"
    label = "micrograd 0.1.0, GC paused in the call"

    def prepare(self, w):
        import gc

        p = super().prepare(w)
        grad = p.grad

        def paused(x):
            # The cyclic GC scans every live node again and again while a big graph is being
            # built; pausing it shows micrograd's own cost (the harness collects between calls).
            enabled = gc.isenabled()
            gc.disable()
            try:
                return grad(x)
            finally:
                if enabled:
                    gc.enable()

        p.grad = paused
        return p


# --- PyTorch ----------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"not installed ({e})") from None
    return torch


def torch_namespace():
    torch = _torch()
    return SimpleNamespace(
        exp=torch.exp, log=torch.log, sin=torch.sin, cos=torch.cos, tanh=torch.tanh, maximum=torch.maximum
    )


def torch_numpy():
    """The few NumPy-style functions the vectorized workloads use, over torch."""
    torch = _torch()
    return SimpleNamespace(
        exp=torch.exp,
        log=torch.log,
        tanh=torch.tanh,
        sum=lambda a, axis=None: a.sum() if axis is None else a.sum(dim=axis),
        max=lambda a, axis=None: a.max() if axis is None else a.amax(dim=axis),
        reshape=torch.reshape,
        transpose=lambda a: a.T,
        asarray=lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64),
    )


def _count_torch(f, xs, M):
    """Nodes (AccumulateGrad excluded) in the autograd graph of f(xs, M), without recursion.

    The Python wrappers of the nodes are kept and released root first: dropping a deep
    graph while wrappers of its nodes are alive otherwise frees it recursively in C++ and
    crashes on a 10^5-op chain.
    """
    y = f(xs, M)
    seen = set()
    keep = []
    stack = [y.grad_fn]
    ops = 0
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        if type(node).__name__ != "AccumulateGrad":
            ops += 1
        stack.extend(nf[0] for nf in node.next_functions)
    node = None  # the last one popped may hold the whole graph
    del y
    keep.reverse()  # a list is freed from its end: the root goes first
    del keep
    return ops


class TorchScalar(Adapter):
    key = "torch_scalar"
    label = "PyTorch, 0-d tensors"
    kind = "eager"
    native_memory = True

    def check(self):
        _torch()

    def prepare(self, w):
        torch = _torch()
        M = torch_namespace()
        f = w.f

        def grad(x):
            xs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in x.tolist()]
            y = f(xs, M)
            gs = torch.autograd.grad(y, xs)
            return y.item(), np.array([g.item() for g in gs])

        def count():
            xs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in w.x0.tolist()]
            return _count_torch(f, xs, M)

        return Prepared(grad, ops=count, ops_note="autograd graph nodes")


class TorchVec(Adapter):
    key = "torch_vec"
    label = "PyTorch, vectorized"
    kind = "eager"
    native_memory = True

    def check(self):
        _torch()

    def skip(self, w):
        return None if w.vec is not None else w.no_vec

    def prepare(self, w):
        torch = _torch()
        xp = torch_numpy()
        vec = w.vec
        data = tuple(xp.asarray(d) if isinstance(d, np.ndarray) else d for d in w.vec_data)

        def grad(x):
            xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            y = vec(xt, xp, *data)
            (g,) = torch.autograd.grad(y, xt)
            return y.item(), g.numpy()

        return Prepared(grad)


# --- HIPS autograd ----------------------------------------------------------------------------


def _autograd():
    try:
        import autograd
        import autograd.numpy as anp
    except ImportError as e:
        raise Unavailable(f"not installed ({e})") from None
    return autograd, anp


class AutogradScalar(Adapter):
    key = "autograd_scalar"
    label = "HIPS autograd, scalar code"
    kind = "eager"

    def check(self):
        _autograd()

    def prepare(self, w):
        autograd, anp = _autograd()
        M = SimpleNamespace(exp=anp.exp, log=anp.log, sin=anp.sin, cos=anp.cos, tanh=anp.tanh, maximum=anp.maximum)
        f = w.f
        n = w.n
        vg = autograd.value_and_grad(lambda x: f([x[i] for i in range(n)], M))
        return Prepared(lambda x: vg(x))


class AutogradVec(Adapter):
    key = "autograd_vec"
    label = "HIPS autograd, vectorized"
    kind = "eager"

    def check(self):
        _autograd()

    def skip(self, w):
        return None if w.vec is not None else w.no_vec

    def prepare(self, w):
        autograd, anp = _autograd()
        vec = w.vec
        data = w.vec_data
        vg = autograd.value_and_grad(lambda x: vec(x, anp, *data))
        return Prepared(lambda x: vg(x))


# --- JAX ----------------------------------------------------------------------------------------


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise Unavailable(f"not installed ({e})") from None
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def _jax_compiled(fn, x0):
    """jit(fn) lowered and compiled ahead of time: (compiled, trace+compile seconds)."""
    jax, jnp = _jax()
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(jnp.asarray(x0)).compile()
    return compiled, time.perf_counter() - t0


def _jax_grad_fn(compiled):
    def grad(x):
        v, g = compiled(x)
        return float(v), np.asarray(g)

    return grad


class JaxScalar(Adapter):
    key = "jax_scalar"
    label = "JAX jit(value_and_grad), scalar code"
    kind = "compiled"
    native_memory = True
    cap_s = 60.0
    seconds_per_op = 5e-3  # replaced by the slope measured in the first-call sweep
    slope_source = "a default estimate, nothing measured yet"

    def check(self):
        _jax()

    def skip(self, w):
        predicted = self.seconds_per_op * w.meta.get("ref_ops", 0)
        if predicted > self.cap_s:
            return (
                f"trace + compile predicted {predicted:.0f} s "
                f"({self.seconds_per_op * 1e3:.1f} ms/op, {self.slope_source}) > {self.cap_s:.0f} s cap"
            )
        return None

    def prepare(self, w):
        jax, jnp = _jax()
        M = SimpleNamespace(exp=jnp.exp, log=jnp.log, sin=jnp.sin, cos=jnp.cos, tanh=jnp.tanh, maximum=jnp.maximum)
        f = w.f
        n = w.n
        fn = jax.value_and_grad(lambda x: f([x[i] for i in range(n)], M))
        compiled, compile_s = _jax_compiled(fn, w.x0)

        def count():
            return len(jax.make_jaxpr(lambda x: f([x[i] for i in range(n)], M))(jnp.asarray(w.x0)).jaxpr.eqns)

        return Prepared(_jax_grad_fn(compiled), ops=count, ops_note="jaxpr equations of f", compile_s=compile_s)


class JaxVec(Adapter):
    key = "jax_vec"
    label = "JAX jit(value_and_grad), vectorized"
    kind = "compiled"
    native_memory = True

    def check(self):
        _jax()

    def skip(self, w):
        return None if w.vec is not None else w.no_vec

    def prepare(self, w):
        jax, jnp = _jax()
        vec = w.vec
        data = tuple(jnp.asarray(d) if isinstance(d, np.ndarray) else d for d in w.vec_data)
        fn = jax.value_and_grad(lambda x: vec(x, jnp, *data))
        compiled, compile_s = _jax_compiled(fn, w.x0)
        return Prepared(_jax_grad_fn(compiled), compile_s=compile_s)


# --- CasADi SX, called through Function.buffer() -----------------------------------------------


def _casadi():
    try:
        import casadi
    except ImportError as e:
        raise Unavailable(f"not installed ({e})") from None
    return casadi


def _casadi_graph(w):
    """(ca, x, y, gradient, seconds): the workload's SX graph and its gradient."""
    ca = _casadi()
    M = SimpleNamespace(exp=ca.exp, log=ca.log, sin=ca.sin, cos=ca.cos, tanh=ca.tanh, maximum=ca.fmax)
    n = w.n
    t0 = time.perf_counter()
    x = ca.SX.sym("x", n)
    y = w.f([x[i] for i in range(n)], M)
    g = ca.gradient(y, x)
    return ca, x, y, g, time.perf_counter() - t0


def _casadi_prepared(ca, F, x, y, n, compile_s):
    buf, trigger = F.buffer()
    xin = np.empty(n)
    fout = np.empty(1)
    gout = np.empty(n)
    buf.set_arg(0, memoryview(xin))
    buf.set_res(0, memoryview(fout))
    buf.set_res(1, memoryview(gout))

    def grad(x_):
        xin[:] = x_
        trigger()
        return float(fout[0]), gout.copy()

    def count():
        return ca.Function("f0", [x], [y]).n_instructions()

    p = Prepared(grad, ops=count, ops_note="SX instructions of f (inputs included)", compile_s=compile_s)
    p.F = F
    p.instructions = F.n_instructions()
    p.buffer = (xin, fout, gout, trigger, buf)
    return p


class CasadiSX(Adapter):
    key = "casadi"
    label = "CasADi SX Function (VM), buffer() call"
    kind = "replay"
    native_memory = True

    def check(self):
        _casadi()

    def prepare(self, w):
        t0 = time.perf_counter()
        ca, x, y, g, _ = _casadi_graph(w)
        F = ca.Function("f", [x], [y, g])
        return _casadi_prepared(ca, F, x, y, w.n, time.perf_counter() - t0)


_JIT_DIR = []


def _jit_dir():
    """One temporary directory per process for CasADi's C sources and shared objects
    (CasADi writes into the working directory otherwise), removed at exit."""
    if not _JIT_DIR:
        import atexit
        import shutil
        import tempfile

        d = tempfile.mkdtemp(prefix="jitad-bench-casadi-")
        atexit.register(shutil.rmtree, d, True)
        _JIT_DIR.append(d)
    return _JIT_DIR[0]


class CasadiJit(Adapter):
    """CasADi's C code generation, compiled by gcc when the Function is built (``jit``),
    called through the same ``buffer()`` as the SX VM.

    CasADi's shell compiler passes no optimization flag by default (gcc's -O0). -O1 was
    chosen from a trial on Rosenbrock n=1000 (16K instructions with the gradient) on this
    machine, 2026-11-30: -O0 compiled in 1.9 s and ran 30 µs per call (slower than the VM),
    -O1 12-14 s and 12-15 µs, -O2 22 s and 20 µs, -O3 33 s and 19 µs.

    The C compile grows fast with the size of the code: a cell is skipped when its compile,
    predicted from the seconds per op measured on the previous workload (or the Rosenbrock
    sweep), exceeds ``cap_s``, and gcc is killed (``timeout -s KILL``) when it runs past the
    cap anyway.
    """

    key = "casadi_jit"
    flags = ("-O1",)
    label = "CasADi SX Function, C jit (gcc -O1), buffer() call"
    kind = "compiled"
    native_memory = True
    cap_s = 90.0
    seconds_per_op = 1.5e-3  # replaced by measurements (Rosenbrock sweep, previous workload)
    slope_source = "a default estimate, nothing measured yet"

    def check(self):
        import shutil

        _casadi()
        for tool in ("gcc", "timeout"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} not found: CasADi's shell JIT compiler needs it")

    def predicted(self, w):
        return self.seconds_per_op * (w.meta.get("ref_ops") or 0)

    def skip(self, w):
        predicted = self.predicted(w)
        if predicted > self.cap_s:
            return (
                f"C compile predicted {predicted:.{0 if predicted >= 10 else 1}f} s "
                f"({self.seconds_per_op * 1e3:.2f} ms/op, {self.slope_source}) > {self.cap_s:g} s cap"
            )
        return None

    @classmethod
    def learn(cls, seconds, ops, source):
        """Use a measured compile (seconds for ops tape entries; source: "measured on ...")
        for the next predictions."""
        if seconds and ops and ops >= 500:
            cls.seconds_per_op = seconds / ops
            cls.slope_source = source

    def prepare(self, w):
        t0 = time.perf_counter()
        ca, x, y, g, build_s = _casadi_graph(w)
        cap = max(1, int(round(self.cap_s)))
        opts = {
            "jit": True,
            "compiler": "shell",
            "jit_name": "jit_f",
            "jit_cleanup": False,  # the directory goes at exit (CasADi would warn deleting after it)
            "jit_options": {
                "flags": list(self.flags),
                "compiler": f"timeout -s KILL {cap} gcc",
                "directory": _jit_dir() + "/",
                "cleanup": False,
            },
        }
        t1 = time.perf_counter()
        try:
            F = ca.Function("f", [x], [y, g], opts)
        except RuntimeError as e:
            spent = time.perf_counter() - t1
            if spent >= 0.95 * cap:
                ops = w.meta.get("ref_ops")
                if ops and ops >= 500 and spent / ops > type(self).seconds_per_op:
                    # At least this many seconds per op: the next predictions start from it.
                    type(self).learn(spent, ops, f"at least: gcc killed at the cap on {w.label}")
                raise RuntimeError(
                    f"C compile did not finish within the {cap} s cap: gcc killed after {spent:.0f} s"
                ) from None
            raise
        jit_s = time.perf_counter() - t1
        p = _casadi_prepared(ca, F, x, y, w.n, time.perf_counter() - t0)
        p.note = f"SX build {_secs(build_s)} + C code and gcc {' '.join(self.flags)} {_secs(jit_s)}"
        p.jit_s = jit_s
        return p


ADAPTERS = [
    NumbaHand(),
    JitadEager(),
    JitadReplay(),
    JitadCompiled(),
    CasadiSX(),
    CasadiJit(),
    JaxScalar(),
    JaxVec(),
    TorchScalar(),
    TorchVec(),
    AutogradScalar(),
    AutogradVec(),
    Micrograd(),
    MicrogradNoGC(),
]
