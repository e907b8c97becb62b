"""JAX-style transforms: ``grad(f)`` and friends trace ``f`` on first use, keep one
``TapeFunction`` per argument structure (which arguments are differentiated, their shapes,
the parameters' shapes), and replay it afterwards.

Arguments named by ``argnums`` are differentiated: they are flattened and concatenated, in
argnums order, into the one input vector of the tape. Every other argument that is a float
or a real array, or a dict, list or tuple of them, is a *parameter* (it may change between
calls, in place too, without re-recording, and gets no derivative); bools, ints and anything
else (a string, a callable, None) are static: part of the cache key, passed as is.

Types: with the default ``argnums=0`` and no aux, the transforms' results are typed from the
first argument (a float gives a float, an array an ``NDArray[np.float64]``); a tuple of
argnums or ``has_aux=True`` gives results typed ``Any``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypeAlias, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .trace import TapeFunction, record
from .value import Value, gradients

MAX_STRUCTURES = 256  # argument structures (static values included) one transform keeps traced
Retrace: TypeAlias = Literal["auto", "raise"]
# A point as the transforms take it: an array of reals, or a nested list of them.
Point: TypeAlias = "NDArray[np.floating[Any]] | NDArray[np.integer[Any]] | Sequence[float] | Sequence[Sequence[float]]"
Output: TypeAlias = "NDArray[np.float64] | float"  # f's value or a derivative of it: a float for a 0-d one
Pullback: TypeAlias = "Callable[[ArrayLike], tuple[Output, ...]]"


class Gradient(Protocol):
    """``grad(f)``: ∇f at x, shaped like x (a float for a number x). Called on Values
    (``grad(grad(f))``, or inside ``trace``), the gradient is recorded: Values."""

    @overload
    def __call__(self, x: float, /, *params: Any) -> float: ...
    @overload
    def __call__(self, x: Point, /, *params: Any) -> NDArray[np.float64]: ...
    @overload
    def __call__(self, x: Value, /, *params: Any) -> Value: ...
    @overload
    def __call__(self, x: NDArray[Any] | Sequence[Any], /, *params: Any) -> NDArray[Any]: ...


class ValueAndGradient(Protocol):
    """``value_and_grad(f)``: ``(f(x), ∇f(x))``."""

    @overload
    def __call__(self, x: float, /, *params: Any) -> tuple[float, float]: ...
    @overload
    def __call__(self, x: Point, /, *params: Any) -> tuple[float, NDArray[np.float64]]: ...
    @overload
    def __call__(self, x: Value, /, *params: Any) -> tuple[Value, Value]: ...
    @overload
    def __call__(self, x: NDArray[Any] | Sequence[Any], /, *params: Any) -> tuple[Any, NDArray[Any]]: ...


class Hessian(Protocol):
    """``hessian(f)``: the (n, n) Hessian at x (a float for a number x)."""

    @overload
    def __call__(self, x: float, /, *params: Any) -> float: ...
    @overload
    def __call__(self, x: Point, /, *params: Any) -> NDArray[np.float64]: ...


class HessianVectorProduct(Protocol):
    """``hvp(f)``: H(x) v, shaped like x (SciPy's ``hessp=``)."""

    @overload
    def __call__(self, x: float, v: float, /, *params: Any) -> float: ...
    @overload
    def __call__(self, x: Point, v: ArrayLike, /, *params: Any) -> NDArray[np.float64]: ...


class _Structure:
    """How one call's arguments map onto a tape: the differentiated arguments' shapes and
    offsets in the input vector (in argnums order), the parameters, and the static
    arguments."""

    def __init__(self, args, argnums):
        self.argnums = argnums
        self.shapes = {}  # argnum -> shape of a differentiated argument
        self.kinds = []  # per argument: "x" (differentiated), "p" (parameter), a _Tree, or "s" (static)
        arrays = {}
        params = []
        for k, arg in enumerate(args):
            if k in argnums:
                arrays[k] = a = _real_array(arg, k, differentiated=True)
                self.shapes[k] = a.shape
                self.kinds.append("x")
            elif isinstance(arg, Value):
                raise TypeError(f"argument {k} is a Value; transforms take numbers and arrays")
            elif _is_flag(arg):
                self.kinds.append("s")  # Python semantics: `if flag:`, `range(n)`
            elif _is_real(arg) and not _is_named(arg):
                self.kinds.append("p")
                params.append(arg)
            elif (tree := _Tree.of(arg)) is not None:
                self.kinds.append(tree)
                params.extend(tree.leaves)
            else:
                self.kinds.append("s")
        parts = [arrays[k].ravel() for k in argnums]
        self.x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self.sizes = [int(np.prod(self.shapes[k], dtype=np.int64)) for k in argnums]
        self.offsets = np.cumsum([0] + self.sizes)
        self.params = tuple(params)
        self.key = (argnums, tuple(_kind_key(arg, kind, self.shapes.get(k)) for k, (arg, kind) in enumerate(zip(args, self.kinds))))
        self.statics = {k: _frozen(arg) for k, (arg, kind) in enumerate(zip(args, self.kinds)) if kind == "s"}

    def arguments(self, xs, ps):
        """The arguments of f while recording: slices of the input Values ``xs`` shaped as
        the differentiated arguments (a Value for a 0-d one), parameter Values ``ps``."""
        args = []
        ps = iter(ps)
        for k, kind in enumerate(self.kinds):
            if kind == "x":
                j = self.argnums.index(k)
                part = xs[self.offsets[j] : self.offsets[j + 1]]
                shape = self.shapes[k]
                args.append(part[0] if shape == () else part.reshape(shape))
            elif kind == "p":
                args.append(next(ps))
            elif isinstance(kind, _Tree):
                args.append(kind.build(ps))
            else:
                args.append(self.statics[k])
        return args

    def split(self, flat, lead=()):
        """A derivative over the input vector (last axis) as one array per argnum, shaped
        ``lead + argument shape``; a float for a 0-d result."""
        parts = []
        for j, k in enumerate(self.argnums):
            part = flat[..., self.offsets[j] : self.offsets[j + 1]].reshape(lead + self.shapes[k])
            parts.append(float(part) if part.ndim == 0 else part)
        return parts


def _is_flag(arg):
    # Bools and integers keep their meaning for f (branches, counts, indices and masks), as
    # with jax.grad: they are static (one tape per value), never parameters frozen into
    # one branch or Values that cannot index.
    if isinstance(arg, (bool, int, np.bool_, np.integer)):
        return True
    if isinstance(arg, (np.ndarray, list, tuple)):
        try:
            return np.asarray(arg).dtype.kind in "biu"
        except (ValueError, TypeError):  # ragged: a tree, not an array
            return False
    return False


def _is_named(arg):
    """A NamedTuple (instance or class): a tree whose type f relies on (``p.a``)."""
    cls = arg if isinstance(arg, type) else type(arg)
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _frozen(arg):
    """A static argument as kept for recording again: a copy of an array or list, so that
    changing the caller's afterwards cannot change what its key says it holds."""
    if isinstance(arg, np.ndarray):
        return arg.copy()
    if isinstance(arg, list):
        return copy.deepcopy(arg)
    return arg


def _kind_key(arg, kind, shape):
    if kind == "x":
        return ("x", shape)
    if kind == "p":
        return ("p", np.shape(arg))
    if isinstance(kind, _Tree):
        return ("t", kind.key)
    return ("s", _static_key(arg))


class _Tree:
    """A dict, list or tuple (nested) of numbers and arrays, as JAX's pytrees: its real
    leaves are parameters (new numbers at every call, never frozen into the tape), its
    bools, ints and other hashable leaves static."""

    def __init__(self):
        self.leaves = []  # the real leaves, in order
        self.key = None

    @classmethod
    def of(cls, arg):
        if not isinstance(arg, (dict, list, tuple)):
            return None  # (a NamedTuple is a tuple)
        tree = cls()
        try:
            tree.shape = tree._flatten(arg)
        except TypeError:  # an unhashable leaf that is not a real array: static as a whole
            return None
        tree.key = tree._key(tree.shape)
        return tree

    def _flatten(self, node):
        if isinstance(node, dict):
            return (dict, tuple((key, self._flatten(v)) for key, v in node.items()))
        if type(node) in (list, tuple) or _is_named(node):
            return (type(node), tuple(self._flatten(v) for v in node))
        if not _is_flag(node) and _is_real(node):
            self.leaves.append(node)
            return ("leaf", np.shape(node))
        _static_key(node, strict=True)
        return ("static", _frozen(node))

    def _key(self, shape):
        kind, content = shape
        if kind == "leaf":
            return shape
        if kind == "static":
            return (kind, _static_key(content))
        # the container's class itself: two NamedTuples of one name must not share a tape
        return (kind, tuple(((item[0], self._key(item[1])) if kind is dict else self._key(item)) for item in content))

    def build(self, values):
        """The tree with its real leaves taken in order from the iterator ``values``."""
        return self._build(self.shape, values)

    def _build(self, shape, values):
        kind, content = shape
        if kind == "leaf":
            return next(values)
        if kind == "static":
            return content
        if kind is dict:
            return {key: self._build(item, values) for key, item in content}
        items = [self._build(item, values) for item in content]
        return kind(*items) if _is_named(kind) else kind(items)


def _is_real(arg):
    try:
        return np.asarray(arg).dtype.kind in "biuf"
    except Exception:  # noqa: BLE001 - anything NumPy cannot convert is static
        return False


def _real_array(arg, k, differentiated):
    if isinstance(arg, Value):
        raise TypeError(f"argument {k} is a Value; transforms take numbers and arrays")
    a = np.asarray(arg)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"argument {k} is differentiated (argnums) and must hold real numbers, got {a.dtype}")
    return a.astype(np.float64)


