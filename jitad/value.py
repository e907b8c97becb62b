"""Recording: ``Value`` scalars whose arithmetic appends entries to the active tape.

Each op evaluates its op-table formula in Python (``math`` is fastest on scalars); where
Python raises instead of giving IEEE ``inf``/``nan`` (``math.log(0)``, ``1 / 0``), the
same formula runs again on NumPy scalars, which give the IEEE result.
"""

import inspect
import types
import warnings

import numpy as np

from . import debug, kernels, ops
from .tape import MAX_ENTRIES, PACK, StaleValueError, _state

# The same formulas with NumPy's scalar math, which follows IEEE where Python's raises.
_NUMPY_MATH = types.SimpleNamespace(
    **{
        name: getattr(np, name)
        for name in ("exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "sinh", "cosh", "tanh", "hypot")
    },
    asin=np.arcsin,
    acos=np.arccos,
    atan=np.arctan,
    atan2=np.arctan2,
    pow=np.power,
)
_IEEE = {}  # opcode -> its formula reading NumPy's math


def _ieee(code, x, y):
    """Op ``code`` on (x, y) with IEEE results (inf, nan) where Python's math would raise."""
    f = _IEEE.get(code)
    if f is None:
        formula = ops.OPS[code].formula
        f = _IEEE[code] = types.FunctionType(formula.__code__, {**formula.__globals__, "math": _NUMPY_MATH})
    with np.errstate(all="ignore"):
        return tuple(float(r) for r in f(np.float64(x), np.float64(y)))


class UnguardedConversionWarning(UserWarning):
    """A Value was turned into a Python number while tracing: replay cannot check it."""


def _record(t, code, x, y, a, b, c, formula=None):
    """Append one entry computing op ``code`` on (x, y) to recorder t; return its Value."""
    try:
        v, dx, dy, _, _, _ = (formula or ops.OPS[code].formula)(x, y)
    except (ArithmeticError, ValueError):
        v, dx, dy, _, _, _ = _ieee(code, x, y)
    i = t.n
    if i >= MAX_ENTRIES:
        raise _cannot_append(i, None)
    try:
        t.buf += PACK(c, v, dx, dy, a, b, code)
    except (BufferError, MemoryError) as e:
        raise _cannot_append(i, e) from None
    t.n = i + 1
    if t.lines is not None:
        debug.check_entry(t, i, code, x, y, v)
    out = object.__new__(Value)
    out._data = v
    out._i = i
    out._t = t
    return out


def _real(x, what):
    """x as a float, for numbers only: no strings, bools, complex numbers or Values."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        if isinstance(x, (complex, np.complexfloating)):
            raise TypeError(f"jitad differentiates real numbers; {what} got the complex number {x!r}")
        raise TypeError(f"{what} needs a real number, got {type(x).__name__} {x!r}")
    return float(x)


def _cannot_append(i, error):
    """The exception for a failed append of entry i (None: the tape is full)."""
    if error is None:
        return OverflowError(f"a tape holds at most {MAX_ENTRIES} entries (operand indices are int32)")
    if isinstance(error, MemoryError):
        return MemoryError(f"out of memory recording entry {i} of a tape ({i} entries, {i * 48 / 2**30:.2f} GiB)")
    return RuntimeError("cannot record while a view of the tape's entries is alive")


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
        raise StaleValueError(
            f"{v!r} is from another tape than this thread's active one; "
            "ops can only combine Values of the active tape (enter `with tape:` to make a tape active)"
        )


def _binary(code, reflected=False, identity=None):
    """The method ``self <op> other`` (``other <op> self`` when reflected)."""

    formula = ops.OPS[code].formula

    def method(self, other):
        t = _state.rec
        if type(other) is Value:
            if self._t is not t or other._t is not t:
                _foreign(t, self, other)
            if reflected:
                return _record(t, code, other._data, self._data, other._i, self._i, 0.0, formula)
            return _record(t, code, self._data, other._data, self._i, other._i, 0.0, formula)
        c = float(other) if type(other) is float or type(other) is int else _constant(other)
        if c is NotImplemented:
            return NotImplemented
        if self._t is not t:
            _foreign(t, self)
        if c == identity:
            return self
        if reflected:
            return _record(t, code, c, self._data, -1, self._i, c, formula)
        return _record(t, code, self._data, c, self._i, -1, c, formula)

    return method


def _unary(code):
    formula = ops.OPS[code].formula

    def method(self):
        t = _state.rec
        if self._t is not t:
            _foreign(t, self)
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

    __slots__ = ("_data", "_i", "_t", "__weakref__")

    def __init__(self, data):
        if type(data) is not float:
            if isinstance(data, Value):
                raise TypeError("Value(v) of a Value: use v itself (or v + 0 for a new entry)")
            data = _real(data, "Value")
        t = _state.rec
        i = t.n
        if i >= MAX_ENTRIES:
            raise _cannot_append(i, None)
        try:
            t.buf += PACK(0.0, data, 0.0, 0.0, -1, -1, ops.LEAF)
        except (BufferError, MemoryError) as e:
            raise _cannot_append(i, e) from None
        t.n = i + 1
        self._data = data
        self._i = i
        self._t = t

    # reading ------------------------------------------------------------------------------
    @property
    def data(self):
        if self._t.tracing:
            _warn_unguarded("reading .data")
        return self._data

    @property
    def grad(self):
        """d(output)/d(self) accumulated by ``backward()`` calls; reset with ``v.grad = 0``."""
        t = self._t
        if not t.alive:
            raise StaleValueError(f"{self!r} is from a tape that was reset; its gradient is gone")
        g = t.grad
        return float(g[self._i]) if g is not None and self._i < g.shape[0] else 0.0

    @grad.setter
    def grad(self, value):
        t = self._t
        if not t.alive:
            raise StaleValueError(f"{self!r} is from a tape that was reset")
        value = _real(value, ".grad")
        if t.grad is None or t.grad.shape[0] <= self._i:
            t.accumulate_grad(np.zeros(t.n))
        t.grad[self._i] = value

    @property
    def tape(self):
        return self._t.tape

    def __repr__(self):
        t = self._t
        if not t.alive:
            return f"Value(data={self._data}, grad=<tape reset>)"
        g = t.grad
        grad = float(g[self._i]) if g is not None and self._i < g.shape[0] else 0.0
        return f"Value(data={self._data}, grad={grad})"

    def __float__(self):
        if self._t.tracing:
            _warn_unguarded("float(v)")
        return self._data

    def __bool__(self):
        if self._t.tracing:
            _warn_unguarded("bool(v)")
        return self._data != 0.0

    def __hash__(self):
        return id(self)

    # differentiation ----------------------------------------------------------------------
    def backward(self, gradient=1.0):
        """Accumulate d(self)/d(w) * gradient into ``w.grad`` for every Value w recorded
        before self (PyTorch semantics: repeated calls add up; zero with ``tape.zero_grad()``
        or ``w.grad = 0``)."""
        adj = _adjoints(self, _real(gradient, "the gradient seed of backward"))
        self._t.accumulate_grad(adj)

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

    def __pow__(self, other):
        return self._pow(other) if type(other) is Value else self._powc(other)

    __neg__ = _unary(_C["neg"])
    __abs__ = _unary(_C["abs"])

    def __pos__(self):
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

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        fn = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or fn is None or kwargs:
            return NotImplemented
        if any(isinstance(v, np.ndarray) and v.ndim > 0 for v in inputs):
            # Elementwise over arrays: NumPy's object loop calls Value's operators.
            boxed = [np.asarray(v, dtype=object) if isinstance(v, Value) else v for v in inputs]
            return ufunc(*(np.asarray(v).astype(object) for v in boxed))
        # NumPy scalars become Python floats, or np.float64(2) * v would come back here.
        return fn(*(v.item() if isinstance(v, (np.ndarray, np.generic)) else v for v in inputs))


def _comparison(code, swap):
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


def _adjoints(y, seed=1.0):
    """Adjoints d y / d entry of every entry before y on its tape (a fresh array)."""
    if not isinstance(y, Value):
        raise TypeError(f"backward needs a Value, got {type(y).__name__}")
    t = y._t
    if not t.alive:
        raise StaleValueError(f"{y!r} is from a tape that was reset; its entries are gone")
    n = y._i + 1
    adj = np.zeros(n)
    adj[y._i] = seed
    e = t.entries(n)
    try:
        kernels.backward(e["a"], e["b"], e["da"], e["db"], adj, y._i)
    finally:
        del e
    return adj


def gradients(y, wrt):
    """d y / d w for every Value w in ``wrt`` (leaves or intermediate nodes), as an ndarray.

    ``.grad`` is not touched. ``wrt`` may be one Value (returns a 0-d array), a sequence
    or an array of Values (returns an array of the same shape).
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
    adj = _adjoints(y)
    idx = np.fromiter((v._i for v in flat), dtype=np.int64, count=flat.size)
    out = np.zeros(flat.size)
    before = idx < adj.shape[0]  # entries recorded after y do not influence it
    out[before] = adj[idx[before]]
    return out.reshape(w.shape)


# --- module functions: Values or plain numbers alike ------------------------------------


def _function(code, doc):
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
    apply.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names])
    return apply


