"""Numba kernels: sweeps over the tape's arrays that write into arrays passed in.

Kernels trust their inputs (no bounds checks): callers validate at the boundary.
``evaluate`` dispatches an opcode to its formula in the op table; it is generated from
``ops.OPS`` so that adding an op to the table is the only change an op needs.
"""

import math

import numpy as np

from . import ops
from ._config import inline, kernel


def _generate_evaluate():
    # An if-chain over opcodes; LLVM turns it into a jump table, and inlining every
    # formula lets it drop the partials a caller does not use.
    lines = ["def evaluate(op, x, y):"]
    namespace = {"nan": math.nan}
    for op in ops.OPS:
        if op.formula is None:
            continue
        namespace[f"f{op.code}"] = inline(op.formula)
        lines.append(f"    if op == {op.code}:\n        return f{op.code}(x, y)")
    lines.append("    return nan, nan, nan, nan, nan, nan")
    exec("\n".join(lines), namespace)
    return inline(namespace["evaluate"])


evaluate = _generate_evaluate()
FIRST_COMPUTED = ops.PARAM + 1  # opcodes below this are sources, written, not computed


@kernel
def forward(op, a, b, c, val, da, db, start, stop):
    """Evaluate entries [start, stop) into val, da, db; return the first failed guard or -1."""
    failed = -1
    for i in range(start, stop):
        code = op[i]
        if code < FIRST_COMPUTED:
            continue
        ia = a[i]
        ib = b[i]
        x = val[ia] if ia >= 0 else c[i]
        y = val[ib] if ib >= 0 else c[i]
        v, dx, dy, _, _, _ = evaluate(code, x, y)
        val[i] = v
        da[i] = dx
        db[i] = dy
        if code == ops.GUARD and v == 0.0 and failed < 0:
            failed = i
    return failed


@kernel
def backward(a, b, da, db, adj, last):
    """Reverse sweep from entry ``last`` down to 0: adj[operand] += partial * adj[i].

    An exactly zero adjoint is skipped, so an infinite partial off the path to the output
    cannot turn a finite gradient into NaN (0 * inf).
    """
    for i in range(last, -1, -1):
        g = adj[i]
        if g == 0.0:
            continue
        ia = a[i]
        if ia >= 0:
            adj[ia] += da[i] * g
        ib = b[i]
        if ib >= 0:
            adj[ib] += db[i] * g


@kernel
def tangent(a, b, da, db, dot, start, stop):
    """Forward tangent sweep over [start, stop): dot[i] = da * dot[a] + db * dot[b]."""
    for i in range(start, stop):
        ia = a[i]
        ib = b[i]
        s = 0.0
        if ia >= 0:
            d = dot[ia]
            if d != 0.0:
                s += da[i] * d
        if ib >= 0:
            d = dot[ib]
            if d != 0.0:
                s += db[i] * d
        if ia >= 0 or ib >= 0:
            dot[i] = s


def empty_work(n):
    """Scratch columns for one sweep over a tape of n entries."""
    return np.empty(n), np.empty(n), np.empty(n)