def _static_key(arg, strict=False):
    """A static argument in a cache key: itself when hashable, an array's (or a list of
    numbers') contents, else its identity (the cache entry keeps it alive, so the id is
    not reused); ``strict`` raises TypeError instead of keying by identity."""
    try:
        hash(arg)
        return arg
    except TypeError:
        pass
    if isinstance(arg, (np.ndarray, list)):
        try:
            a = np.asarray(arg)
            if a.dtype.kind in "biuf":
                return ("array", type(arg).__name__, a.dtype.str, a.shape, a.tobytes())
        except (ValueError, TypeError):
            pass
    if strict:
        raise TypeError(f"unhashable static {type(arg).__name__}")
    return ("id", id(arg))


def _argnums(argnums):
    if isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool):
        return (int(argnums),), False
    nums = tuple(int(k) for k in argnums)
    if not nums or len(set(nums)) != len(nums):
        raise ValueError(f"argnums must be an int or a tuple of distinct ints, got {argnums!r}")
    return nums, True


# --- outputs and aux: what f returns, as tape outputs and back -----------------------------


def _as_value(v, what):
    """A Value for an output: numbers (a constant function) become recorded constants."""
    if isinstance(v, Value):
        return v
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _as_value(v[()], what)
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return Value(float(v))  # a leaf that is no input: a constant with zero derivative
    raise TypeError(f"{what} must be Values or real numbers, got {type(v).__name__} {v!r}")


