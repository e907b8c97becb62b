"""Random scalar programs for property tests: each op of the op table on its valid domain.

A program is a list of nodes; node k applies one ``SPECS`` row to earlier nodes (inputs
included, so nodes fan out) or to constants on either side. The same program runs on
``jitad`` Values (recorded, then replayed) and on plain floats through ``REF``, a
namespace written with ``math`` that shares no code with jitad, which also notes how
close the point came to a kink (relu, abs, maximum, where) for finite-difference tests.

    prog = draw(programs(n_inputs=3))
    F = jitad.trace(prog, x0)          # prog(x) records on Values
    prog.reference(x)                  # the same program on floats
"""

import math
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import jitad
from jitad import ops


def property_settings(max_examples):
    """Bounded Hypothesis settings; ``JITAD_EXAMPLES_SCALE=10`` runs ten times as many."""
    scale = float(os.environ.get("JITAD_EXAMPLES_SCALE", "1"))
    return settings(
        max_examples=max(1, int(max_examples * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )


class Ref:
    """Float counterparts of jitad's module functions, with ``math`` only.

    ``margin`` is the smallest distance to a kink or jump seen since the last reset.
    """

    def __init__(self):
        self.margin = math.inf

    def _near(self, d):
        self.margin = min(self.margin, abs(d))

    exp = staticmethod(math.exp)
    log = staticmethod(math.log)
    log1p = staticmethod(math.log1p)
    expm1 = staticmethod(math.expm1)
    sqrt = staticmethod(math.sqrt)
    sin = staticmethod(math.sin)
    cos = staticmethod(math.cos)
    tan = staticmethod(math.tan)
    asin = staticmethod(math.asin)
    acos = staticmethod(math.acos)
    atan = staticmethod(math.atan)
    atan2 = staticmethod(math.atan2)
    sinh = staticmethod(math.sinh)
    cosh = staticmethod(math.cosh)
    tanh = staticmethod(math.tanh)
    hypot = staticmethod(math.hypot)

    @staticmethod
    def softplus(x):
        return float(np.logaddexp(0.0, x))

    @staticmethod
    def sigmoid(x):
        return 0.5 * (1.0 + math.tanh(0.5 * x))

    def relu(self, x):
        self._near(x)
        return x if x > 0 else 0.0

    def abs(self, x):
        self._near(x)
        return abs(x)

    def maximum(self, x, y):
        self._near(x - y)
        return max(x, y)

    def minimum(self, x, y):
        self._near(x - y)
        return min(x, y)

    def greater(self, x, y):
        self._near(x - y)
        return 1.0 if x > y else 0.0

    def less_equal(self, x, y):
        self._near(x - y)
        return 1.0 if x <= y else 0.0

    def equal(self, x, y):
        self._near(x - y)
        return 1.0 if x == y else 0.0

    def not_equal(self, x, y):
        self._near(x - y)
        return 1.0 if x != y else 0.0

    @staticmethod
    def where(cond, a, b):
        return a if cond != 0.0 else b

    # Piecewise constant: each notes how close it came to a jump, scaled down tenfold, as
    # a jump (unlike a kink) ruins a difference quotient that steps across it.
    def _near_jump(self, d):
        self._near(0.1 * d)

    def floor(self, x):
        self._near_jump(x - round(x))
        return float(math.floor(x))

    def ceil(self, x):
        self._near_jump(x - round(x))
        return float(math.ceil(x))

    def trunc(self, x):
        self._near_jump(x - round(x))
        return float(math.trunc(x))

    def rint(self, x):
        self._near_jump(x - math.floor(x) - 0.5)
        return float(round(x))

    def mod(self, x, y):
        q = x / y
        self._near_jump((q - round(q)) * y)
        return x % y

    def floor_divide(self, x, y):
        q = x / y
        self._near_jump((q - round(q)) * y)
        return x // y

    def fmod(self, x, y):
        q = x / y
        self._near_jump((q - round(q)) * y)
        return math.fmod(x, y)

    def sign(self, x):
        self._near_jump(x)
        return math.copysign(1.0, x) if x != 0.0 else 0.0

    @staticmethod
    def stop_gradient(x):
        return x

    erf = staticmethod(math.erf)
    erfc = staticmethod(math.erfc)
    lgamma = staticmethod(math.lgamma)

    @staticmethod
    def log_sigmoid(x):
        return -float(np.logaddexp(0.0, -x))

    @staticmethod
    def logaddexp(x, y):
        return float(np.logaddexp(x, y))


# Smooth maps of any real into (-1, 1), written with ops so that they are recorded too.
SQUASH = {
    "tanh": lambda M, u: M.tanh(u),
    "sin": lambda M, u: M.sin(u),
    "cos": lambda M, u: M.cos(u),
    "atan": lambda M, u: 0.6 * M.atan(u),
    "sigmoid": lambda M, u: 2.0 * M.sigmoid(u) - 1.0,
    "rational": lambda M, u: u / M.sqrt(u * u + 1.0),
}


class Spec(NamedTuple):
    arity: int
    fn: Callable  # (M, s, u, v, c) -> node; M: jitad or a Ref, s: a squash, c: a constant
    covers: tuple  # op-table names this row records (besides the squash's ops)
    const_ok: tuple = (True, True)  # which operands may be a constant instead of a node
    kink: bool = False  # non-smooth somewhere: finite differences need a margin


# One row per op (comparisons ride on where). Domains are enforced by construction:
# log(1.5 + s(u)) has an argument in (0.5, 2.5) whatever u is.
SPECS = {
    "add": Spec(2, lambda M, s, u, v, c: u + v, ("add",)),
    "sub": Spec(2, lambda M, s, u, v, c: u - v, ("sub",)),
    "mul": Spec(2, lambda M, s, u, v, c: u * v, ("mul",)),
    "div": Spec(2, lambda M, s, u, v, c: u / (1.5 + s(M, v)), ("div",)),
    "neg": Spec(1, lambda M, s, u, v, c: -u, ("neg",)),
    "powc": Spec(1, lambda M, s, u, v, c: (1.5 + s(M, u)) ** c, ("powc",)),
    "powc_int": Spec(1, lambda M, s, u, v, c: u ** float(round(abs(c) * 1.5)), ("powc",)),
    "pow": Spec(2, lambda M, s, u, v, c: (1.5 + s(M, u)) ** (2.0 * s(M, v)), ("pow",)),
    "exp": Spec(1, lambda M, s, u, v, c: M.exp(2.0 * s(M, u)), ("exp",)),
    "log": Spec(1, lambda M, s, u, v, c: M.log(1.5 + s(M, u)), ("log",)),
    "log1p": Spec(1, lambda M, s, u, v, c: M.log1p(0.9 * s(M, u)), ("log1p",)),
    "expm1": Spec(1, lambda M, s, u, v, c: M.expm1(2.0 * s(M, u)), ("expm1",)),
    "sqrt": Spec(1, lambda M, s, u, v, c: M.sqrt(1.2 + s(M, u)), ("sqrt",)),
    "softplus": Spec(1, lambda M, s, u, v, c: M.softplus(u), ("softplus",)),
    "sigmoid": Spec(1, lambda M, s, u, v, c: M.sigmoid(u), ("sigmoid",)),
    "sin": Spec(1, lambda M, s, u, v, c: M.sin(u), ("sin",)),
    "cos": Spec(1, lambda M, s, u, v, c: M.cos(u), ("cos",)),
    "tan": Spec(1, lambda M, s, u, v, c: M.tan(1.2 * s(M, u)), ("tan",)),
    "asin": Spec(1, lambda M, s, u, v, c: M.asin(0.9 * s(M, u)), ("asin",)),
    "acos": Spec(1, lambda M, s, u, v, c: M.acos(0.9 * s(M, u)), ("acos",)),
    "atan": Spec(1, lambda M, s, u, v, c: M.atan(u), ("atan",)),
    # atan2(x, y) with y > 0 stays off the branch cut along the negative y axis.
    "atan2": Spec(2, lambda M, s, u, v, c: M.atan2(u, 1.5 + s(M, v)), ("atan2",)),
    "atan2_upper": Spec(2, lambda M, s, u, v, c: M.atan2(1.5 + s(M, u), v), ("atan2",)),
    "sinh": Spec(1, lambda M, s, u, v, c: M.sinh(2.0 * s(M, u)), ("sinh",)),
    "cosh": Spec(1, lambda M, s, u, v, c: M.cosh(2.0 * s(M, u)), ("cosh",)),
    "tanh": Spec(1, lambda M, s, u, v, c: M.tanh(u), ("tanh",)),
    "hypot": Spec(2, lambda M, s, u, v, c: M.hypot(u, 1.5 + s(M, v)), ("hypot",)),
    "relu": Spec(1, lambda M, s, u, v, c: M.relu(u), ("relu",), kink=True),
    "abs": Spec(1, lambda M, s, u, v, c: M.abs(u), ("abs",), kink=True),
    "maximum": Spec(2, lambda M, s, u, v, c: M.maximum(u, v), ("maximum",), kink=True),
    "minimum": Spec(2, lambda M, s, u, v, c: M.minimum(u, v), ("minimum",), kink=True),
    "erf": Spec(1, lambda M, s, u, v, c: M.erf(2.0 * s(M, u)), ("erf",)),
    "erfc": Spec(1, lambda M, s, u, v, c: M.erfc(2.0 * s(M, u)), ("erfc",)),
    "lgamma": Spec(1, lambda M, s, u, v, c: M.lgamma(1.5 + s(M, u)), ("lgamma",)),
    "log_sigmoid": Spec(1, lambda M, s, u, v, c: M.log_sigmoid(u), ("log_sigmoid",)),
    "logaddexp": Spec(2, lambda M, s, u, v, c: M.logaddexp(u, v), ("logaddexp",)),
    # Piecewise constant (zero derivative, jumps: kinks); a smooth term keeps a gradient.
    "floor": Spec(1, lambda M, s, u, v, c: M.floor(3.0 * u) + u, ("floor",), kink=True),
    "ceil": Spec(1, lambda M, s, u, v, c: M.ceil(3.0 * u) * s(M, u), ("ceil",), kink=True),
    "trunc": Spec(1, lambda M, s, u, v, c: M.trunc(3.0 * u) + u * u, ("trunc",), kink=True),
    "rint": Spec(1, lambda M, s, u, v, c: M.rint(3.0 * u) - u, ("rint",), kink=True),
    "sign": Spec(1, lambda M, s, u, v, c: M.sign(u) * s(M, u), ("sign",), kink=True),
    "mod": Spec(2, lambda M, s, u, v, c: M.mod(u, 1.5 + s(M, v)), ("mod",), kink=True),
    "fmod": Spec(2, lambda M, s, u, v, c: M.fmod(u, 1.5 + s(M, v)) * v, ("fmod",), kink=True),
    "floor_divide": Spec(
        2, lambda M, s, u, v, c: M.floor_divide(u, 1.5 + s(M, v)) + v, ("floordiv",), const_ok=(True, False), kink=True
    ),
    # Its value replays but its derivative is zero: the two terms cancel in every reference.
    "stop_gradient": Spec(
        2, lambda M, s, u, v, c: u + M.stop_gradient(v) - M.stop_gradient(v), ("stop_gradient",), const_ok=(True, False)
    ),
    "where_greater": Spec(
        2,
        lambda M, s, u, v, c: M.where(M.greater(u, v), u * s(M, v), c * s(M, u)),
        ("where_true", "where_false", "lt"),
        const_ok=(False, True),
        kink=True,
    ),
    "where_less_equal": Spec(
        2,
        lambda M, s, u, v, c: M.where(M.less_equal(u, v), M.sin(u), v + c),
        ("where_true", "where_false", "le"),
        const_ok=(False, True),
        kink=True,
    ),
    "where_equal": Spec(
        2,
        lambda M, s, u, v, c: M.where(M.equal(u, v), u, s(M, u)),
        ("where_true", "where_false", "eq"),
        const_ok=(False, True),
        kink=True,
    ),
    "where_not_equal": Spec(
        2,
        lambda M, s, u, v, c: M.where(M.not_equal(u, v), u * c, -u),
        ("where_true", "where_false", "ne"),
        const_ok=(False, True),
        kink=True,
    ),
}

SMOOTH_SPECS = tuple(name for name, spec in SPECS.items() if not spec.kink)

# Ops no program records: sources, and the guard (programs here are branch-free).
NOT_IN_PROGRAMS = frozenset({"leaf", "param", "guard"})
# Ops whose derivatives are all zero: second-order tests have nothing to check.
NO_DERIVATIVE = frozenset({"leaf", "param", "guard", "lt", "le", "eq", "ne"})


class Node(NamedTuple):
    spec: str
    args: tuple  # per operand: an earlier node index, or a float constant
    squash: str
    c: float


class ScalarProgram:
    """A random branch-free program: call it on a 1-D array of Values to record it."""

    def __init__(self, n_inputs, nodes, outputs=None):
        self.n_inputs = n_inputs
        self.nodes = tuple(nodes)
        self.outputs = outputs  # None: a scalar function; else node indices
        self.__name__ = "random_program"
        # The scalar output is the last node plus half of every other node no later node
        # reads, so that no node is dead code whose replay goes unchecked.
        used = {a for node in self.nodes for a in node.args if isinstance(a, int)}
        last = n_inputs + len(self.nodes) - 1
        self.sinks = [k for k in range(n_inputs, last) if k not in used]

    def run(self, M, x):
        """All node values (inputs first), evaluated with namespace M (jitad or a Ref)."""
        vals = list(x)
        for node in self.nodes:
            spec = SPECS[node.spec]
            squash = SQUASH[node.squash]
            ops_ = [vals[a] if isinstance(a, int) else a for a in node.args]
            u = ops_[0]
            v = ops_[1] if spec.arity == 2 else None
            vals.append(spec.fn(M, squash, u, v, node.c))
        return vals

    def select(self, vals):
        if self.outputs is None:
            out = vals[-1]
            for k in self.sinks:
                out = out + 0.5 * vals[k]
            return out
        return [vals[k] for k in self.outputs]

    def __call__(self, x):
        return self.select(self.run(jitad, x))

    def reference(self, x, ref=None):
        """(output(s), all node values, kink margin) on floats; raises on a domain error."""
        ref = ref or Ref()
        vals = self.run(ref, [float(t) for t in x])
        out = self.select(vals)
        return (np.asarray(out, dtype=float) if self.outputs is not None else float(out)), vals, ref.margin

    def __repr__(self):
        names = [f"x{k}" for k in range(self.n_inputs)]
        lines = [f"ScalarProgram(n_inputs={self.n_inputs}, outputs={self.outputs}):"]
        for k, node in enumerate(self.nodes):
            args = ", ".join(names[a] if isinstance(a, int) else repr(a) for a in node.args)
            name = f"t{k}"
            names.append(name)
            lines.append(f"  {name} = {node.spec}[{node.squash}, c={node.c!r}]({args})")
        if self.outputs is None:
            lines.append("  output = " + " + 0.5 * ".join([names[-1]] + [names[k] for k in self.sinks]))
        return "\n".join(lines)


CONSTANTS = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, -1.0, 0.5, 3.0, -2.5]),
    st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def nodes(draw, n_inputs, size, specs=tuple(SPECS)):
    out = []
    for _ in range(size):
        name = draw(st.sampled_from(specs))
        spec = SPECS[name]
        available = n_inputs + len(out)
        refs = [draw(st.integers(0, available - 1)) for _ in range(spec.arity)]
        args = list(refs)
        if spec.arity == 2:
            # A constant on one side (never both: a node must depend on something).
            side = draw(st.sampled_from([None, None, 0, 1]))
            if side is not None and spec.const_ok[side]:
                args[side] = draw(CONSTANTS)
        out.append(Node(name, tuple(args), draw(st.sampled_from(tuple(SQUASH))), draw(CONSTANTS)))
    return out