def _ieee_python(code, x, y):
    try:
        return ops.OPS[code].formula(x, y)[0]
    except (ArithmeticError, ValueError):
        return float(_ieee(code, x, y)[0])


exp = _function(_C["exp"], "e ** x")
log = _function(_C["log"], "natural logarithm; log(0) = -inf, log(x < 0) = nan")
log1p = _function(_C["log1p"], "log(1 + x), accurate near 0")
expm1 = _function(_C["expm1"], "e ** x - 1, accurate near 0")
sqrt = _function(_C["sqrt"], "square root; sqrt'(0) = inf, sqrt(x < 0) = nan")
sin = _function(_C["sin"], "sine")
cos = _function(_C["cos"], "cosine")
tan = _function(_C["tan"], "tangent")
asin = _function(_C["asin"], "arc sine; nan outside [-1, 1]")
acos = _function(_C["acos"], "arc cosine; nan outside [-1, 1]")
atan = _function(_C["atan"], "arc tangent")
atan2 = _function(_C["atan2"], "atan2(y, x): angle of the point (x, y), as math.atan2")
sinh = _function(_C["sinh"], "hyperbolic sine")
cosh = _function(_C["cosh"], "hyperbolic cosine")
tanh = _function(_C["tanh"], "hyperbolic tangent")
sigmoid = _function(_C["sigmoid"], "1 / (1 + e ** -x), without overflow")
softplus = _function(_C["softplus"], "log(1 + e ** x), without overflow")
relu = _function(_C["relu"], "max(x, 0), branch-free; relu'(0) = 0")
abs = _function(_C["abs"], "|x|, branch-free; abs'(0) = 0")
maximum = _function(_C["maximum"], "elementwise max, branch-free; a tie splits the gradient")
minimum = _function(_C["minimum"], "elementwise min, branch-free; a tie splits the gradient")
hypot = _function(_C["hypot"], "sqrt(x**2 + y**2) without overflow")
less = _function(_C["lt"], "x < y as a recorded 1.0/0.0 Value: a branch-free condition for where()")
less_equal = _function(_C["le"], "x <= y as a recorded 1.0/0.0 Value, branch-free")
equal = _function(_C["eq"], "x == y as a recorded 1.0/0.0 Value, branch-free")
not_equal = _function(_C["ne"], "x != y as a recorded 1.0/0.0 Value, branch-free")


def greater(x, y):
    """x > y as a recorded 1.0/0.0 Value: a branch-free condition for where()."""
    return less(y, x)


def greater_equal(x, y):
    """x >= y as a recorded 1.0/0.0 Value, branch-free."""
    return less_equal(y, x)


_where_true = _function(_C["where_true"], None)
_where_false = _function(_C["where_false"], None)


def where(cond, a, b):
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


_UFUNCS = {
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
}