def _output_values(out):
    """f's output as (shape, list of Values)."""
    if isinstance(out, (list, tuple, np.ndarray)):
        a = np.asarray(out, dtype=object)
        return a.shape, [_as_value(v, "the outputs of f") for v in a.ravel()]
    return (), [_as_value(out, "the output of f")]


def _flatten_aux(aux, values):
    """aux with every Value replaced by its position in ``values`` (appended there); other
    leaves are kept as recorded (they cannot depend on the inputs: those are Values)."""
    if isinstance(aux, Value):
        values.append(aux)
        return _Slot(len(values) - 1)
    if isinstance(aux, np.ndarray) and aux.dtype == object:
        return _ArraySlots([_flatten_aux(v, values) for v in aux.ravel()], aux.shape)
    if isinstance(aux, (list, tuple)):
        items = [_flatten_aux(v, values) for v in aux]
        return type(aux)(items) if type(aux) in (list, tuple) else type(aux)(*items)
    if isinstance(aux, dict):
        return {key: _flatten_aux(v, values) for key, v in aux.items()}
    return aux


class _Slot(int):
    pass


class _ArraySlots:
    def __init__(self, items, shape):
        self.items = items
        self.shape = shape


def _fill_aux(tree, values):
    """The aux structure with its Values' slots replaced by replayed floats."""
    if isinstance(tree, _Slot):
        return float(values[tree])
    if isinstance(tree, _ArraySlots):
        filled = [_fill_aux(v, values) for v in tree.items]
        kind = float if all(isinstance(v, float) for v in filled) else object
        return np.array(filled, dtype=kind).reshape(tree.shape)
    if isinstance(tree, (list, tuple)):
        items = [_fill_aux(v, values) for v in tree]
        return type(tree)(items) if type(tree) in (list, tuple) else type(tree)(*items)
    if isinstance(tree, dict):
        return {key: _fill_aux(v, values) for key, v in tree.items()}
    return tree


