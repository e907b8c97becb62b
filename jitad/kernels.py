"""Numba kernels: sweeps over the tape's arrays that write into arrays passed in.

Kernels trust their inputs (no bounds checks): callers validate at the boundary.
``evaluate`` and ``second_partials`` are the op table's formulas as compiled functions,
generated from ``ops.OPS`` so that adding an op to the table is the only change an op needs.
"""

import ast
import inspect
import math
import textwrap
import types

import numba
import numpy as np

from . import ops
from ._config import inline, kernel


# ``math`` as the formulas see it when compiled: Numba lacks math.fmod, and np.fmod is the
# same C fmod (an exact operation), so both sides give the same bits.
_MATH = types.ModuleType("jitad_kernel_math")
_MATH.__dict__.update({name: getattr(math, name) for name in dir(math) if not name.startswith("_")})
_MATH.fmod = np.fmod


# --- the op table as two compiled functions ----------------------------------------------
#
# ``evaluate(code, x, y) -> (value, d/dx, d/dy)`` and ``second_partials(code, x, y) ->
# (d2/dx2, d2/dxdy, d2/dy2)``: an if-chain over opcodes (a jump table for LLVM) whose
# branches are the formulas' bodies, spliced in as source with each return cut to the
# numbers the function gives. Each is compiled once per process and inlined by LLVM
# (``forceinline``) into every kernel that calls it, so the sweeps run the same machine code
# as with every formula inlined by Numba, without Numba typing every formula again in each
# kernel (measured: 9-14 s of compile for each of forward, forward_lanes and hvp_sweep
# before; now 1.2-2.4 s for each table once, then 0.4-0.7 s per kernel).


class _Keep(ast.NodeTransformer):
    def __init__(self, keep):
        self.keep = keep

    def visit_Return(self, node):
        if not (isinstance(node.value, ast.Tuple) and len(node.value.elts) == 6):
            raise TypeError(f"line {node.lineno}: an op formula returns its 6 numbers as a tuple")
        node.value.elts = node.value.elts[self.keep]
        return node


def _op_table(name, keep):
    source = {node.name: node for node in ast.parse(inspect.getsource(ops)).body if isinstance(node, ast.FunctionDef)}
    lines = [f"def {name}_table(code, x, y):"]
    for op in ops.OPS:
        if op.formula is not None:
            formula = source[op.formula.__name__]
            body = ast.unparse([_Keep(keep).visit(statement) for statement in formula.body])
            lines += [f"    if code == {op.code}:", textwrap.indent(body, "        ")]
    lines.append("    return nan, nan, nan")
    namespace = ops.namespace(_MATH, wrap=inline)
    exec(compile("\n".join(lines), f"<jitad op table: {name}>", "exec"), namespace)
    table = inline(namespace[f"{name}_table"])

    # Opcodes arrive as uint8 (tapes) or int32 (packed programs): one type for the table,
    # which is compiled once instead of once per integer type.
    def dispatch(code, x, y):
        return table(np.intp(code), x, y)

    dispatch.__name__ = dispatch.__qualname__ = name
    return inline(dispatch)


evaluate = _op_table("evaluate", slice(0, 3))
second_partials = _op_table("second_partials", slice(3, 6))


FIRST_COMPUTED = ops.PARAM + 1  # opcodes below this are sources, written, not computed


@kernel
def evaluate_op(code, x, y):
    """One op of the table at (x, y), compiled: value and partials with the bits replay
    computes, IEEE (inf, nan) where Python's math raises. NumPy's SIMD math, the other
    IEEE route, can differ from libm in the last bit (np.power, np.arctan2)."""
    v, dx, dy = evaluate(code, x, y)
    dxx, dxy, dyy = second_partials(code, x, y)
    return v, dx, dy, dxx, dxy, dyy


@inline
def _product(partial, weight):
    # A zero on either side contributes nothing, even against an infinite or NaN other
    # side: 0 * inf must not turn a finite derivative into NaN.
    return partial * weight if weight != 0.0 and partial != 0.0 else 0.0


