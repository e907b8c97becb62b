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
import types
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
    flat: bool = False  # zero derivative everywhere (comparisons, rounding): nothing to differentiate


OPS: list[Op] = []


def _op(name, arity, commutative=False, symbol=None, flat=False):
    def register(formula):
        OPS.append(Op(len(OPS), name, arity, formula, commutative, symbol, flat))
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
    # d/dx = y x^(y-1) stays that product at y = 0 (where it is 0), so that its derivative
    # in y, x^(y-1), matches d2/dxdy (gradients of gradients differentiate this expression);
    # it is PyTorch's 0 only where the product is 0 * inf or NaN.
    dx = y * math.pow(x, y - 1.0) if y != 0.0 or (x != 0.0 and x == x) else 0.0
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


@_op("lt", 2, symbol="<", flat=True)
def lt(x, y):
    return 1.0 if x < y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("le", 2, symbol="<=", flat=True)
def le(x, y):
    return 1.0 if x <= y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("eq", 2, commutative=True, symbol="==", flat=True)
def eq(x, y):
    return 1.0 if x == y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("ne", 2, commutative=True, symbol="!=", flat=True)
def ne(x, y):
    return 1.0 if x != y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("guard", 1, flat=True)
def guard(x, y):
    # A comparison whose outcome steered Python control flow while recording: x is the
    # comparison, y the outcome then. 0.0 at replay means the branch went the other way.
    return 1.0 if x == y else 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


# --- piecewise constant: recorded (so they replay), zero derivative ----------------------
# Written with float arithmetic only: Python's math.floor returns an int and Numba's an
# int64 that overflows past 2**63, so neither could give the same bits on both sides.

_INTEGRAL = 4503599627370496.0  # 2**52: every float at least this large is an integer


def _floor(x):
    if not abs(x) < _INTEGRAL:  # huge, inf or nan: x itself
        return x
    t = float(int(x))  # truncation toward zero, exact below 2**52
    if t > x:
        t -= 1.0
    return math.copysign(t, x) if t == 0.0 else t  # floor(-0.0) is -0.0, as in NumPy


@_op("floor", 1, flat=True)
def floor(x, y):
    return _floor(x), 0.0, 0.0, 0.0, 0.0, 0.0


@_op("ceil", 1, flat=True)
def ceil(x, y):
    return -_floor(-x), 0.0, 0.0, 0.0, 0.0, 0.0


@_op("trunc", 1, flat=True)
def trunc(x, y):
    return (_floor(x) if x >= 0.0 else -_floor(-x)) if x == x else x, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("rint", 1, flat=True)
def rint(x, y):
    # Round half to even, as Python's round(x), np.rint and torch.round.
    t = _floor(x)
    d = x - t  # exact: t and x are within 1 of each other
    if d > 0.5 or (d == 0.5 and math.fmod(t, 2.0) != 0.0):
        t += 1.0
    return math.copysign(t, x) if t == 0.0 else t, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("mod", 2, symbol="%")
def mod(x, y):
    # Python's x % y (np.mod): the sign of y. d/dx = 1 and d/dy = -(x // y) almost everywhere.
    r = math.fmod(x, y)
    if r != 0.0:
        if (r < 0.0) != (y < 0.0):
            r += y
    else:
        r = math.copysign(0.0, y)
    return r, 1.0, -_floor_divide(x, y), 0.0, 0.0, 0.0


def _floor_divide(x, y):
    # CPython's float floor division (float_floor_div), step for step.
    m = math.fmod(x, y)
    div = (x - m) / y
    if m != 0.0 and (y < 0.0) != (m < 0.0):
        div -= 1.0
    if div != 0.0:
        q = _floor(div)
        if div - q > 0.5:
            q += 1.0
        return q
    return math.copysign(0.0, x / y)


@_op("floordiv", 2, symbol="//", flat=True)
def floordiv(x, y):
    return _floor_divide(x, y), 0.0, 0.0, 0.0, 0.0, 0.0


@_op("stop_gradient", 1, flat=True)
def stop_gradient(x, y):
    # x itself with no derivative: recorded, so replay recomputes it at new inputs.
    return x, 0.0, 0.0, 0.0, 0.0, 0.0


# --- special functions and stable compositions ------------------------------------------
# Python's math must not raise in these formulas (recording has no IEEE fallback for
# lgamma or erf): poles and overflow are handled before calling it.

_TWO_OVER_SQRT_PI = 1.1283791670955126  # 2 / sqrt(pi), the scale of erf'
_LOG2 = 0.6931471805599453


@_op("erf", 1)
def erf(x, y):
    d = _TWO_OVER_SQRT_PI * math.exp(-x * x)
    # d underflows to 0 far out; -2x * d would then be inf * 0 = nan at x = +-inf.
    return math.erf(x), d, 0.0, -2.0 * x * d if d != 0.0 else 0.0, 0.0, 0.0