@st.composite
def programs(draw, n_inputs=None, size=None, n_outputs=None, specs=tuple(SPECS)):
    """A ScalarProgram of 1-4 inputs and 1-12 nodes (or as the strategies ``n_inputs`` and
    ``size`` draw); ``n_outputs`` (n -> a strategy of ints) makes it vector-valued."""
    n = draw(st.integers(1, 4) if n_inputs is None else n_inputs)
    body = draw(nodes(n, draw(st.integers(1, 12) if size is None else size), specs))
    outputs = None
    if n_outputs is not None:
        m = draw(n_outputs(n))
        total = n + len(body)
        # Mostly later nodes (they depend on more), sometimes an input or a repeat.
        outputs = [
            draw(st.one_of(st.integers(max(0, total - 4), total - 1), st.integers(0, total - 1))) for _ in range(m)
        ]
    return ScalarProgram(n, body, outputs)


def points(n, low=-3.0, high=3.0):
    """A strategy of float arrays of shape (n,)."""
    element = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.lists(element, min_size=n, max_size=n).map(lambda v: np.array(v, dtype=float))


def well_conditioned(prog, x, margin=1e-2, bound=1e3):
    """The reference value of prog at x when x is a fair point for finite differences:
    no domain error, every node within ``bound``, no kink closer than ``margin``; else None."""
    try:
        out, vals, kink = prog.reference(x)
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    if not all(math.isfinite(v) and abs(v) < bound for v in vals) or kink < margin:
        return None
    return out


def central_difference(f, x, h=1e-4):
    """d f / d x by the 5-point stencil (error O(h^4)); f: R^n -> R^m (any array shape)."""
    x = np.asarray(x, dtype=float)
    cols = []
    for i in range(x.size):
        step = h * max(1.0, abs(x[i]))
        e = np.zeros(x.size)
        e[i] = step
        f1 = np.asarray(f(x + e)) - np.asarray(f(x - e))
        f2 = np.asarray(f(x + 2 * e)) - np.asarray(f(x - 2 * e))
        cols.append((8.0 * f1 - f2) / (12.0 * step))
    return np.stack(cols, axis=-1)


def assert_close(actual, expected, rtol, atol=0.0, what=""):
    """Elementwise |a - e| <= atol + rtol * max(|e|) : the tolerance scales with the array."""
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol + rtol * max(scale, 1.0), err_msg=what)


def op_names_recorded(prog_or_F):
    return set(prog_or_F.tape.names)


ALL_OPS = tuple(op.name for op in ops.OPS)