@kernel
def forward(op, a, b, c, val, da, db, start, stop):
    """Evaluate entries [start, stop) into val, da, db; return the first failed guard or -1.

    Sources (leaves, parameters) are not computed: their values must already be in val.
    The sweep stops at a failed guard: what follows belongs to another branch.
    """
    for i in range(start, stop):
        code = op[i]
        if code < FIRST_COMPUTED:
            continue
        ia = a[i]
        ib = b[i]
        x = val[ia] if ia >= 0 else c[i]
        y = val[ib] if ib >= 0 else c[i]
        v, dx, dy = evaluate(code, x, y)
        val[i] = v
        da[i] = dx
        db[i] = dy
        if code == ops.GUARD and v == 0.0:
            return i
    return -1


@kernel
def backward_from(a, b, da, db, adj, last, base):
    """``backward`` over entries numbered from ``base`` (an eager chunk: its operands are
    sequence numbers, all in the chunk): adj[k] belongs to entry base + k."""
    for i in range(last, -1, -1):
        g = adj[i]
        if g == 0.0:
            continue
        ia = a[i]
        if ia >= 0:
            adj[ia - base] += _product(da[i], g)
        ib = b[i]
        if ib >= 0:
            adj[ib - base] += _product(db[i], g)


@kernel
def backward(a, b, da, db, adj, last):
    """Reverse sweep from entry ``last`` down to 0: adj[operand] += partial * adj[i].

    An exactly zero adjoint is skipped, so an infinite partial off the path to the output
    cannot turn a finite gradient into NaN (0 * inf).
    """
    backward_from(a, b, da, db, adj, last, 0)


# --- eager tapes: entries in chunks, operands as sequence numbers -------------------------


@inline
def _chunk_of(s, bases, j):
    # The chunk holding sequence number s: chunk j itself (the common case), or an older one.
    # Bisection by hand: np.searchsorted would compile seven generic functions, a second
    # of the first gradient's cold start.
    if s >= bases[j]:
        return j
    lo, hi = 0, j  # bases[lo] <= s < bases[hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bases[mid] <= s:
            lo = mid
        else:
            hi = mid
    return lo


@kernel
def positions(a, b, bases, starts):
    """Rewrite operand sequence numbers as positions in a gathered array, where chunk j's
    entries, numbered from bases[j] (ascending), sit from position starts[j] on."""
    n = starts.shape[0]
    for j in range(n):
        stop = starts[j + 1] if j + 1 < n else a.shape[0]
        for i in range(starts[j], stop):
            s = a[i]
            if s >= 0:
                k = _chunk_of(s, bases, j)
                a[i] = starts[k] + s - bases[k]
            s = b[i]
            if s >= 0:
                k = _chunk_of(s, bases, j)
                b[i] = starts[k] + s - bases[k]


@kernel
def mark_needed(a, b, bases, starts, j, needed):
    """Mark the operands of chunk j's needed entries (newest first) as needed: needed holds
    every chunk's entries from starts[k] on, chunk k numbered from bases[k]."""
    for i in range(a.shape[0] - 1, -1, -1):
        if not needed[starts[j] + i]:
            continue
        s = a[i]
        if s >= 0:
            k = _chunk_of(s, bases, j)
            needed[starts[k] + s - bases[k]] = True
        s = b[i]
        if s >= 0:
            k = _chunk_of(s, bases, j)
            needed[starts[k] + s - bases[k]] = True


@kernel
def referenced_chunks(a, b, base, bases, used):
    """used[k] = True for every older chunk k (numbered from bases[k], ascending) that an
    operand below ``base`` falls in."""
    top = bases.shape[0]
    for i in range(a.shape[0]):
        s = a[i]
        if 0 <= s < base:
            used[np.searchsorted(bases, s, side="right") - 1] = True
        s = b[i]
        if 0 <= s < base:
            used[np.searchsorted(bases[:top], s, side="right") - 1] = True