class _Traced:
    """One TapeFunction for one argument structure, and what the recordings learned about
    f's outputs: their shape and the aux structure (its Values are extra tape outputs).

    Both may differ between the branches the TapeFunction keeps one tape each for. When
    they can (aux, or an output that is not one number), every tape ends with one more
    output, a constant: the index in ``self.shapes`` of what its own recording saw, so a
    replay of any branch reports that branch's shape and aux."""

    def __init__(self, f, structure, has_aux, scalar, retrace):
        self.has_aux = has_aux
        self.shapes = []  # [(output shape, aux tree)], one per distinct recording
        self.m = None  # outputs of f (before the aux Values)
        tagged = has_aux or not scalar

        def flat(xs, *ps):
            result = f(*structure.arguments(xs, ps))
            aux = None
            if has_aux:
                if not (isinstance(result, (tuple, list)) and len(result) == 2):
                    raise TypeError("has_aux=True needs f to return a pair (output, aux)")
                result, aux = result
            shape, values = _output_values(result)
            if scalar and shape != ():
                raise ValueError(f"this transform needs f to return one Value; it returned shape {shape} (use jacobian)")
            aux_values = []
            tree = _flatten_aux(aux, aux_values) if has_aux else None
            if self.m is not None and (len(values), len(aux_values)) != (self.m, self.n_aux):
                raise ValueError("f returned outputs or aux of another structure on another branch")
            if not values:
                raise ValueError("f returned no output Values")
            self.m, self.n_aux = len(values), len(aux_values)
            if not tagged:
                self.shapes[:] = [(shape, tree)]
                # One Value makes a scalar TapeFunction (its fast paths).
                return values[0] if shape == () else values
            with self._lock:
                for tag, seen in enumerate(self.shapes):
                    if _same(seen, (shape, tree)):
                        break
                else:
                    tag = len(self.shapes)
                    self.shapes.append((shape, tree))
            # Aux Values follow f's outputs, then the tag; derivatives of the first output
            # are taken by seeding it.
            return values + aux_values + [Value(float(tag))]

        self._lock = threading.Lock()
        self.tagged = tagged
        program, scalar_tape = record(flat, structure.x, structure.params)
        self.F = TapeFunction(flat, program, scalar_tape, retrace=retrace)
        self._first = None if scalar_tape else np.eye(1, self.m + self.n_aux + tagged).ravel()

    def values(self, x, params):
        """Every tape output at (x, params): f's outputs, the aux Values, the tag."""
        return np.atleast_1d(self.F(x, *params))

    def value_and_grad(self, x, params):
        """(every output's value, the gradient of the first)."""
        if self._first is None:
            value, g = self.F.value_and_grad(x, *params)
            return np.array([value]), g
        return self.F.vjp(x, self._first, *params)

    def hessian(self, x, params):
        return self.F.hessian(x, *params, weights=self._first)

    def hvp(self, x, v, params):
        return self.F.hvp(x, v, *params, weights=self._first)

    def seed(self, u):
        """Weights on every tape output: u on f's outputs, zero on the aux and the tag."""
        w = np.zeros(self.m + self.n_aux + self.tagged)
        w[: self.m] = np.ravel(np.asarray(u, dtype=np.float64))
        return w

    def shape_at(self, x, params, values=None):
        """(output shape, aux tree) of the branch that (x, params) replays."""
        if len(self.shapes) == 1:
            return self.shapes[0]
        values = self.values(x, params) if values is None else values
        return self.shapes[int(values[-1])]

    def output(self, values, shape):
        out = values[: self.m]
        return float(out[0]) if shape == () else out.reshape(shape)

    def aux_at(self, values):
        return _fill_aux(self.shapes[int(values[-1])][1], values[self.m : self.m + self.n_aux])