@_op("erfc", 1)
def erfc(x, y):
    d = -_TWO_OVER_SQRT_PI * math.exp(-x * x)
    return math.erfc(x), d, 0.0, -2.0 * x * d if d != 0.0 else 0.0, 0.0, 0.0


# lgamma(2 + u) = (1 - euler_gamma) u + sum_k (-1)^k (zeta(k) - 1) / k u^k: the
# coefficients of u, u^2, ..., u^29; for |u| <= 1/2 the first omitted term is below 1e-19.
_LGAMMA_AT_2 = (
    0.42278433509846713,
    0.3224670334241132,
    -0.0673523010531981,
    0.020580808427784546,
    -0.007385551028673986,
    0.0028905103307415234,
    -0.001192753911703261,
    0.0005096695247430425,
    -0.00022315475845357939,
    9.945751278180853e-05,
    -4.492623673813314e-05,
    2.050721277567069e-05,
    -9.439488275268397e-06,
    4.374866789907488e-06,
    -2.039215753801366e-06,
    9.55141213040742e-07,
    -4.492469198764566e-07,
    2.1207184805554665e-07,
    -1.0043224823968099e-07,
    4.7698101693639804e-08,
    -2.2711094608943164e-08,
    1.0838659214896955e-08,
    -5.183475041970047e-09,
    2.4836745438024785e-09,
    -1.1921401405860912e-09,
    5.731367241678862e-10,
    -2.7595228851242334e-10,
    1.330476437424449e-10,
    -6.4229645638381e-11,
)


@_op("lgamma", 1)
def lgamma(x, y):
    # log|Gamma(x)|; its derivatives are digamma (psi) and trigamma (psi1). Written with
    # math primitives only (math.lgamma differs between CPython and Numba in the last
    # bits). Poles (x = 0, -1, -2, ..., and every double below -2**52): inf, nan partials.
    if x <= 0.0 and (x < -4503599627370496.0 or x == math.floor(x)):
        return math.inf, nan, 0.0, nan, 0.0, 0.0
    # x < 0 by reflection: lgamma(x) = log(pi / |sin(pi x)|) - lgamma(1 - x),
    # psi(x) = psi(1 - x) - pi / tan(pi x), psi1(x) = pi^2 / sin^2(pi x) - psi1(1 - x).
    # r = x minus its nearest integer is exact, which keeps sin and tan accurate next to
    # the poles.
    v = 0.0
    psi = 0.0
    psi1 = 0.0
    sign1 = 1.0
    z = x
    if x < 0.0:
        n = math.floor(x)
        r = x - n
        if r > 0.5:
            r = x - (n + 1.0)
        t = math.pi * r
        s = math.sin(t)
        v = math.log(math.pi / abs(s))
        psi = -math.pi / math.tan(t)
        q = math.pi / s
        psi1 = q * q  # not q ** 2: Python's float pow raises on overflow
        sign1 = -1.0
        z = 1.0 - x
    # lgamma(z), z > 0: shift into [1.5, 2.5) and use the series around 2 (accurate next
    # to the roots z = 1 and z = 2), or Stirling's series from 12 up.
    if z >= 12.0:
        q = 1.0 / z
        q2 = q * q
        stirling = q * (1 / 12 - q2 * (1 / 360 - q2 * (1 / 1260 - q2 * (1 / 1680 - q2 * (1 / 1188 - q2 * (691 / 360360))))))
        g = (z - 0.5) * math.log(z) - z + 0.9189385332046728 + stirling
    else:
        if z < 0.5:
            u = z  # lgamma(z) = lgamma(2 + z) - log(1 + z) - log(z)
            below = math.log1p(z) + math.log(z)
        elif z < 1.5:
            u = z - 1.0  # exact; lgamma(z) = lgamma(2 + u) - log(1 + u)
            below = math.log1p(u)
        else:
            w = z
            prod = 1.0
            while w >= 2.5:
                w -= 1.0  # exact below 2**52
                prod *= w
            u = w - 2.0
            below = -math.log(prod)
        s = 0.0
        for k in range(len(_LGAMMA_AT_2) - 1, -1, -1):
            s = s * u + _LGAMMA_AT_2[k]
        g = u * s - below
    v = g if x > 0.0 else v - g
    # psi and psi1 of z: the recurrence psi(z) = psi(z + 1) - 1 / z up to z >= 12, then
    # the asymptotic series (Bernoulli numbers), whose first omitted terms are below 1e-16
    # relative at 12.
    shift = 0.0
    shift1 = 0.0
    while z < 12.0:
        q = 1.0 / z
        shift += q
        shift1 += q * q
        z += 1.0
    q = 1.0 / z
    q2 = q * q
    series = q2 * (1 / 12 - q2 * (1 / 120 - q2 * (1 / 252 - q2 * (1 / 240 - q2 * (1 / 132 - q2 * (691 / 32760))))))
    psi += math.log(z) - 0.5 * q - series - shift
    series1 = q * q2 * (1 / 6 - q2 * (1 / 30 - q2 * (1 / 42 - q2 * (1 / 30 - q2 * (5 / 66 - q2 * (691 / 2730))))))
    psi1 += sign1 * (q + 0.5 * q2 + series1 + shift1)
    return v, psi, 0.0, psi1, 0.0, 0.0


