"""The op table: the one place where each op is defined.

Every op is a single function ``(x, y) -> (value, d/dx, d/dy, d2/dx2, d2/dxdy, d2/dy2)``
written with ``math`` so that the same source runs in Python while recording and is
compiled by Numba for replay, the backward sweep and second order: the formulas cannot
drift. ``y`` is the second operand of a binary op; a unary op receives its constant in
``y`` (the exponent of ``x ** c``). An entry's operand index ``-1`` means "the entry's
constant", which is how ``x + 2`` and ``2 ** x`` stay one entry each.

Python's ``math`` raises where IEEE gives ``inf`` or ``nan`` (``math.log(0)``, ``1 / 0``);
recording then runs the formula on NumPy scalars, which follow IEEE (see ``value.py``).
"""

import math
from typing import Callable, NamedTuple

nan = math.nan
inf = math.inf


class Op(NamedTuple):
    code: int
    name: str
    arity: int  # 0: a source (leaf, parameter); 1: unary; 2: binary
    formula: Callable | None
    commutative: bool = False  # op(x, y) == op(y, x): lets CSE share both orders
    symbol: str | None = None  # infix operator, for pictures of the graph


OPS: list[Op] = []


def _op(name, arity, commutative=False, symbol=None):
    def register(formula):
        OPS.append(Op(len(OPS), name, arity, formula, commutative, symbol))
        return formula

    return register


# Sources: their values are written into the tape, never computed.
OPS.append(Op(0, "leaf", 0, None))
OPS.append(Op(1, "param", 0, None))


# --- arithmetic -----------------------------------------------------------------------


@_op("add", 2, commutative=True, symbol="+")
def add(x, y):
    return x + y, 1.0, 1.0, 0.0, 0.0, 0.0


@_op("sub", 2, symbol="-")
def sub(x, y):
    return x - y, 1.0, -1.0, 0.0, 0.0, 0.0


@_op("mul", 2, commutative=True, symbol="*")
def mul(x, y):
    return x * y, y, x, 0.0, 1.0, 0.0


@_op("div", 2, symbol="/")
def div(x, y):
    v = x / y
    d = 1.0 / y
    return v, d, -v * d, 0.0, -d * d, 2.0 * v * d * d


@_op("neg", 1)
def neg(x, y):
    return -x, -1.0, 0.0, 0.0, 0.0, 0.0


@_op("powc", 1, symbol="**")
def powc(x, y):
    # x ** c with a constant exponent c (passed as y); PyTorch: d/dx x**0 = 0 everywhere.
    if y == 2.0:
        # The commonest exponent, and x * x is exactly pow(x, 2): skip two pow calls.
        return x * x, 2.0 * x, 0.0, 2.0, 0.0, 0.0
    v = math.pow(x, y)
    if y == 0.0:
        return v, 0.0, 0.0, 0.0, 0.0, 0.0
    d = y * math.pow(x, y - 1.0)
    if y == 1.0:
        return v, d, 0.0, 0.0, 0.0, 0.0
    return v, d, 0.0, y * (y - 1.0) * math.pow(x, y - 2.0), 0.0, 0.0


@_op("pow", 2, symbol="**")
def pow_(x, y):
    # x ** y with y recorded; like PyTorch, d/dy is 0 at x == 0 for y >= 0.
    v = math.pow(x, y)
    dx = 0.0 if y == 0.0 else y * math.pow(x, y - 1.0)
    dxx = 0.0 if y == 0.0 or y == 1.0 else y * (y - 1.0) * math.pow(x, y - 2.0)
    if x > 0.0:
        lx = math.log(x)
        return v, dx, v * lx, dxx, math.pow(x, y - 1.0) * (1.0 + y * lx), v * lx * lx
    if x == 0.0 and y >= 0.0:
        return v, dx, 0.0, dxx, 0.0, 0.0
    return v, dx, nan, dxx, nan, nan


# --- exponentials and logarithms ------------------------------------------------------


@_op("exp", 1)
def exp(x, y):
    v = math.exp(x)
    return v, v, 0.0, v, 0.0, 0.0


@_op("log", 1)
def log(x, y):
    d = 1.0 / x
    return math.log(x), d, 0.0, -d * d, 0.0, 0.0


@_op("log1p", 1)
def log1p(x, y):
    d = 1.0 / (1.0 + x)
    return math.log1p(x), d, 0.0, -d * d, 0.0, 0.0


@_op("expm1", 1)
def expm1(x, y):
    v = math.expm1(x)
    return v, v + 1.0, 0.0, v + 1.0, 0.0, 0.0


@_op("sqrt", 1)
def sqrt(x, y):
    v = math.sqrt(x)
    d = 0.5 / v
    return v, d, 0.0, -0.5 * d / x, 0.0, 0.0


@_op("softplus", 1)
def softplus(x, y):
    # log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|)
    s = 1.0 / (1.0 + math.exp(-x)) if x >= 0.0 else math.exp(x) / (1.0 + math.exp(x))
    v = max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    return v, s, 0.0, s * (1.0 - s), 0.0, 0.0


@_op("sigmoid", 1)
def sigmoid(x, y):
    if x >= 0.0:
        v = 1.0 / (1.0 + math.exp(-x))
    else:
        e = math.exp(x)
        v = e / (1.0 + e)
    d = v * (1.0 - v)
    return v, d, 0.0, d * (1.0 - 2.0 * v), 0.0, 0.0


# --- trigonometric and hyperbolic -----------------------------------------------------


@_op("sin", 1)
def sin(x, y):
    s = math.sin(x)
    return s, math.cos(x), 0.0, -s, 0.0, 0.0