def _same(a, b):
    try:
        return bool(a == b) and repr(a) == repr(b)  # 1 == 1.0 == True: keep their types apart
    except Exception:  # noqa: BLE001 - incomparable statics: another structure
        return False


class _Transform:
    _name: str

    def __init__(self, f, argnums, has_aux, retrace, scalar):
        self._f = f
        self._argnums, self._tuple = _argnums(argnums)
        self._has_aux = bool(has_aux)
        self._retrace = retrace
        self._scalar = scalar
        self._traced = {}
        self._lock = threading.Lock()
        self.__wrapped__ = f
        self.__name__ = f"{self._name}({getattr(f, '__name__', 'f')})"
        self.__doc__ = getattr(f, "__doc__", None)

    def _prepare(self, args):
        """(structure, traced) for these arguments: trace on first use of a structure."""
        if max(self._argnums) >= len(args) or min(self._argnums) < -len(args):
            raise ValueError(f"argnums {self._argnums} does not fit a call with {len(args)} argument(s)")
        argnums = tuple(k % len(args) for k in self._argnums)
        s = _Structure(args, argnums)
        t = self._traced.get(s.key)
        if t is None:
            t = _Traced(self._f, s, self._has_aux, self._scalar, self._retrace)
            with self._lock:
                t = self._traced.setdefault(s.key, t)
                while len(self._traced) > MAX_STRUCTURES:  # oldest first: ints and flags are static
                    del self._traced[next(iter(self._traced))]
        return s, t

    def _result(self, parts):
        return tuple(parts) if self._tuple else parts[0]

    def _with_aux(self, result, t, s):
        if not self._has_aux:
            return result
        return result, t.aux_at(t.values(s.x, s.params))

    def __repr__(self):
        return f"<jitad.{self.__name__}>"

    def __reduce__(self):
        # Pickles as the function it transforms (its lock and traced tapes stay behind).
        argnums = self._argnums if self._tuple else self._argnums[0]
        return _rebuild, (type(self), self._f, argnums, self._has_aux, self._retrace)


def _rebuild(cls, f, argnums, has_aux, retrace):
    return cls(f, argnums, has_aux, retrace)


# --- inside another transformation: f runs on Values and the sweep is recorded ------------