@kernel
def tangent(a, b, da, db, dot, start, stop):
    """Forward tangent sweep over [start, stop): dot[i] = da * dot[a] + db * dot[b]."""
    for i in range(start, stop):
        ia = a[i]
        ib = b[i]
        s = 0.0
        if ia >= 0:
            s += _product(da[i], dot[ia])
        if ib >= 0:
            s += _product(db[i], dot[ib])
        if ia >= 0 or ib >= 0:
            dot[i] = s


@kernel
def hvp_sweep(op, a, b, c, val, da, db, adj, dot, adj_dot, last):
    """Forward-over-reverse through entries [0, last]: with ``dot`` holding the tangent of
    every source, propagate tangents forward, then sweep adjoints ``adj`` and their tangents
    ``adj_dot`` (seeded by the caller) backward. Second partials come from the op table.
    Zero factors are skipped, as in ``backward``, so 0 * inf never enters a sum."""
    tangent(a, b, da, db, dot, 0, last + 1)
    for i in range(last, -1, -1):
        g = adj[i]
        gd = adj_dot[i]
        if g == 0.0 and gd == 0.0:
            continue
        ia = a[i]
        ib = b[i]
        if ia < 0 and ib < 0:
            continue
        xd = dot[ia] if ia >= 0 else 0.0
        yd = dot[ib] if ib >= 0 else 0.0
        dxx = dxy = dyy = 0.0
        if g != 0.0 and (xd != 0.0 or yd != 0.0):
            x = val[ia] if ia >= 0 else c[i]
            y = val[ib] if ib >= 0 else c[i]
            dxx, dxy, dyy = second_partials(op[i], x, y)
        if ia >= 0:
            adj[ia] += _product(da[i], g)
            adj_dot[ia] += _product(da[i], gd) + _product(dxx, xd * g) + _product(dxy, yd * g)
        if ib >= 0:
            adj[ib] += _product(db[i], g)
            adj_dot[ib] += _product(db[i], gd) + _product(dxy, xd * g) + _product(dyy, yd * g)


# --- one call per replay: composites of the sweeps above, to pay Numba's call cost once ---


@kernel
def replay(op, a, b, c, val, da, db, inputs, params, x, p):
    """Write inputs x and parameters p into val and evaluate the whole tape."""
    for k in range(inputs.shape[0]):
        val[inputs[k]] = x[k]
    for k in range(params.shape[0]):
        val[params[k]] = p[k]
    return forward(op, a, b, c, val, da, db, 0, op.shape[0])


@kernel
def gradient(a, b, da, db, adj, inputs, out, grad):
    """grad[k] = d val[out] / d val[inputs[k]] by one reverse sweep (adj is scratch)."""
    adj[: out + 1] = 0.0
    adj[out] = 1.0
    backward(a, b, da, db, adj, out)
    for k in range(inputs.shape[0]):
        # An input recorded after the output cannot influence it (and adj is stale there).
        grad[k] = adj[inputs[k]] if inputs[k] <= out else 0.0


@kernel
def replay_value_and_grad(op, a, b, c, val, da, db, adj, inputs, params, out, x, p, grad):
    """Replay at (x, p), then the gradient of entry ``out``; return a failed guard or -1."""
    failed = replay(op, a, b, c, val, da, db, inputs, params, x, p)
    if failed < 0:
        gradient(a, b, da, db, adj, inputs, out, grad)
    return failed


@kernel
def jacobian_reverse(a, b, da, db, adj, inputs, outputs, jac):
    """jac[j, k] = d out_j / d in_k: one reverse sweep per output."""
    for j in range(outputs.shape[0]):
        gradient(a, b, da, db, adj, inputs, outputs[j], jac[j])


@kernel
def jacobian_forward(a, b, da, db, dot, inputs, outputs, jac):
    """jac[j, k] = d out_j / d in_k: one tangent sweep per input."""
    n = a.shape[0]
    for k in range(inputs.shape[0]):
        dot[:] = 0.0
        dot[inputs[k]] = 1.0
        tangent(a, b, da, db, dot, 0, n)
        for j in range(outputs.shape[0]):
            jac[j, k] = dot[outputs[j]]