@_op("sign", 1, flat=True)
def sign(x, y):
    # Piecewise constant: zero derivative everywhere (PyTorch); sign(+-0) and NaN are x.
    if x > 0.0:
        return 1.0, 0.0, 0.0, 0.0, 0.0, 0.0
    if x < 0.0:
        return -1.0, 0.0, 0.0, 0.0, 0.0, 0.0
    return x, 0.0, 0.0, 0.0, 0.0, 0.0


@_op("log_sigmoid", 1)
def log_sigmoid(x, y):
    # log(1 / (1 + e^-x)) = -softplus(-x), with e^-|x| so nothing overflows; the
    # derivative is d = sigmoid(-x) and the second -d * sigmoid(x), both computed from
    # e^-|x| (never as 1 - (almost 1), which loses every digit of a tiny sigmoid).
    if x >= 0.0:
        e = math.exp(-x)
        v = -math.log1p(e)
        d = e / (1.0 + e)
        s = 1.0 / (1.0 + e)
    else:
        e = math.exp(x)
        v = x - math.log1p(e)
        d = 1.0 / (1.0 + e)
        s = e / (1.0 + e)
    return v, d, 0.0, -d * s, 0.0, 0.0


@_op("logaddexp", 2, commutative=True)
def logaddexp(x, y):
    # log(e^x + e^y) = max + log1p(e^-|x - y|); the partials are the softmax weights of
    # (x, y), and the Hessian is w_x w_y [[1, -1], [-1, 1]]. Equal finite arguments take the
    # first branch (e = 1), whose weights differentiate to that Hessian; equal infinities
    # split evenly; NaN propagates.
    if x > y or (x == y and abs(x) < inf):
        e = math.exp(y - x)
        v = x + math.log1p(e)
        wy = e / (1.0 + e)
        wx = 1.0 / (1.0 + e)
    elif x < y:
        e = math.exp(x - y)
        v = y + math.log1p(e)
        wx = e / (1.0 + e)
        wy = 1.0 / (1.0 + e)
    elif x == y:  # both +inf or both -inf: y - x would be NaN
        v = x + _LOG2
        wx = wy = 0.5
    else:
        return nan, nan, nan, nan, nan, nan
    h = wx * wy
    return v, wx, wy, h, -h, h


@_op("fmod", 2)
def fmod(x, y):
    # C's fmod (np.fmod, torch.fmod): the sign of x. d/dx = 1 and d/dy = -trunc(x / y)
    # almost everywhere; (x - r) / y is that integer up to one rounding, so it is rounded.
    r = math.fmod(x, y)
    return r, 1.0, -_floor((x - r) / y + 0.5), 0.0, 0.0, 0.0


# Functions that formulas call: re-bound with the formulas wherever they are compiled.
HELPERS = ("_floor", "_floor_divide")


def namespace(math_module=math, wrap=None, helpers=None):
    """The globals the formulas see, with ``math_module`` for ``math`` and every helper
    re-bound to it and passed through ``wrap`` (Numba's compilation for the kernels);
    ``helpers`` replaces helpers outright (Values' own floor when the formulas run on
    Values, to record their derivatives)."""
    names = {**globals(), "math": math_module}
    wrap = wrap or (lambda f: f)
    for name in HELPERS:
        names[name] = wrap(types.FunctionType(globals()[name].__code__, names, name))
    names.update(helpers or {})
    return names


def formulas(math_module=math, wrap=None, helpers=None):
    """{opcode: formula} re-bound to ``namespace(math_module, wrap, helpers)``, so that
    recording and replay run one source."""
    names = namespace(math_module, wrap, helpers)
    wrap = wrap or (lambda f: f)
    return {
        op.code: wrap(types.FunctionType(op.formula.__code__, names, op.formula.__name__))
        for op in OPS
        if op.formula is not None
    }


CODE = {op.name: op.code for op in OPS}
NAMES = tuple(op.name for op in OPS)
COMPARISONS = frozenset(CODE[name] for name in ("lt", "le", "eq", "ne"))
LEAF = CODE["leaf"]
PARAM = CODE["param"]
GUARD = CODE["guard"]