def _holds_values(args):
    # Walked, not converted: np.asarray of a ragged (X, y) pair raises.
    stack = list(args)
    while stack:
        a = stack.pop()
        if isinstance(a, Value):
            return True
        if isinstance(a, np.ndarray):
            if a.dtype == object:
                stack.extend(a.flat)
        elif isinstance(a, (list, tuple)):
            stack.extend(a)
        elif isinstance(a, dict):
            stack.extend(a.values())
    return False


def _box(arg):
    """A differentiated argument as Values: the Values it holds, numbers as new leaves."""
    a = np.asarray(arg, dtype=object)
    boxed = np.frompyfunc(lambda v: v if isinstance(v, Value) else Value(v), 1, 1)(a)
    return boxed if a.ndim else (boxed[()] if isinstance(boxed, np.ndarray) else boxed)


def _recorded_value_and_grad(transform, args):
    """(f, ∇f) as Values, for a call on Values (``grad(grad(f))``, or grad inside ``trace``):
    f runs on them and ``gradients(create_graph=True)`` records the reverse sweep, so the
    result can be differentiated again."""
    args = list(args)
    argnums = tuple(k % len(args) for k in transform._argnums)
    for k in argnums:
        args[k] = _box(args[k])
    out = transform._f(*args)
    aux = None
    if transform._has_aux:
        out, aux = out
    out = _as_value(out, "the output of f")
    parts = []
    for k in argnums:
        w = args[k]
        g = gradients(out, np.asarray(w, dtype=object).ravel(), create_graph=True)
        parts.append(g.reshape(np.shape(w)) if np.ndim(w) else g[0])
    return out, transform._result(parts), aux


class _ValueAndGrad(_Transform):
    _name = "value_and_grad"

    def __init__(self, f, argnums=0, has_aux=False, retrace="auto"):
        super().__init__(f, argnums, has_aux, retrace, scalar=True)

    def __call__(self, *args: Any) -> Any:
        if _holds_values(args):
            out, g, aux = _recorded_value_and_grad(self, args)
            return ((out, aux), g) if self._has_aux else (out, g)
        s, t = self._prepare(args)
        values, g = t.value_and_grad(s.x, s.params)
        value = float(values[0])
        if self._has_aux:
            return (value, t.aux_at(values)), self._result(s.split(g))
        return value, self._result(s.split(g))


class _Grad(_Transform):
    _name = "grad"

    def __init__(self, f, argnums=0, has_aux=False, retrace="auto"):
        super().__init__(f, argnums, has_aux, retrace, scalar=True)

    def __call__(self, *args: Any) -> Any:
        if _holds_values(args):
            _, g, aux = _recorded_value_and_grad(self, args)
            return (g, aux) if self._has_aux else g
        s, t = self._prepare(args)
        values, g = t.value_and_grad(s.x, s.params)
        result = self._result(s.split(g))
        return (result, t.aux_at(values)) if self._has_aux else result


class _Jacobian(_Transform):
    _name = "jacobian"

    def __init__(self, f, argnums=0, has_aux=False, retrace="auto"):
        super().__init__(f, argnums, has_aux, retrace, scalar=False)

    def __call__(self, *args: Any) -> Any:
        s, t = self._prepare(args)
        jac = np.asarray(t.F.jacobian(s.x, *s.params))
        jac = (jac.reshape(1, -1) if jac.ndim == 1 else jac)[: t.m]  # (outputs, inputs), inputs may be 0
        shape, _ = t.shape_at(s.x, s.params)
        return self._with_aux(self._result(s.split(jac, shape)), t, s)


class _Hessian(_Transform):
    _name = "hessian"

    def __init__(self, f, argnums=0, has_aux=False, retrace="auto"):
        super().__init__(f, argnums, has_aux, retrace, scalar=True)

    def __call__(self, *args: Any) -> Any:
        s, t = self._prepare(args)
        h = t.hessian(s.x, s.params)
        # block (i, j) of a tuple of argnums: shape argument_i.shape + argument_j.shape
        rows = [h[s.offsets[j] : s.offsets[j + 1]] for j in range(len(s.argnums))]
        blocks = [s.split(row, s.shapes[k]) for row, k in zip(rows, s.argnums)]
        result = tuple(tuple(b) for b in blocks) if self._tuple else blocks[0][0]
        return self._with_aux(result, t, s)