@_op("cos", 1)
def cos(x, y):
    c = math.cos(x)
    return c, -math.sin(x), 0.0, -c, 0.0, 0.0


@_op("tan", 1)
def tan(x, y):
    v = math.tan(x)
    d = 1.0 + v * v
    return v, d, 0.0, 2.0 * v * d, 0.0, 0.0


@_op("asin", 1)
def asin(x, y):
    r = 1.0 - x * x
    d = 1.0 / math.sqrt(r)
    return math.asin(x), d, 0.0, x * d / r, 0.0, 0.0


@_op("acos", 1)
def acos(x, y):
    r = 1.0 - x * x
    d = 1.0 / math.sqrt(r)
    return math.acos(x), -d, 0.0, -x * d / r, 0.0, 0.0


@_op("atan", 1)
def atan(x, y):
    d = 1.0 / (1.0 + x * x)
    return math.atan(x), d, 0.0, -2.0 * x * d * d, 0.0, 0.0


@_op("atan2", 2)
def atan2(x, y):
    # atan2(x, y) is the angle of the point (y, x), as math.atan2 and np.arctan2.
    r = x * x + y * y
    q = 1.0 / (r * r)
    return math.atan2(x, y), y / r, -x / r, -2.0 * x * y * q, (x * x - y * y) * q, 2.0 * x * y * q


@_op("sinh", 1)
def sinh(x, y):
    v = math.sinh(x)
    return v, math.cosh(x), 0.0, v, 0.0, 0.0


@_op("cosh", 1)
def cosh(x, y):
    v = math.cosh(x)
    return v, math.sinh(x), 0.0, v, 0.0, 0.0


@_op("tanh", 1)
def tanh(x, y):
    v = math.tanh(x)
    d = 1.0 - v * v
    return v, d, 0.0, -2.0 * v * d, 0.0, 0.0


@_op("hypot", 2, commutative=True)
def hypot(x, y):
    # sqrt(x^2 + y^2) with both scaled by a power of two (exact) so that the squares neither
    # overflow nor underflow. Only +, *, / and sqrt, which IEEE rounds exactly, so recording
    # (Python) and replay (Numba) agree to the bit; math.hypot and libm's hypot differ in the
    # last bit on ~0.6% of inputs, enough to flip a guard like hypot(x, y) <= 1 in replay.
    ax = abs(x)
    ay = abs(y)
    m = ax if ax > ay else ay
    if ax == inf or ay == inf:
        v = inf
    elif ax != ax or ay != ay:
        v = nan
    elif m == 0.0:
        return 0.0, nan, nan, nan, nan, nan
    else:
        s = 2.0**-600 if m > 2.0**500 else 2.0**600 if m < 2.0**-500 else 1.0
        sx = ax * s
        sy = ay * s
        v = math.sqrt(sx * sx + sy * sy) / s
    dx = x / v
    dy = y / v
    return v, dx, dy, dy * dy / v, -dx * dy / v, dx * dx / v


# --- piecewise: branch-free, never guards; PyTorch's choices at the kinks --------------


@_op("relu", 1)
def relu(x, y):
    if x > 0.0:
        return x, 1.0, 0.0, 0.0, 0.0, 0.0
    return x if math.isnan(x) else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("abs", 1)
def abs_(x, y):
    d = 1.0 if x > 0.0 else -1.0 if x < 0.0 else 0.0
    return abs(x), d, 0.0, 0.0, 0.0, 0.0


@_op("maximum", 2, commutative=True)
def maximum(x, y):
    # NaN propagates as in np.maximum; a tie splits the gradient evenly, as in PyTorch.
    if x > y:
        return x, 1.0, 0.0, 0.0, 0.0, 0.0
    if x < y:
        return y, 0.0, 1.0, 0.0, 0.0, 0.0
    if x == y:
        return x, 0.5, 0.5, 0.0, 0.0, 0.0
    return nan, nan, nan, 0.0, 0.0, 0.0


@_op("minimum", 2, commutative=True)
def minimum(x, y):
    if x < y:
        return x, 1.0, 0.0, 0.0, 0.0, 0.0
    if x > y:
        return y, 0.0, 1.0, 0.0, 0.0, 0.0
    if x == y:
        return x, 0.5, 0.5, 0.0, 0.0, 0.0
    return nan, nan, nan, 0.0, 0.0, 0.0


@_op("where_true", 2)
def where_true(x, y):
    # y where the condition x is nonzero, else 0: one half of where(x, a, b).
    if x != 0.0:
        return y, 0.0, 1.0, 0.0, 0.0, 0.0
    return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("where_false", 2)
def where_false(x, y):
    if x != 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    return y, 0.0, 1.0, 0.0, 0.0, 0.0


# --- comparisons: 1.0 or 0.0, no derivative --------------------------------------------


@_op("lt", 2, symbol="<")
def lt(x, y):
    return 1.0 if x < y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("le", 2, symbol="<=")
def le(x, y):
    return 1.0 if x <= y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("eq", 2, commutative=True, symbol="==")
def eq(x, y):
    return 1.0 if x == y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("ne", 2, commutative=True, symbol="!=")
def ne(x, y):
    return 1.0 if x != y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("guard", 1)
def guard(x, y):
    # A comparison whose outcome steered Python control flow while recording: x is the
    # comparison, y the outcome then. 0.0 at replay means the branch went the other way.
    return 1.0 if x == y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


CODE = {op.name: op.code for op in OPS}
NAMES = tuple(op.name for op in OPS)
COMPARISONS = frozenset(CODE[name] for name in ("lt", "le", "eq", "ne"))
LEAF = CODE["leaf"]
PARAM = CODE["param"]
GUARD = CODE["guard"]
