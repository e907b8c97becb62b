"""Recording: ``Value`` scalars whose arithmetic appends entries to the active tape.

Each op evaluates its op-table formula in Python (``math`` is fastest on scalars); where
Python raises instead of giving IEEE ``inf``/``nan`` (``math.log(0)``, ``1 / 0``), the
same formula runs again on NumPy scalars, which give the IEEE result.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeAlias, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import debug, kernels, ops
from .tape import ENTRY, PACK, SPLIT, StaleValueError, Tape, _state, set_leaf

if TYPE_CHECKING:
    from .tape import _Chunk, _Recorder

# The numbers a Value combines with (bools count as ints, NumPy's float64 is a float).
Real: TypeAlias = "float | np.integer[Any] | np.floating[Any]"

def _ieee(code, x, y):
    """Op ``code`` on (x, y) with IEEE results (inf, nan) where Python's math raises: the
    compiled formula, so that recording gets the very bits replay computes (NumPy's SIMD
    math, the other IEEE route, differs from libm in the last bit for pow and atan2)."""
    try:
        v, dx, dy, dxx, dxy, dyy = kernels.evaluate_op(code, float(x), float(y))
    except (ArithmeticError, ValueError):  # NUMBA_DISABLE_JIT=1: that kernel is Python, whose math raises
        with np.errstate(all="ignore"):
            v, dx, dy, dxx, dxy, dyy = (float(r) for r in _numpy_formulas()[code](np.float64(x), np.float64(y)))
    return v, dx, dy, dxx, dxy, dyy


@functools.cache
def _numpy_formulas():
    names = ("exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "sinh", "cosh", "tanh", "hypot", "fmod")
    numpy_math = types.SimpleNamespace(**vars(math))
    numpy_math.__dict__.update({name: getattr(np, name) for name in names})
    numpy_math.__dict__.update(asin=np.arcsin, acos=np.arccos, atan=np.arctan, atan2=np.arctan2, pow=np.power)
    numpy_math.copysign = np.copysign
    return ops.formulas(numpy_math)


class UnguardedConversionWarning(UserWarning):
    """A Value was turned into a Python number while tracing: replay cannot check it."""


def _record(t, code, x, y, a, b, c, formula=None):
    """Append one entry computing op ``code`` on (x, y) to recorder t; return its Value."""
    try:
        v, dx, dy, _, _, _ = (formula or ops.OPS[code].formula)(x, y)
    except (ArithmeticError, ValueError):
        v, dx, dy, _, _, _ = _ieee(code, x, y)
    i = t.n
    if i >= t.limit:
        t.before_op()
    k = t.chunk
    try:
        k.buf += PACK(c, v, dx, dy, a, b, code)
    except MemoryError as e:
        raise _cannot_append(i, e) from None
    t.n = i + 1
    if t.lines is not None:
        debug.check_entry(t, i, code, x, y, v)
    out = object.__new__(Value)
    out._data = v
    out._i = i
    out._t = t
    out._k = k
    return out


def _real(x: object, what: str) -> float:
    """x as a float, for numbers only: no strings, bools, complex numbers or Values."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        if isinstance(x, (complex, np.complexfloating)):
            raise TypeError(f"jitad differentiates real numbers; {what} got the complex number {x!r}")
        raise TypeError(f"{what} needs a real number, got {type(x).__name__} {x!r}")
    return float(x)


def _leaf_value(data: object) -> float:
    """The float a leaf holds: real numbers, bools and 0-d arrays of them (not Values)."""
    if isinstance(data, Value):
        raise TypeError("Value(v) of a Value: use v itself, or v.detach() for a copy without derivative")
    if isinstance(data, np.ndarray) and data.ndim == 0:
        data = data[()]
    if isinstance(data, (bool, np.bool_)):
        return float(data)
    return _real(data, "Value")


def _cannot_append(i, error):
    """The exception for a failed append of entry i."""
    return MemoryError(f"out of memory recording entry {i} of a tape (entry {i}, {i * 56 / 2**30:.2f} GiB recorded)")


def _constant(other):
    """``other`` as a float constant, or NotImplemented for types Value does not combine with."""
    if isinstance(other, (float, int, np.floating, np.integer)):
        return float(other)
    if isinstance(other, (complex, np.complexfloating)):
        raise TypeError("jitad differentiates real numbers; got a complex number")
    return NotImplemented


def _foreign(t, *values):
    """Raise the error that explains why ``values`` cannot be combined on recorder t."""
    for v in values:
        if v._t is t:
            continue
        if not v._t.alive:
            raise StaleValueError(f"{v!r} is from a tape that was reset; its entries are gone")
        if v._t.thread != t.thread:
            raise StaleValueError(f"{v!r} was recorded in another thread; each thread records on its own tape")
        if t.tracing:
            raise StaleValueError(
                f"{v!r} is an eager Value used inside a traced function, whose tape is another one. "
                "Pass its number as a parameter (jitad.trace(f, x0, w.item()) with f(x, w)), or use "
                "w.item() as a constant"
            )
        raise StaleValueError(
            f"{v!r} is from another tape than this thread's active one; "
            "ops can only combine Values of the active tape (enter `with tape:` to make a tape active)"
        )


# Whether a Value's tape is the active one in this thread: a thread-local lookup per op
# costs more than this C call (a tape is only ever active in the thread that records on it).
_thread = threading.get_ident