class _Hvp(_Transform):
    _name = "hvp"

    def __init__(self, f, argnums=0, has_aux=False, retrace="auto"):
        super().__init__(f, argnums, has_aux, retrace, scalar=True)

    def __call__(self, x: Any, v: Any, *args: Any) -> Any:
        # SciPy's hessp(x, p, *args): v is a second argument shaped like the differentiated
        # ones (a tuple of them for a tuple of argnums), placed after x.
        s, t = self._prepare((x, *args))
        vs = v if self._tuple else (v,)
        if len(vs) != len(s.argnums):
            raise ValueError(f"v must hold {len(s.argnums)} array(s), one per argnum")
        parts = [_real_array(p, "v", True) for p in vs]
        for part, k in zip(parts, s.argnums):
            if part.shape != s.shapes[k]:
                raise ValueError(f"v has shape {part.shape}; argument {k} has shape {s.shapes[k]}")
        flat = np.concatenate([part.reshape(-1) for part in parts])
        return self._with_aux(self._result(s.split(t.hvp(s.x, flat, s.params))), t, s)


@overload
def grad(
    f: Callable[..., Any], argnums: int = 0, has_aux: Literal[False] = False, retrace: Retrace = "auto"
) -> Gradient: ...
@overload
def grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]: ...
def grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]:
    """``grad(f)(x, *params)`` is ∇f(x), an array shaped like x, a float for a scalar x
    (SciPy's ``jac=``).

    ``argnums`` (an int or a tuple) names the differentiated arguments: a tuple gives a
    tuple of gradients. With ``has_aux=True`` f returns ``(output, aux)`` and the result is
    ``(gradient, aux)``; aux may nest lists, tuples, dicts and arrays, and its Values come
    back as floats (replayed at each call). A constant f gives zeros.

    >>> jitad.grad(lambda x, y: x * y**2, argnums=(0, 1))(3.0, 2.0)
    (4.0, 12.0)
    """
    return _Grad(f, argnums, has_aux, retrace)


@overload
def value_and_grad(
    f: Callable[..., Any], argnums: int = 0, has_aux: Literal[False] = False, retrace: Retrace = "auto"
) -> ValueAndGradient: ...
@overload
def value_and_grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]: ...
def value_and_grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]:
    """``value_and_grad(f)(x, *params)`` is ``(f(x), ∇f(x))`` (SciPy's ``jac=True``); with
    ``has_aux=True``, ``((f(x), aux), ∇f(x))`` as in JAX."""
    return _ValueAndGrad(f, argnums, has_aux, retrace)


@overload
def jacobian(
    f: Callable[..., Any], argnums: int = 0, has_aux: Literal[False] = False, retrace: Retrace = "auto"
) -> Callable[..., NDArray[np.float64] | float]: ...
@overload
def jacobian(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]: ...
def jacobian(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]:
    """``jacobian(f)(x, *params)`` has shape ``f(x).shape + x.shape`` (JAX's jacrev)."""
    return _Jacobian(f, argnums, has_aux, retrace)


@overload
def hessian(
    f: Callable[..., Any], argnums: int = 0, has_aux: Literal[False] = False, retrace: Retrace = "auto"
) -> Hessian: ...
@overload
def hessian(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]: ...
def hessian(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]:
    """``hessian(f)(x, *params)`` has shape ``x.shape + x.shape`` (SciPy's ``hess=``); for a
    tuple of argnums, a tuple of tuples of blocks as in JAX."""
    return _Hessian(f, argnums, has_aux, retrace)


