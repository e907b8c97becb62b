"""Tape optimization: constant folding, common-subexpression elimination and removal of
entries the outputs do not depend on, as one forward and one backward pass over a Program.

Recording already folds constants into entries (``x + 2`` is one entry), so these passes
pay off on tapes with repeated subexpressions or unused work; ``benchmarks/`` measures the
break-even number of replays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import types
from numba.typed import Dict

from . import ops
from ._config import kernel

if TYPE_CHECKING:
    from .trace import Program

_COMMUTATIVE = np.array([op.commutative for op in ops.OPS], dtype=np.bool_)

_KEY = types.UniTuple(types.int64, 4)


@kernel
def _fold_and_share(op, a, b, c, value, is_variable, commutative, alias, variable):
    """alias[i]: the first entry computing what entry i computes (i itself if none);
    variable[i]: entry i depends on an input or parameter. Entries that do not are
    constants: they keep their recorded value."""
    seen = Dict.empty(key_type=_KEY, value_type=types.int64)
    for i in range(op.shape[0]):
        alias[i] = i
        ia = a[i]
        ib = b[i]
        if ia < 0 and ib < 0:
            variable[i] = is_variable[i]
            continue
        if ia >= 0:
            ia = alias[ia]
        if ib >= 0:
            ib = alias[ib]
        a[i] = ia
        b[i] = ib
        variable[i] = (ia >= 0 and variable[ia]) or (ib >= 0 and variable[ib])
        if not variable[i]:
            continue
        x = ia
        y = ib
        if commutative[op[i]] and y >= 0 and (x < 0 or y < x):
            x, y = y, x
        constant = np.int64(0)
        if ia < 0 or ib < 0:
            constant = np.float64(c[i]).view(np.int64)
        key = (np.int64(op[i]), np.int64(x), np.int64(y), constant)
        first = seen.get(key, -1)
        if first >= 0:
            alias[i] = first
        else:
            seen[key] = i


@kernel
def _live(a, b, alias, variable, roots, live):
    """Mark the entries that ``roots`` depend on (through aliases)."""
    for k in range(roots.shape[0]):
        live[alias[roots[k]]] = True
    for i in range(a.shape[0] - 1, -1, -1):
        if not live[i] or not variable[i]:
            continue
        if a[i] >= 0:
            live[a[i]] = True
        if b[i] >= 0:
            live[b[i]] = True


def optimize(program: Program) -> Program:
    """A smaller Program computing the same outputs, guards and derivatives."""
    from .trace import Program

    n = len(program)
    op = program.op.copy()
    a = program.a.astype(np.int64)
    b = program.b.astype(np.int64)
    is_variable = np.zeros(n, dtype=np.bool_)
    is_variable[program.inputs] = True
    is_variable[program.params] = True
    alias = np.empty(n, dtype=np.int64)
    variable = np.empty(n, dtype=np.bool_)
    _fold_and_share(op, a, b, program.const, program.value, is_variable, _COMMUTATIVE, alias, variable)

    # A guard on constants can never fail: drop it. Constants become leaves.
    guards = program.guards[variable[program.guards]]
    constant = ~variable
    op[constant] = ops.LEAF
    a[constant] = -1
    b[constant] = -1
    roots = np.concatenate([program.outputs, guards, program.inputs, program.params]).astype(np.int64)
    live = np.zeros(n, dtype=np.bool_)
    _live(a, b, alias, variable, roots, live)

    keep = np.flatnonzero(live)
    new = np.full(n, -1, dtype=np.int64)
    new[keep] = np.arange(keep.size)
    remap = new[alias]

    def operands(col):
        kept = col[keep]
        return np.where(kept >= 0, remap[np.maximum(kept, 0)], -1).astype(np.int32)

    guard_sites = {int(remap[g]): program.sites[int(g)] for g in guards if int(g) in program.sites}
    return Program(
        op=op[keep],
        a=operands(a),
        b=operands(b),
        const=program.const[keep],
        value=program.value[keep],
        inputs=remap[program.inputs].astype(np.int32),
        params=remap[program.params].astype(np.int32),
        outputs=remap[program.outputs].astype(np.int32),
        param_shapes=program.param_shapes,
        sites=guard_sites,
        lines={int(remap[i]): s for i, s in program.lines.items() if live[alias[i]]},
    )