def _binary(
    code: int, reflected: bool = False, identity: float | None = None
) -> Callable[[Value, Value | Real], Value]:
    """The method ``self <op> other`` (``other <op> self`` when reflected). (With a list or
    tuple ``other`` it broadcasts to an object array, as NumPy would; not in its type.)"""

    formula = ops.OPS[code].formula

    def method(self, other):
        t = self._t
        if t.active != _thread():
            _foreign(_state.rec, self)
        if type(other) is Value:
            if other._t is not t:
                _foreign(t, other)
            if reflected:
                return _record(t, code, other._data, self._data, other._i, self._i, 0.0, formula)
            return _record(t, code, self._data, other._data, self._i, other._i, 0.0, formula)
        c = float(other) if type(other) is float or type(other) is int else _constant(other)
        if c is NotImplemented:
            if isinstance(other, (list, tuple)):
                # As NumPy broadcasts a number against a list: v - [1, 2] is [v - 1, v - 2].
                items = np.asarray(other, dtype=object)
                for o in items.flat:  # all checked before anything is recorded
                    if not isinstance(o, Value) and _constant(o) is NotImplemented:
                        raise TypeError(f"Values combine with real numbers and Values, got {type(o).__name__} {o!r}")
                return np.frompyfunc(lambda o: method(self, o), 1, 1)(items)
            return NotImplemented
        if c == identity:
            return self
        if reflected:
            return _record(t, code, c, self._data, -1, self._i, c, formula)
        return _record(t, code, self._data, c, self._i, -1, c, formula)

    return method


def _unary(code: int) -> Callable[[Value], Value]:
    formula = ops.OPS[code].formula

    def method(self):
        t = self._t
        if t.active != _thread():
            _foreign(_state.rec, self)
        return _record(t, code, self._data, 0.0, self._i, -1, 0.0, formula)

    method.__name__ = ops.NAMES[code]
    method.__doc__ = f"``{ops.NAMES[code]}`` of this Value, recorded on the tape."
    return method


_C = ops.CODE