@kernel
def hessian(op, a, b, c, val, da, db, adj, dot, adj_dot, inputs, out, hess):
    """The full Hessian of entry ``out``: one forward-over-reverse sweep per input."""
    n = inputs.shape[0]
    e = np.zeros(n)
    outputs = np.full(1, out)
    weights = np.ones(1)
    for k in range(n):
        e[k] = 1.0
        weighted_hessian_vector(op, a, b, c, val, da, db, adj, dot, adj_dot, inputs, outputs, weights, e, hess[k])
        e[k] = 0.0


# --- batches: a block of points per tape entry (lanes), blocks spread over cores ----------


@kernel
def forward_lanes(op, a, b, c, V, DA, DB, failed):
    """Evaluate the tape for the L points in the lanes of V (entries x L; sources filled by
    the caller); failed[l] is the first failed guard of lane l, or -1."""
    L = V.shape[1]
    failed[:] = -1
    for i in range(op.shape[0]):
        code = op[i]
        if code < FIRST_COMPUTED:
            continue
        ia = a[i]
        ib = b[i]
        ci = c[i]
        for l in range(L):
            x = V[ia, l] if ia >= 0 else ci
            y = V[ib, l] if ib >= 0 else ci
            v, dx, dy = evaluate(code, x, y)
            V[i, l] = v
            DA[i, l] = dx
            DB[i, l] = dy
        if code == ops.GUARD:
            for l in range(L):
                if V[i, l] == 0.0 and failed[l] < 0:
                    failed[l] = i


@kernel
def backward_lanes(a, b, DA, DB, ADJ, last):
    """``backward`` for every lane: ADJ[operand] += partial * ADJ[i], zero products skipped."""
    L = ADJ.shape[1]
    for i in range(last, -1, -1):
        ia = a[i]
        ib = b[i]
        if ia >= 0:
            for l in range(L):
                ADJ[ia, l] += _product(DA[i, l], ADJ[i, l])
        if ib >= 0:
            for l in range(L):
                ADJ[ib, l] += _product(DB[i, l], ADJ[i, l])


@kernel
def batch_block(
    op, a, b, c, value, inputs, params, outputs, X, P, lo, want_grad, values, grads, failed, scratch, lane_failed
):
    """Points lo, lo + 1, ... (as many as ``scratch`` has lanes) of ``batch``; lanes past
    the last point repeat it and are not written out."""
    V, DA, DB, ADJ = scratch[0], scratch[1], scratch[2], scratch[3]
    L = V.shape[1]
    K = X.shape[0]
    for i in range(op.shape[0]):
        if op[i] < FIRST_COMPUTED:
            V[i, :] = value[i]
    for l in range(L):
        point = min(lo + l, K - 1)
        for k in range(inputs.shape[0]):
            V[inputs[k], l] = X[point, k]
        row = point if P.shape[0] > 1 else 0
        for k in range(params.shape[0]):
            V[params[k], l] = P[row, k]
    forward_lanes(op, a, b, c, V, DA, DB, lane_failed)
    n = min(L, K - lo)
    for l in range(n):
        failed[lo + l] = lane_failed[l]
        for j in range(outputs.shape[0]):
            values[lo + l, j] = V[outputs[j], l]
    if want_grad:
        out = outputs[0]
        ADJ[: out + 1, :] = 0.0
        ADJ[out, :] = 1.0
        backward_lanes(a, b, DA, DB, ADJ, out)
        for l in range(n):
            for k in range(inputs.shape[0]):
                grads[lo + l, k] = ADJ[inputs[k], l] if inputs[k] <= out else 0.0