@overload
def hvp(
    f: Callable[..., Any], argnums: int = 0, has_aux: Literal[False] = False, retrace: Retrace = "auto"
) -> HessianVectorProduct: ...
@overload
def hvp(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]: ...
def hvp(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False, retrace: Retrace = "auto"
) -> Callable[..., Any]:
    """``hvp(f)(x, v, *params)`` is H(x) v, exact (SciPy's ``hessp=``)."""
    return _Hvp(f, argnums, has_aux, retrace)


@overload
def jvp(
    f: Callable[..., Any], primals: Sequence[ArrayLike], tangents: Sequence[ArrayLike], has_aux: Literal[False] = False
) -> tuple[Output, Output]: ...
@overload
def jvp(
    f: Callable[..., Any], primals: Sequence[ArrayLike], tangents: Sequence[ArrayLike], has_aux: Literal[True]
) -> tuple[Output, Output, Any]: ...
def jvp(
    f: Callable[..., Any], primals: Sequence[ArrayLike], tangents: Sequence[ArrayLike], has_aux: bool = False
) -> tuple[Output, Output] | tuple[Output, Output, Any]:
    """``(f(*primals), J tangents)``: forward mode, one replay and one tangent sweep.

    Every primal is differentiated (as in JAX); tangents have the primals' shapes.

    >>> jitad.jvp(lambda x: x**3, (2.0,), (1.0,))
    (8.0, 12.0)
    """
    if not (isinstance(primals, (tuple, list)) and isinstance(tangents, (tuple, list))):
        raise TypeError("jvp takes its primals and tangents as tuples (or lists), one item per argument of f, as JAX does")
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"jvp needs one tangent per primal: {len(primals)} primals, {len(tangents)} tangents")
    s, t = _Jacobian(f, tuple(range(len(primals))), has_aux, "auto")._prepare(primals)
    for k, tangent in enumerate(tangents):
        if np.shape(tangent) != s.shapes[k]:
            raise ValueError(f"tangent {k} has shape {np.shape(tangent)}, its primal {s.shapes[k]}")
    v = np.concatenate([np.asarray(tangent, dtype=np.float64).reshape(-1) for tangent in tangents])
    values, dots = t.F.jvp(s.x, v, *s.params)
    values, dots = np.atleast_1d(values), np.atleast_1d(dots)
    shape, _ = t.shape_at(s.x, s.params, values)
    result = t.output(values, shape), t.output(dots, shape)
    return (*result, t.aux_at(values)) if has_aux else result


@overload
def vjp(f: Callable[..., Any], *primals: ArrayLike, has_aux: Literal[False] = False) -> tuple[Output, Pullback]: ...
@overload
def vjp(f: Callable[..., Any], *primals: ArrayLike, has_aux: Literal[True]) -> tuple[Output, Pullback, Any]: ...
def vjp(
    f: Callable[..., Any], *primals: ArrayLike, has_aux: bool = False
) -> tuple[Output, Pullback] | tuple[Output, Pullback, Any]:
    """``(f(*primals), pullback)``: ``pullback(u)`` is the tuple of ``u^T J`` for each primal
    (one reverse sweep seeded with u on the outputs), u shaped like f's output.

    >>> out, pullback = jitad.vjp(lambda x: x**3, 2.0); pullback(1.0)
    (12.0,)
    """
    s, t = _Jacobian(f, tuple(range(len(primals))), has_aux, "auto")._prepare(primals)
    values = t.values(s.x, s.params)
    shape, _ = t.shape_at(s.x, s.params, values)

    def pullback(u: ArrayLike) -> tuple[Output, ...]:
        if np.shape(u) != shape:
            raise ValueError(f"the cotangent has shape {np.shape(u)}; f's output has shape {shape}")
        _, g = t.F.vjp(s.x, t.seed(u), *s.params)
        return tuple(s.split(g))

    result = t.output(values, shape), pullback
    return (*result, t.aux_at(values)) if has_aux else result