class Value:
    """A recorded scalar: ``.data`` is its value, ``.grad`` its accumulated gradient.

    >>> x = Value(2.0); y = x * x + 1; y.backward(); x.grad
    4.0
    """

    __slots__ = ("_data", "_i", "_t", "_k", "__weakref__")
    _data: float  # the value
    _i: int  # sequence number of its entry
    _t: _Recorder  # the storage of its tape
    _k: _Chunk  # the chunk holding its entry

    if TYPE_CHECKING:
        # Installed after the class body, from the op table (see there).
        def __lt__(self, other: Value | Real) -> bool: ...
        def __le__(self, other: Value | Real) -> bool: ...
        def __gt__(self, other: Value | Real) -> bool: ...
        def __ge__(self, other: Value | Real) -> bool: ...
        def __eq__(self, other: object) -> bool: ...
        def __ne__(self, other: object) -> bool: ...
        def sum(self, axis: None = None, dtype: Any = None, out: None = None, keepdims: bool = False,
                initial: Value | Real | None = None, where: Literal[True] = True) -> Value: ...
        def prod(self, axis: None = None, dtype: Any = None, out: None = None, keepdims: bool = False,
                 initial: Value | Real | None = None, where: Literal[True] = True) -> Value: ...
        def max(self, axis: None = None, dtype: Any = None, out: None = None, keepdims: bool = False,
                initial: Value | Real | None = None, where: Literal[True] = True) -> Value: ...
        def min(self, axis: None = None, dtype: Any = None, out: None = None, keepdims: bool = False,
                initial: Value | Real | None = None, where: Literal[True] = True) -> Value: ...
        def mean(self, axis: None = None, dtype: Any = None, out: None = None, keepdims: bool = False,
                 where: Literal[True] = True) -> Value: ...
        def clip(self, min: Value | Real | None = None, max: Value | Real | None = None) -> Value: ...
        def conjugate(self) -> Value: ...
        def sign(self) -> Value: ...
        def erf(self) -> Value: ...
        def erfc(self) -> Value: ...

    def __init__(self, data: Real | np.bool_ | NDArray[Any]) -> None:
        if type(data) is not float:
            data = _leaf_value(data)
        t = _state.rec
        i = t.n
        k = t.chunk
        if i >= t.full or (k.first_op is not None and i - k.first_op >= SPLIT):
            t.roll()
            k = t.chunk
        try:
            k.buf += PACK(0.0, data, 0.0, 0.0, -1, -1, ops.LEAF)
        except MemoryError as e:
            raise _cannot_append(i, e) from None
        t.n = i + 1
        t.limit = 0  # the next op decides whether this run of leaves gets a chunk of its own
        self._data = data
        self._i = i
        self._t = t
        self._k = k

    # reading ------------------------------------------------------------------------------
    @property
    def data(self) -> float:
        """The value. Settable on a leaf (``p.data -= lr * p.grad``); a computed Value's
        value is a function of its inputs, so setting it raises."""
        if self._t.tracing:
            _warn_unguarded("reading .data")
        return self._data

    @data.setter
    def data(self, value: Real | np.bool_ | NDArray[Any]) -> None:
        t = self._t
        if not t.alive:
            raise StaleValueError(f"{self!r} is from a tape that was reset; its entries are gone")
        if t.tracing:
            raise RuntimeError("setting .data inside a traced function cannot be replayed; compute a new Value")
        value = _leaf_value(value)
        if not set_leaf(self._k, self._i, value, t.n):
            raise AttributeError(
                f".data of {self!r} cannot be set: it is computed from other Values (its value is a function "
                "of its inputs); only leaves, made by Value(x), can be set"
            )
        self._data = value

    def item(self) -> float:
        """The value as a Python float (no derivative flows through it)."""
        if self._t.tracing:
            _warn_unguarded("v.item()")
        return self._data

    @property
    def grad(self) -> float:
        """d(output)/d(self) accumulated by ``backward()`` calls; reset with ``v.grad = 0``
        (or ``None``)."""
        t = self._t
        if not t.alive:
            raise StaleValueError(f"{self!r} is from a tape that was reset; its gradient is gone")
        return _grad_of(self)

    @grad.setter
    def grad(self, value: Real | None) -> None:
        t = self._t
        if not t.alive:
            raise StaleValueError(f"{self!r} is from a tape that was reset")
        value = 0.0 if value is None else _real(value, ".grad")
        j = self._i - self._k.base
        _grads(self._k, j + 1)[j] = value

    @property
    def tape(self) -> Tape:
        """The tape this Value is recorded on."""
        return self._t.tape

    def __repr__(self) -> str:
        if not self._t.alive:
            return f"Value(data={self._data}, grad=<tape reset>)"
        return f"Value(data={self._data}, grad={_grad_of(self)})"

    def __format__(self, spec: str) -> str:
        return format(self._data, spec) if spec else repr(self)

    def __float__(self) -> NoReturn:
        # Python calls this for float(v), math.sin(v) and NumPy's cast into a float array
        # alike: each would drop the derivative without a trace, so none is allowed.
        raise TypeError(
            f"float() of {self!r} would drop its derivative (this is also what math.sin(v) and storing "
            "Values into a float array do): use v.item() or v.data for the number, jitad.sin(v) / np.sin(v) "
            "for functions, and object arrays (dtype=object) for arrays of Values"
        )

    def __int__(self) -> int:
        if self._t.tracing:
            _warn_unguarded("int(v)")
        return int(self._data)

    def __bool__(self) -> bool:
        if self._t.tracing:
            _warn_unguarded("bool(v)")
        return self._data != 0.0

    def __hash__(self) -> int:
        return id(self)

    # copies: a Value names an entry; copying never drags its tape along -------------------
    def __copy__(self) -> Value:
        return self  # the same entry (like copying a reference to it)

    def __deepcopy__(self, memo: dict[int, Any]) -> Value:
        # A new leaf with the same value and gradient: deep copies of a model are independent.
        out = Value(self._data)
        g = _grad_of(self) if self._t.alive else 0.0
        if g:
            out.grad = g
        return out

    def __reduce__(self) -> tuple[type[Value], tuple[float]]:
        return Value, (self._data,)  # unpickles as a new leaf holding the value

    # differentiation ----------------------------------------------------------------------
    def backward(self, gradient: Real = 1.0, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(w) * gradient into ``w.grad`` for every Value w recorded
        before self (PyTorch semantics: repeated calls add up; zero with ``tape.zero_grad()``
        or ``w.grad = 0``). The graph lives as long as a Value refers to it, so a second
        ``backward()`` always works: ``retain_graph`` is accepted for PyTorch code and has no
        effect. ``.grad`` is a number: derivatives to differentiate again come from
        ``jitad.gradients(y, wrt, create_graph=True)``."""
        if create_graph:
            raise TypeError(
                "backward(create_graph=True): .grad holds numbers in jitad; use "
                "jitad.gradients(y, wrt, create_graph=True), which returns Values to differentiate again"
            )
        chunks, starts, adj = _sweep(self, _real(gradient, "the gradient seed of backward"))
        for c, start in zip(chunks, starts.tolist()):
            part = adj[start : start + len(c)]
            _grads(c, part.shape[0])[: part.shape[0]] += part

    def detach(self) -> Value:
        """This value without derivative: ``jitad.stop_gradient(self)``."""
        return stop_gradient(self)

    # arithmetic ---------------------------------------------------------------------------
    __add__ = _binary(_C["add"], identity=0.0)
    __radd__ = _binary(_C["add"], reflected=True, identity=0.0)
    __sub__ = _binary(_C["sub"], identity=0.0)
    __rsub__ = _binary(_C["sub"], reflected=True)
    __mul__ = _binary(_C["mul"], identity=1.0)
    __rmul__ = _binary(_C["mul"], reflected=True, identity=1.0)
    __truediv__ = _binary(_C["div"], identity=1.0)
    __rtruediv__ = _binary(_C["div"], reflected=True)
    _pow = _binary(_C["pow"])
    _powc = _binary(_C["powc"], identity=1.0)
    __rpow__ = _binary(_C["pow"], reflected=True)

    def __pow__(self, other: Value | Real) -> Value:
        return self._pow(other) if type(other) is Value else self._powc(other)

    __neg__ = _unary(_C["neg"])
    __abs__ = _unary(_C["abs"])

    def __pos__(self) -> Value:
        return self

    relu = _unary(_C["relu"])
    tanh = _unary(_C["tanh"])
    exp = _unary(_C["exp"])
    log = _unary(_C["log"])
    sin = _unary(_C["sin"])
    cos = _unary(_C["cos"])
    sqrt = _unary(_C["sqrt"])
    sigmoid = _unary(_C["sigmoid"])
    # NumPy calls these by name on object arrays (np.sin(array_of_values)).
    tan = _unary(_C["tan"])
    arcsin = _unary(_C["asin"])
    arccos = _unary(_C["acos"])
    arctan = _unary(_C["atan"])
    sinh = _unary(_C["sinh"])
    cosh = _unary(_C["cosh"])
    log1p = _unary(_C["log1p"])
    expm1 = _unary(_C["expm1"])
    arctan2 = _binary(_C["atan2"])
    hypot = _binary(_C["hypot"])
    # Piecewise constant: recorded with zero derivative, so replay recomputes them.
    __floor__ = _unary(_C["floor"])
    __ceil__ = _unary(_C["ceil"])
    __trunc__ = _unary(_C["trunc"])
    __mod__ = _binary(_C["mod"])
    __rmod__ = _binary(_C["mod"], reflected=True)
    __floordiv__ = _binary(_C["floordiv"])
    __rfloordiv__ = _binary(_C["floordiv"], reflected=True)
    floor = __floor__
    ceil = __ceil__
    trunc = __trunc__
    rint = _unary(_C["rint"])

    def __divmod__(self, other: Value | Real) -> tuple[Value, Value]:
        return self // other, self % other

    def __rdivmod__(self, other: Value | Real) -> tuple[Value, Value]:
        return other // self, other % self

    def __round__(self, ndigits: int | None = None) -> Value:
        # A Value, as torch.round: half to even; with ndigits, rint(v * 10**n) / 10**n.
        if not ndigits:
            return self.rint()
        scale = 10.0**ndigits
        return (self * scale).rint() / scale

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        fn = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or fn is None or kwargs:
            return NotImplemented
        if any(isinstance(v, np.ndarray) and v.ndim > 0 for v in inputs):
            # Elementwise over arrays, broadcast: jitad's function on each element (NumPy
            # has no object loop for some ufuncs, e.g. logaddexp, and its object loops call
            # methods that floats lack, e.g. np.sin on [Value, 2.0]).
            boxed = [_box(v) if isinstance(v, Value) else v for v in inputs]  # no call back here
            return np.frompyfunc(fn, len(inputs), 1)(*boxed)
        # NumPy scalars become Python floats, or np.float64(2) * v would come back here.
        return fn(*(v.item() if isinstance(v, (np.ndarray, np.generic)) else v for v in inputs))


def _box(v):
    """A 0-d object array holding v."""
    out = np.empty((), dtype=object)
    out[()] = v
    return out


def _comparison(code: int, swap: bool) -> Callable[[Value, Any], bool]:
    record = _binary(code, reflected=swap)

    def method(self, other):
        cond = record(self, other)
        if cond is NotImplemented:
            return NotImplemented
        t = cond._t
        outcome = 1.0 if cond._data != 0.0 else 0.0
        guard = _record(t, ops.GUARD, cond._data, outcome, cond._i, -1, outcome)
        if t.tracing:
            t.sites[guard._i] = debug.caller_site()
        return outcome == 1.0

    return method


# Comparisons return Python bools; each records the comparison and a guard holding its
# outcome, which replay re-checks.
Value.__lt__ = _comparison(_C["lt"], False)
Value.__le__ = _comparison(_C["le"], False)
Value.__gt__ = _comparison(_C["lt"], True)  # a > b is b < a
Value.__ge__ = _comparison(_C["le"], True)
Value.__eq__ = _comparison(_C["eq"], False)
Value.__ne__ = _comparison(_C["ne"], False)


def _warn_unguarded(what):
    warnings.warn(
        f"{what} while tracing turns a Value into a Python number: a branch taken on it is "
        "not recorded, so replay at other inputs cannot notice when it would change. "
        "Use comparisons of Values (guarded) or jitad.where/maximum/minimum (branch-free).",
        UnguardedConversionWarning,
        stacklevel=3,
    )


# --- reverse sweep ------------------------------------------------------------------------


def _grad_of(v):
    k = v._k
    g = k.grad
    j = v._i - k.base
    return float(g[j]) if g is not None and j < g.shape[0] else 0.0


def _sweep(y, seed=1.0):
    """The chunks y depends on (oldest first), where each starts among their gathered
    entries, and the adjoint of every gathered entry: d y / d entry * seed."""
    if not isinstance(y, Value):
        raise TypeError(f"backward needs a Value, got {type(y).__name__}")
    t = y._t
    if not t.alive:
        raise StaleValueError(f"{y!r} is from a tape that was reset; its entries are gone")
    if t.tracing:
        raise RuntimeError(
            "backward() and gradients() inside a traced function would freeze their numbers into the tape; "
            "use gradients(y, wrt, create_graph=True), whose results are recorded and replay at new inputs"
        )
    k = y._k
    if k is t.chunk and (k.deps or len(k.buf) >= SPLIT * ENTRY.itemsize):
        t.roll()  # close the open chunk: its dependencies become exact, what follows starts afresh
    if not k.deps and not k.mods:
        # y's graph lies in its own chunk (the common case for small graphs): sweep it where it is.
        last = y._i - k.base
        adj = np.zeros(last + 1)
        adj[last] = seed
        e = np.frombuffer(k.buf, dtype=ENTRY, count=last + 1)
        kernels.backward_from(e["a"], e["b"], e["da"], e["db"], adj, last, k.base)
        del e  # the open chunk's buffer cannot grow while a view of it is alive
        return [k], _START, adj
    chunks = t.reachable(k)
    e, starts = t.gather(chunks)
    last = int(starts[chunks.index(k)]) + y._i - k.base
    _refuse_stale_leaves(y, chunks, e, starts, last)
    adj = np.zeros(last + 1)
    adj[last] = seed
    kernels.backward(e["a"], e["b"], e["da"], e["db"], adj, last)
    return chunks, starts, adj


_START = np.zeros(1, dtype=np.int64)


def _grads(chunk, n):
    """The chunk's gradient array, holding at least n entries (an open chunk grows)."""
    g = chunk.grad
    if g is None or g.shape[0] < n:
        grown = np.zeros(max(n, len(chunk)))
        if g is not None:
            grown[: g.shape[0]] = g
        chunk.grad = g = grown
    return g


def _refuse_stale_leaves(y, chunks, e, starts, last):
    """Raise if y's graph used a leaf whose .data was set afterwards: its partials hold the
    old value, so its gradient would be stale."""
    computed = [c.first_op for c in chunks if c.first_op is not None]
    if not computed:
        return
    first = min(computed)
    leaves, stamps = [], []
    for c, start in zip(chunks, starts.tolist()):
        for i, stamp in (c.mods or {}).items():
            # A leaf after y (later in y's chunk) cannot be in y's graph.
            if stamp > first and start + i - c.base <= last:
                leaves.append(start + i - c.base)
                stamps.append(stamp)
    if not leaves:
        return
    n = last + 1
    counts = np.diff(np.append(starts, e.shape[0]))
    seq = (np.repeat(np.array([c.base for c in chunks]) - starts, counts) + np.arange(e.shape[0]))[:n]
    stamp_at = np.zeros(n, dtype=np.int64)
    stamp_at[leaves] = stamps
    a, b = e["a"][:n], e["b"][:n]
    used_old = np.zeros(n, dtype=np.bool_)
    for operand in (a, b):
        ok = operand >= 0
        used_old[ok] |= seq[ok] < stamp_at[operand[ok]]
    if not used_old.any():
        return
    reach = np.zeros(n)
    reach[last] = 1.0
    ones = np.ones(n)
    kernels.backward(a, b, ones, ones, reach, last)
    if (used_old & (reach != 0.0)).any():
        raise StaleValueError(
            f"{y!r} was computed from a leaf whose .data was set afterwards: its gradient would be stale; "
            "compute it again from the current values"
        )


@overload
def gradients(
    y: Value, wrt: Value | Sequence[Value] | NDArray[np.object_], create_graph: Literal[False] = False
) -> NDArray[np.float64]: ...
@overload
def gradients(
    y: Value, wrt: Value | Sequence[Value] | NDArray[np.object_], create_graph: Literal[True]
) -> NDArray[np.object_]: ...
@overload
def gradients(
    y: Value, wrt: Value | Sequence[Value] | NDArray[np.object_], create_graph: bool = False
) -> NDArray[np.float64] | NDArray[np.object_]: ...
def gradients(
    y: Value, wrt: Value | Sequence[Value] | NDArray[np.object_], create_graph: bool = False
) -> NDArray[np.float64] | NDArray[np.object_]:
    """d y / d w for every Value w in ``wrt`` (leaves or intermediate nodes), as an ndarray.

    ``.grad`` is not touched. ``wrt`` may be one Value (returns a 0-d array), a sequence
    or an array of Values (returns an array of the same shape).

    ``create_graph=True`` (PyTorch's name) records the reverse sweep itself on the tape and
    returns an object array of Values: derivatives that can be differentiated again, to
    any order, eagerly or inside ``jitad.trace`` (where they replay at new inputs).
    """
    if not isinstance(y, Value):
        raise TypeError(f"gradients: y must be a Value, got {type(y).__name__}")
    w = np.asarray(wrt, dtype=object)
    flat = w.ravel()
    for v in flat:
        if not isinstance(v, Value):
            raise TypeError(f"gradients: wrt must hold Values, got {type(v).__name__}")
        if v._t is not y._t:
            raise StaleValueError(f"{v!r} is not on the tape of {y!r}")
    if create_graph:
        return _recorded_gradients(y, flat).reshape(w.shape)
    chunks, starts, adj = _sweep(y)
    where = {id(c): start for c, start in zip(chunks, starts.tolist())}
    out = np.zeros(flat.size)
    for k, v in enumerate(flat):
        start = where.get(id(v._k))
        if start is not None:  # a chunk y does not reach has no influence on it
            p = start + v._i - v._k.base
            if p < adj.shape[0]:  # entries recorded after y do not influence it either
                out[k] = adj[p]
    return out.reshape(w.shape)


# --- gradients as Values: the reverse sweep, recorded --------------------------------------

_ON_VALUES = {}  # opcode -> its formula run on Values, so that its partials are recorded ops


def _formulas_on_values():
    if not _ON_VALUES:
        number = lambda v: v._data if isinstance(v, Value) else v  # noqa: E731
        on_numbers = lambda f: lambda *args: f(*map(number, args))  # noqa: E731
        namespace = types.SimpleNamespace(
            exp=exp, log=log, log1p=log1p, expm1=expm1, sqrt=sqrt, sin=sin, cos=cos, tan=tan, asin=asin,
            acos=acos, atan=atan, atan2=atan2, sinh=sinh, cosh=cosh, tanh=tanh, hypot=hypot, erf=erf, erfc=erfc,
            lgamma=lgamma, floor=floor, pow=lambda a, b: a**b,
            # Used on values only where the result is piecewise constant (parities, signs).
            fmod=on_numbers(math.fmod), copysign=on_numbers(math.copysign), isnan=on_numbers(math.isnan),
            inf=math.inf, nan=math.nan, pi=math.pi,
        )  # fmt: skip
        _ON_VALUES.update(ops.formulas(namespace, helpers={"_floor": floor, "_floor_divide": floor_divide}))
    return _ON_VALUES


def _recorded_gradients(y, wrt):
    """d y / d w for the Values ``wrt``, as Values: the reverse sweep over y's graph, each
    local partial computed by its op-table formula run on Values (so recorded, with its
    own derivatives: any order works). A branch inside a formula is a guarded comparison."""
    t = y._t
    if not t.alive:
        raise StaleValueError(f"{y!r} is from a tape that was reset; its entries are gone")
    formulas = _formulas_on_values()
    chunks = t.reachable(y._k)
    e, starts = t.gather(chunks)
    where = {id(c): start for c, start in zip(chunks, starts.tolist())}
    last = where[id(y._k)] + y._i - y._k.base
    owner = np.repeat(np.arange(len(chunks)), np.diff(np.append(starts, e.shape[0])))
    rows = e[: last + 1].tolist()  # (c, val, da, db, a, b, op) per entry, as Python numbers

    def node(p):
        # A Value for entry p: it refers to the entry, so the partials recorded from it
        # link into the graph y was recorded on.
        chunk = chunks[owner[p]]
        v = object.__new__(Value)
        v._data = rows[p][1]
        v._i = chunk.base + p - int(starts[owner[p]])
        v._t = t
        v._k = chunk
        return v

    adj = {last: 1.0}
    done = {}
    for p in range(last, -1, -1):
        g = adj.pop(p, None)
        if g is None:
            continue
        done[p] = g
        c, _, _, _, a, b, code = rows[p]
        op = ops.OPS[code]
        if op.arity == 0 or op.flat:
            continue
        x = node(a) if a >= 0 else c
        z = node(b) if b >= 0 else c
        _, dx, dy, _, _, _ = formulas[code](x, z)
        for operand, partial in ((a, dx), (b, dy)):
            if operand >= 0 and not (type(partial) is float and partial == 0.0):
                term = partial * g
                adj[operand] = adj[operand] + term if operand in adj else term
    out = np.empty(len(wrt), dtype=object)
    for k, v in enumerate(wrt):
        start = where.get(id(v._k))
        p = None if start is None else start + v._i - v._k.base
        g = done.get(p, 0.0) if p is not None and p <= last else 0.0
        out[k] = g if isinstance(g, Value) else Value(g)  # a constant derivative: a leaf holding it
    return out


# --- module functions: Values or plain numbers alike ------------------------------------


class UnaryFunction(Protocol):
    """The type of ``jitad.exp`` and the other one-argument functions: a Value gives a
    recorded Value, a number a float, an array an object array of either."""

    @overload
    def __call__(self, x: Value, /) -> Value: ...
    @overload
    def __call__(self, x: Real, /) -> float: ...
    @overload
    def __call__(self, x: NDArray[Any], /) -> NDArray[np.object_]: ...


class BinaryFunction(Protocol):
    """The type of ``jitad.atan2``, ``maximum`` and the other two-argument functions."""

    @overload
    def __call__(self, x: Value, y: Value | Real, /) -> Value: ...
    @overload
    def __call__(self, x: Real, y: Value, /) -> Value: ...
    @overload
    def __call__(self, x: Real, y: Real, /) -> float: ...
    @overload
    def __call__(self, x: NDArray[Any], y: ArrayLike | Value, /) -> NDArray[np.object_]: ...
    @overload
    def __call__(self, x: ArrayLike | Value, y: NDArray[Any], /) -> NDArray[np.object_]: ...


def _function(code: int, doc: str | None) -> Any:
    arity = ops.OPS[code].arity
    method = _unary(code) if arity == 1 else _binary(code)
    rmethod = None if arity == 1 else _binary(code, reflected=True)
    name = ops.NAMES[code]

    def apply(*args):
        if len(args) != arity:
            raise TypeError(f"{name}() takes {arity} argument{'s' * (arity > 1)}, got {len(args)}")
        if any(isinstance(x, np.ndarray) and x.ndim > 0 for x in args):
            return np.vectorize(apply, otypes=[object])(*args)
        if isinstance(args[0], Value):
            out = method(*args)
        elif arity == 2 and isinstance(args[1], Value):
            out = rmethod(args[1], args[0])
        else:
            out = None
        if out is NotImplemented:
            bad = args[1] if isinstance(args[0], Value) else args[0]
            raise TypeError(f"{name}() needs Values or real numbers, got {type(bad).__name__}")
        if out is not None:
            return out
        xs = [_constant(x) for x in args]
        if NotImplemented in xs:
            bad = next(x for x, c in zip(args, xs) if c is NotImplemented)
            raise TypeError(f"{name}() needs Values or real numbers, got {type(bad).__name__}")
        return _ieee_python(code, xs[0], xs[1] if arity == 2 else 0.0)

    apply.__name__ = name
    apply.__qualname__ = name
    apply.__doc__ = doc
    # help() and IDEs read __signature__: show exp(x), atan2(y, x), not apply(*args).
    names = ("x", "y")[:arity]
    if doc and doc.startswith(f"{name}(") and doc.count(",", 0, doc.find(")")) == arity - 1:
        names = tuple(n.strip() for n in doc[len(name) + 1 : doc.find(")")].split(","))
    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names]
    apply.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return apply