@kernel
def batch_share(
    op, a, b, c, value, inputs, params, outputs, X, P, w, workers, want_grad, values, grads, failed, scratch, lane_failed
):
    """Worker w's share of ``batch``: every workers-th block of points, as many per block as
    ``scratch`` (4 x entries x block, reused for every block) has lanes."""
    block = scratch.shape[2]
    nblocks = (X.shape[0] + block - 1) // block
    for blk in range(w, nblocks, workers):
        batch_block(
            op, a, b, c, value, inputs, params, outputs, X, P, blk * block, want_grad, values, grads, failed,
            scratch, lane_failed,
        )  # fmt: skip


@kernel(parallel=True)
def batch(op, a, b, c, value, inputs, params, outputs, X, P, workers, want_grad, values, grads, failed, scratch, lanes):
    """Evaluate K points X (K x n) with parameters P (K x p; one row when shared):
    values[k, j] of each output, grads[k] of output 0 when want_grad, failed[k] the first
    failed guard of point k or -1; ``workers`` threads share the blocks, worker w in
    scratch[w] and lanes[w]. Nothing is allocated here: an allocation failure inside a
    parallel region cannot be raised as MemoryError, so the caller allocates."""
    for w in numba.prange(workers):
        batch_share(
            op, a, b, c, value, inputs, params, outputs, X, P, w, workers, want_grad, values, grads, failed,
            scratch[w], lanes[w],
        )  # fmt: skip


# --- several outputs at once: weighted seeds, compressed sparse Hessians ------------------


@kernel
def weighted_gradient(a, b, da, db, adj, inputs, outputs, weights, grad):
    """grad[k] = sum_j weights[j] d val[outputs[j]] / d val[inputs[k]]: one reverse sweep."""
    last = outputs.max()
    adj[: last + 1] = 0.0
    for j in range(outputs.shape[0]):
        adj[outputs[j]] += weights[j]
    backward(a, b, da, db, adj, last)
    for k in range(inputs.shape[0]):
        grad[k] = adj[inputs[k]] if inputs[k] <= last else 0.0


@kernel
def weighted_hessian_vector(op, a, b, c, val, da, db, adj, dot, adj_dot, inputs, outputs, weights, v, hv):
    """hv = (sum_j weights[j] H_j) v, H_j the Hessian of entry outputs[j] (after a replay)."""
    last = outputs.max()
    dot[: last + 1] = 0.0
    for k in range(inputs.shape[0]):
        if inputs[k] <= last:
            dot[inputs[k]] = v[k]
    adj[: last + 1] = 0.0
    adj_dot[: last + 1] = 0.0
    for j in range(outputs.shape[0]):
        adj[outputs[j]] += weights[j]
    hvp_sweep(op, a, b, c, val, da, db, adj, dot, adj_dot, last)
    for k in range(inputs.shape[0]):
        hv[k] = adj_dot[inputs[k]] if inputs[k] <= last else 0.0