def _ieee_python(code, x, y):
    try:
        return ops.OPS[code].formula(x, y)[0]
    except (ArithmeticError, ValueError):
        return float(_ieee(code, x, y)[0])


exp: UnaryFunction = _function(_C["exp"], "e ** x")
log: UnaryFunction = _function(_C["log"], "natural logarithm; log(0) = -inf, log(x < 0) = nan")
log1p: UnaryFunction = _function(_C["log1p"], "log(1 + x), accurate near 0")
expm1: UnaryFunction = _function(_C["expm1"], "e ** x - 1, accurate near 0")
sqrt: UnaryFunction = _function(_C["sqrt"], "square root; sqrt'(0) = inf, sqrt(x < 0) = nan")
sin: UnaryFunction = _function(_C["sin"], "sine")
cos: UnaryFunction = _function(_C["cos"], "cosine")
tan: UnaryFunction = _function(_C["tan"], "tangent")
asin: UnaryFunction = _function(_C["asin"], "arc sine; nan outside [-1, 1]")
acos: UnaryFunction = _function(_C["acos"], "arc cosine; nan outside [-1, 1]")
atan: UnaryFunction = _function(_C["atan"], "arc tangent")
atan2: BinaryFunction = _function(_C["atan2"], "atan2(y, x): angle of the point (x, y), as math.atan2")
sinh: UnaryFunction = _function(_C["sinh"], "hyperbolic sine")
cosh: UnaryFunction = _function(_C["cosh"], "hyperbolic cosine")
tanh: UnaryFunction = _function(_C["tanh"], "hyperbolic tangent")
sigmoid: UnaryFunction = _function(_C["sigmoid"], "1 / (1 + e ** -x), without overflow")
softplus: UnaryFunction = _function(_C["softplus"], "log(1 + e ** x), without overflow")
relu: UnaryFunction = _function(_C["relu"], "max(x, 0), branch-free; relu'(0) = 0")
abs: UnaryFunction = _function(_C["abs"], "|x|, branch-free; abs'(0) = 0")
maximum: BinaryFunction = _function(_C["maximum"], "elementwise max, branch-free; a tie splits the gradient")
minimum: BinaryFunction = _function(_C["minimum"], "elementwise min, branch-free; a tie splits the gradient")
hypot: BinaryFunction = _function(_C["hypot"], "sqrt(x**2 + y**2) without overflow")
floor: UnaryFunction = _function(_C["floor"], "largest integer <= x, as a float; recorded, zero derivative")
ceil: UnaryFunction = _function(_C["ceil"], "smallest integer >= x, as a float; recorded, zero derivative")
trunc: UnaryFunction = _function(_C["trunc"], "x rounded toward zero, as a float; recorded, zero derivative")
rint: UnaryFunction = _function(_C["rint"], "x rounded to the nearest integer, half to even; recorded, zero derivative")
mod: BinaryFunction = _function(_C["mod"], "x % y with the sign of y (Python's %, np.mod); d/dx = 1, d/dy = -(x // y)")
floor_divide: BinaryFunction = _function(_C["floordiv"], "x // y (Python's //); recorded, zero derivative")
fmod: BinaryFunction = _function(_C["fmod"], "C's fmod(x, y) with the sign of x (np.fmod); d/dx = 1, d/dy = -trunc(x / y)")
stop_gradient = _function(
    _C["stop_gradient"], "x with zero derivative; recorded, so a replay recomputes its value at new inputs"
)
less: BinaryFunction = _function(_C["lt"], "x < y as a recorded 1.0/0.0 Value: a branch-free condition for where()")
less_equal: BinaryFunction = _function(_C["le"], "x <= y as a recorded 1.0/0.0 Value, branch-free")
equal: BinaryFunction = _function(_C["eq"], "x == y as a recorded 1.0/0.0 Value, branch-free")
not_equal: BinaryFunction = _function(_C["ne"], "x != y as a recorded 1.0/0.0 Value, branch-free")


if TYPE_CHECKING:  # as less and less_equal (mypy cannot give a def a protocol type)
    greater: BinaryFunction
    greater_equal: BinaryFunction
else:

    def greater(x, y):
        """x > y as a recorded 1.0/0.0 Value: a branch-free condition for where()."""
        return less(y, x)

    def greater_equal(x, y):
        """x >= y as a recorded 1.0/0.0 Value, branch-free."""
        return less_equal(y, x)


_where_true = _function(_C["where_true"], None)
_where_false = _function(_C["where_false"], None)


@overload
def where(cond: Value, a: Value | Real, b: Value | Real) -> Value: ...
@overload
def where(cond: NDArray[Any], a: ArrayLike | Value, b: ArrayLike | Value) -> NDArray[np.object_]: ...
@overload
def where(cond: bool | np.bool_, a: Any, b: Any) -> Any: ...
def where(cond: Any, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` holds, else ``b``.

    With a recorded condition (``jitad.less(x, y)``, ``jitad.greater(x, 0)``, any Value:
    nonzero is true) the choice is recorded and replayed branch-free. With a Python bool
    (``x > 0``) the comparison that made it is already a guard, and the choice is plain.
    """
    if isinstance(cond, Value):
        return _where_true(cond, a) + _where_false(cond, b)
    if isinstance(cond, np.ndarray) and cond.ndim > 0:
        return np.vectorize(where, otypes=[object])(cond, a, b)
    return a if cond else b


_UFUNCS: dict[str, Callable[..., Any]] = {
    "add": lambda x, y: x + y,
    "subtract": lambda x, y: x - y,
    "multiply": lambda x, y: x * y,
    "true_divide": lambda x, y: x / y,
    "divide": lambda x, y: x / y,
    "power": lambda x, y: x**y,
    "negative": lambda x: -x,
    "positive": lambda x: x,
    "absolute": abs,
    "square": lambda x: x * x,
    "less": lambda x, y: x < y,
    "less_equal": lambda x, y: x <= y,
    "greater": lambda x, y: x > y,
    "greater_equal": lambda x, y: x >= y,
    "equal": lambda x, y: x == y,
    "not_equal": lambda x, y: x != y,
    "exp": exp,
    "log": log,
    "log1p": log1p,
    "expm1": expm1,
    "sqrt": sqrt,
    "sin": sin,
    "cos": cos,
    "tan": tan,
    "arcsin": asin,
    "arccos": acos,
    "arctan": atan,
    "arctan2": atan2,
    "sinh": sinh,
    "cosh": cosh,
    "tanh": tanh,
    "maximum": maximum,
    "minimum": minimum,
    "fmax": maximum,
    "fmin": minimum,
    "hypot": hypot,
    "floor": floor,
    "ceil": ceil,
    "trunc": trunc,
    "rint": rint,
    "remainder": mod,
    "fmod": fmod,
    "floor_divide": floor_divide,
}


# Special functions and stable compositions (op table entries), and NumPy's names on Values.

erf: UnaryFunction = _function(_C["erf"], "the error function")
erfc: UnaryFunction = _function(_C["erfc"], "1 - erf(x), accurate where erf(x) is close to 1")
lgamma: UnaryFunction = _function(
    _C["lgamma"], "log|Gamma(x)|; its derivatives are digamma and trigamma; inf at 0, -1, -2, ..."
)
sign: UnaryFunction = _function(_C["sign"], "-1, 0 or 1 (sign(nan) is nan), recorded; its derivative is 0")
log_sigmoid: UnaryFunction = _function(_C["log_sigmoid"], "log(sigmoid(x)) = -softplus(-x), without overflow")
logaddexp: BinaryFunction = _function(
    _C["logaddexp"], "log(e**x + e**y) without overflow; its partials are the softmax weights"
)


def logsumexp(values: Sequence[Value | Real] | NDArray[Any]) -> Value | float:
    """log(sum(exp(values))) of a sequence or array of Values and numbers, without
    overflow; its gradient is softmax(values). An empty sequence gives -inf.

    Recorded as a pairwise tree of ``logaddexp``: n - 1 entries, depth log2(n), and each
    partial a softmax weight of two partial sums, so rounding grows with log2(n), not n.
    """
    items = list(np.asarray(values, dtype=object).ravel())
    if not items:
        return -np.inf
    while len(items) > 1:
        pairs = [logaddexp(items[k], items[k + 1]) for k in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            pairs.append(items[-1])
        items = pairs
    return items[0] if isinstance(items[0], Value) else _real(items[0], "logsumexp")


@overload
def clip(x: Value, lo: Value | Real, hi: Value | Real) -> Value: ...
@overload
def clip(x: Real, lo: Real, hi: Real) -> float: ...
@overload
def clip(x: Any, lo: Any, hi: Any) -> Any: ...
def clip(x: Any, lo: Any, hi: Any) -> Any:
    """x limited to [lo, hi], as np.clip: minimum(maximum(x, lo), hi), branch-free. At
    x == lo or x == hi the gradient splits evenly, as in maximum/minimum and jnp.clip."""
    return minimum(maximum(x, lo), hi)


# Methods NumPy calls on Values: np.sum(v), np.max(v), np.mean(v), ... of a single Value
# (NumPy hands a non-array to its method of that name), np.clip(v, lo, hi), and
# np.conj on object arrays. A Value is a scalar: reductions over it return it.


def _reduction_of_one(name, combine):
    def method(self, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=True):
        if axis not in (None, ()):
            raise np.exceptions.AxisError(f"{name}: axis {axis} is out of bounds for a Value (a scalar)")
        if out is not None or where is not True:
            raise TypeError(f"{name} of a Value takes no out= or where=")
        return self if initial is None else combine(initial, self)

    method.__name__ = name
    method.__doc__ = f"np.{name} of a scalar: the Value itself (combined with ``initial`` when given)."
    return method


def _mean(self, axis=None, dtype=None, out=None, keepdims=False, where=True):
    return _reduction_of_one("mean", None)(self, axis, dtype, out, keepdims, None, where)


def _clip_method(self, min=None, max=None, out=None, **kwargs):
    if out is not None or kwargs:
        raise TypeError("clip of a Value takes no out= or other keywords")
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    return clip(self, lo, hi)


Value.sum = _reduction_of_one("sum", lambda a, b: a + b)
Value.prod = _reduction_of_one("prod", lambda a, b: a * b)
Value.max = _reduction_of_one("max", maximum)
Value.min = _reduction_of_one("min", minimum)
Value.mean = _mean
Value.clip = _clip_method
Value.conjugate = lambda self: self
# Module functions as methods (self is their x); mypy does not match a protocol to a method.
Value.sign = sign  # type: ignore[assignment]
Value.erf = erf  # type: ignore[assignment]
Value.erfc = erfc  # type: ignore[assignment]
Value.fmod = fmod  # type: ignore[attr-defined]  # NumPy's object loop of np.fmod calls it

_UFUNCS.update(
    {
        "sign": sign,
        "logaddexp": logaddexp,
        # Tests of a value are comparisons: bools, recorded with guards like ``x < y``.
        "isnan": lambda x: x != x,
        "isinf": lambda x: abs(x) == math.inf,
        "isfinite": lambda x: abs(x) < math.inf,
        # scipy.special's ufuncs dispatch here too on a Value
        "erf": erf,
        "erfc": erfc,
        "gammaln": lgamma,
        "expit": sigmoid,
        "log_expit": log_sigmoid,
    }
)