@kernel
def compressed_hessian(
    op, a, b, c, val, da, db, adj, inputs, params, x, p, outputs, weights, flags, tangents, src_colour, src_row,
    dot, adj_dot, data,
):
    """Replay at (x, p) (return the first failed guard, -2 for a partial that is not
    finite, or -1), then the nonzeros of the
    weighted Hessian: data[q] = (H s_c)[src_row[q]] for c = src_colour[q], s_c the indicator
    of the columns of colour c (no two of which share a nonzero row). ``hvp_sweep`` with one
    tangent lane per colour, restricted by the tape's structure (sparse.py's plan): only the
    entries in ``tangents`` get a tangent; going back, flags[i] & 1 marks an entry whose
    adjoint tangent can be nonzero, & 2 one with curvature (a second partial meeting a
    nonzero adjoint and an operand tangent); the lanes of unmarked entries are exactly zero.
    Scratch: dot (entries x colours) holds the inputs' colour indicators and zeros, only the
    rows in ``tangents`` are written; adj_dot (same shape) is zeroed here."""
    failed = replay(op, a, b, c, val, da, db, inputs, params, x, p)
    if failed >= 0:
        return failed
    last = outputs.max()
    for i in range(last + 1):
        if not (np.isfinite(da[i]) and np.isfinite(db[i])):
            # An infinite or NaN partial (sqrt at 0): colours could add up what the dense
            # sweeps keep apart (inf - inf), so the caller computes the dense Hessian.
            return -2
    L = dot.shape[1]
    for t in range(tangents.shape[0]):
        i = tangents[t]
        ia = a[i]
        ib = b[i]
        if ia >= 0 and ib >= 0:
            for l in range(L):
                dot[i, l] = _product(da[i], dot[ia, l]) + _product(db[i], dot[ib, l])
        elif ia >= 0:
            for l in range(L):
                dot[i, l] = _product(da[i], dot[ia, l])
        else:
            for l in range(L):
                dot[i, l] = _product(db[i], dot[ib, l])
    adj[: last + 1] = 0.0
    adj_dot[: last + 1] = 0.0
    for j in range(outputs.shape[0]):
        adj[outputs[j]] += weights[j]
    for i in range(last, -1, -1):
        ia = a[i]
        ib = b[i]
        g = adj[i]
        if g != 0.0:
            if ia >= 0:
                adj[ia] += _product(da[i], g)
            if ib >= 0:
                adj[ib] += _product(db[i], g)
        if flags[i] & 2 and g != 0.0:
            dxx, dxy, dyy = second_partials(op[i], val[ia] if ia >= 0 else c[i], val[ib] if ib >= 0 else c[i])
            for l in range(L):
                gd = adj_dot[i, l]
                xd = dot[ia, l] if ia >= 0 else 0.0
                yd = dot[ib, l] if ib >= 0 else 0.0
                if gd == 0.0 and xd == 0.0 and yd == 0.0:
                    continue
                if ia >= 0:
                    adj_dot[ia, l] += _product(da[i], gd) + _product(dxx, xd * g) + _product(dxy, yd * g)
                if ib >= 0:
                    adj_dot[ib, l] += _product(db[i], gd) + _product(dxy, xd * g) + _product(dyy, yd * g)
        elif flags[i] & 1:
            for l in range(L):
                gd = adj_dot[i, l]
                if gd != 0.0:
                    if ia >= 0:
                        adj_dot[ia, l] += _product(da[i], gd)
                    if ib >= 0:
                        adj_dot[ib, l] += _product(db[i], gd)
    for q in range(data.shape[0]):
        r = src_row[q]
        data[q] = adj_dot[inputs[r], src_colour[q]] if inputs[r] <= last else 0.0
    return -1


# --- one packed call for small tapes (issue 13, item 5) ---------------------------------------
#
# Numba's dispatcher costs ~0.1 us per array argument: replay_value_and_grad's 14 arguments
# cost more than the sweeps of a 25-entry tape. Here the program's integer columns travel as
# one array and a thread's work columns (with a copy of the constants) as the rows of another.

PACKED_HEADER = 4  # ints[:4] = entries, inputs, parameters, the differentiated output


@kernel
def packed_value_and_grad(ints, work, x, p, grad):
    """replay_value_and_grad on a program packed as ints = [header, op, a, b, inputs,
    params] and work = [val, da, db, adj, const] (rows); returns f, or NaN when a guard
    failed or x, p are not contiguous vectors of the inputs' and parameters' lengths."""
    if x.shape[0] != ints[1] or x.strides[0] != 8 or p.shape[0] != ints[2]:
        return np.nan
    n = ints[0]
    i = PACKED_HEADER
    op = ints[i : i + n]
    a = ints[i + n : i + 2 * n]
    b = ints[i + 2 * n : i + 3 * n]
    inputs = ints[i + 3 * n : i + 3 * n + ints[1]]
    params = ints[i + 3 * n + ints[1] : i + 3 * n + ints[1] + ints[2]]
    out = ints[3]
    val = work[0]
    if replay_value_and_grad(op, a, b, work[4], val, work[1], work[2], work[3], inputs, params, out, x, p, grad) >= 0:
        return np.nan
    return float(val[out])  # a Python float under NUMBA_DISABLE_JIT too
