"""Sparse derivatives from the tape: sparsity patterns of the Jacobian and the Hessian,
a greedy colouring of their columns, and exact compressed evaluation (one tangent sweep or
one Hessian-vector product per colour) into ``scipy.sparse.csr_array``.

Patterns are structural: they hold for every input that replays the same tape, so they are
computed once per recorded program. They may contain entries that are zero at a point,
never miss one that is not: an op's partial is taken as zero only where the op table's
formula returns exactly 0.0 for every input (``FIRST_ZERO``, ``SECOND``, checked against
the formulas by tests/test_sparse.py); every op not listed counts as fully nonlinear.
"""

import threading
import weakref

import numpy as np
import scipy.sparse

from . import debug, kernels, ops

# Ops whose first partial d/dx (first flag) or d/dy (second) is identically zero.
FIRST_ZERO = {
    "lt": (True, True),
    "le": (True, True),
    "eq": (True, True),
    "ne": (True, True),
    "guard": (True, True),
    "sign": (True, True),
    "floor": (True, True),
    "ceil": (True, True),
    "trunc": (True, True),
    "rint": (True, True),
    "floordiv": (True, True),
    "stop_gradient": (True, True),
    "where_true": (True, False),  # the condition gets no derivative
    "where_false": (True, False),
}

# Which second partials (d2/dx2, d2/dxdy, d2/dy2) an op's formula can return nonzero; ops
# not listed may return any. Piecewise-linear ops return zeros (their kinks are measure 0).
_LINEAR = (False, False, False)
SECOND = {
    "mul": (False, True, False),
    "div": (False, True, True),
    **{
        name: _LINEAR
        for name in (
            "add", "sub", "neg", "relu", "abs", "maximum", "minimum", "where_true", "where_false",
            "lt", "le", "eq", "ne", "guard", "sign", "floor", "ceil", "trunc", "rint", "mod", "fmod",
            "floordiv", "stop_gradient",
        )  # fmt: skip
    },
}


def _flags(table, default):
    """Per-opcode boolean arrays from a {name: flags} table (names not in the op table,
    e.g. ops another version lacks, are ignored)."""
    rows = [table.get(op.name, default) for op in ops.OPS]
    return [np.array(column, dtype=bool) for column in zip(*rows)]


_ZERO_DX, _ZERO_DY = _flags(FIRST_ZERO, (False, False))
_NONZERO_XX, _NONZERO_XY, _NONZERO_YY = _flags(SECOND, (True, True, True))


def _bits(s):
    """The positions of the set bits of the int s, ascending."""
    while s:
        low = s & -s
        yield low.bit_length() - 1
        s ^= low


# Index sets are Python ints used as bitsets over the inputs: a union is one C-level OR.


def _dependencies(program):
    """For every entry, the bitset of inputs it depends on through nonzero partials."""
    op, a, b = program.op.tolist(), program.a.tolist(), program.b.tolist()
    zx, zy = _ZERO_DX.tolist(), _ZERO_DY.tolist()
    deps = [0] * len(op)
    for k, i in enumerate(program.inputs.tolist()):
        deps[i] = 1 << k
    for i, code in enumerate(op):
        if code < kernels.FIRST_COMPUTED:
            continue
        s = 0
        if a[i] >= 0 and not zx[code]:
            s |= deps[a[i]]
        if b[i] >= 0 and not zy[code]:
            s |= deps[b[i]]
        deps[i] = s
    return deps


def _csr_pattern(rows, n):
    """A boolean csr_array (len(rows), n) from one bitset per row."""
    indices = [list(_bits(r)) for r in rows]
    indptr = np.zeros(len(rows) + 1, dtype=np.int32)
    indptr[1:] = np.cumsum([len(i) for i in indices])
    flat = np.fromiter((k for row in indices for k in row), dtype=np.int32, count=int(indptr[-1]))
    return scipy.sparse.csr_array((np.ones(flat.size, dtype=bool), flat, indptr), shape=(len(rows), n))


_CACHE = weakref.WeakKeyDictionary()  # program -> {what: derived data}


def _cached(program, key, make):
    per_program = _CACHE.setdefault(program, {})
    if key not in per_program:
        per_program[key] = make()
    return per_program[key]


def jacobian_sparsity(program):
    """The (m, n) boolean pattern of the Jacobian of ``program``'s outputs."""

    def make():
        deps = _dependencies(program)
        return _csr_pattern([deps[o] for o in program.outputs.tolist()], program.inputs.size)

    return _cached(program, "jacobian", make)


def differentiated(program, weights):
    """Which outputs a Hessian differentiates: the first, or all when weighted."""
    return "first" if weights is None else "all"


# Flags of the compressed Hessian sweep (kernels.compressed_hessian), per entry.
HOT = 1  # its adjoint tangent can be nonzero
CURVED = 2  # a second partial meets a nonzero adjoint and a nonzero operand tangent


def _second_order(program, which):
    """The tape's second-order structure, from one reverse pass over the entries that reach
    a differentiated output through nonzero partials (``live``): the Hessian's rows as
    bitsets, and for the compressed sweep each entry's flags and the entries whose tangent
    it needs (those that reach a CURVED entry's operands).

    Chain rule: the Hessian is a sum over entries of adjoint * grad u * grad v^T * d2/du dv,
    so an entry whose op has a nonzero second partial d2/du dv contributes the pairs
    deps(u) x deps(v); the same term, swept in forward-over-reverse, is what makes the
    entry CURVED, and the operands it reaches HOT, as are the operands of a HOT entry."""

    def make():
        deps = _dependencies(program)
        op, a, b = program.op.tolist(), program.a.tolist(), program.b.tolist()
        outputs = program.outputs.tolist() if which == "all" else [program.out]
        zx, zy = _ZERO_DX.tolist(), _ZERO_DY.tolist()
        xx, xy, yy = _NONZERO_XX.tolist(), _NONZERO_XY.tolist(), _NONZERO_YY.tolist()
        n = program.inputs.size
        last = max(outputs)
        live = bytearray(last + 1)
        hot = bytearray(last + 1)
        needs_tangent = bytearray(last + 1)
        flags = np.zeros(last + 1, dtype=np.int8)
        for o in outputs:
            live[o] = 1
        rows = [0] * n
        for i in range(last, -1, -1):
            code = op[i]
            if not live[i] or code < kernels.FIRST_COMPUTED:
                continue
            da = deps[a[i]] if a[i] >= 0 else 0
            db = deps[b[i]] if b[i] >= 0 else 0
            through_a = a[i] >= 0 and not zx[code]
            through_b = b[i] >= 0 and not zy[code]
            if through_a:
                live[a[i]] = 1
            if through_b:
                live[b[i]] = 1
            if xx[code] and da:
                for k in _bits(da):
                    rows[k] |= da
            if yy[code] and db:
                for k in _bits(db):
                    rows[k] |= db
            if xy[code] and da and db:
                for k in _bits(da):
                    rows[k] |= db
                for k in _bits(db):
                    rows[k] |= da
            curves_a = da and (xx[code] or (xy[code] and db))
            curves_b = db and (yy[code] or (xy[code] and da))
            if curves_a or curves_b:
                flags[i] |= CURVED
                for operand in (a[i], b[i]):  # it reads both operands' tangents
                    if operand >= 0 and deps[operand] and op[operand] >= kernels.FIRST_COMPUTED:
                        needs_tangent[operand] = 1
            if hot[i]:
                flags[i] |= HOT
            if curves_a or (hot[i] and through_a and da):
                hot[a[i]] = 1
            if curves_b or (hot[i] and through_b and db):
                hot[b[i]] = 1
        # A tangent is computed from its operands' tangents: they are needed too. Sources'
        # tangents are not computed (the inputs' are seeds, the others zero).
        for i in range(last, -1, -1):
            if needs_tangent[i]:
                for operand in (a[i], b[i]):
                    if operand >= 0 and deps[operand] and op[operand] >= kernels.FIRST_COMPUTED:
                        needs_tangent[operand] = 1
        tangents = np.flatnonzero(np.frombuffer(needs_tangent, dtype=np.uint8)).astype(np.int64)
        return rows, flags, tangents

    return _cached(program, ("second order", which), make)


def hessian_sparsity(program, which="first"):
    """The (n, n) symmetric boolean pattern of the Hessian of the first output (``which =
    "first"``) or of any weighted sum of the outputs (``"all"``); see ``_second_order``."""

    def make():
        rows, _, _ = _second_order(program, which)
        return _csr_pattern(rows, program.inputs.size)

    return _cached(program, ("hessian", which), make)


def colour_columns(pattern):
    """A greedy colouring of the columns of a csr pattern such that no two columns of one
    colour have a nonzero in the same row (distance-2 in the bipartite row/column graph):
    then (A s_c)[i] = A[i, j] for the one column j of colour c with a nonzero in row i."""
    rows_of = pattern.tocsc()
    col_ptr, col_rows = rows_of.indptr.tolist(), rows_of.indices.tolist()
    row_ptr, row_cols = pattern.indptr.tolist(), pattern.indices.tolist()
    n = pattern.shape[1]
    colour = [-1] * n
    forbidden = [-1] * (n + 1)  # forbidden[c] == j: colour c is taken near column j
    for j in range(n):
        for r in col_rows[col_ptr[j] : col_ptr[j + 1]]:
            for k in row_cols[row_ptr[r] : row_ptr[r + 1]]:
                if colour[k] >= 0:
                    forbidden[colour[k]] = j
        c = 0
        while forbidden[c] == j:
            c += 1
        colour[j] = c
    return np.array(colour, dtype=np.int64)


class _HessianPlan:
    """What ``hessian`` needs beyond the tape, made once per program: the colouring, where
    each nonzero is read (the upper triangle's (min, max) from the product of column max's
    colour, so that the result is exactly symmetric), the sweep's flags and tangent entries,
    and the result's structure as a csr_array."""

    __slots__ = ("outputs", "colours", "flags", "tangents", "src_colour", "src_row", "template", "__weakref__")

    def __init__(self, program, which):
        self.outputs = program.outputs if which == "all" else program.outputs[:1]
        pattern = hessian_sparsity(program, which)
        colour = colour_columns(pattern)
        rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
        cols = pattern.indices
        self.colours = colour
        self.src_colour = colour[np.maximum(rows, cols)]
        self.src_row = np.minimum(rows, cols).astype(np.int64)
        _, self.flags, self.tangents = _second_order(program, which)
        self.template = _CSR((np.zeros(cols.size), pattern.indices, pattern.indptr), shape=pattern.shape)


def _hessian_plan(program, which):
    return _cached(program, ("hessian plan", which), lambda: _HessianPlan(program, which))


_CSR = scipy.sparse.csr_array
_NO_PARAMS = np.empty(0)
_ONE = np.ones(1)  # the seed of an unweighted Hessian
_local = threading.local()


def _csr_like(template, data):
    """``template``'s structure (own copies of its index arrays) with ``data``: the
    attributes of an array SciPy built and checked, without its constructor's checks again
    (they cost more than the Hessian of a small tape)."""
    h = _CSR.__new__(_CSR)
    h.__dict__.update(template.__dict__)
    h.data = data
    h.indices = template.indices.copy()
    h.indptr = template.indptr.copy()
    return h


def _scratch(program, plan):
    """This thread's (dot, adj_dot) for ``plan``: dot holds the inputs' colour indicators,
    zeros elsewhere, and keeps them (the sweep writes only the rows of ``plan.tangents``)."""
    try:
        cache = _local.scratch
    except AttributeError:
        cache = _local.scratch = weakref.WeakKeyDictionary()
    scratch = cache.get(plan)
    if scratch is None:
        rows = plan.flags.size
        lanes = int(plan.colours.max()) + 1 if plan.colours.size else 0
        dot = np.zeros((rows, lanes))
        for k, i in enumerate(program.inputs.tolist()):
            if i < rows:
                dot[i, plan.colours[k]] = 1.0
        scratch = cache[plan] = (dot, np.zeros((rows, lanes)))
    return scratch


def _exact_arguments(F, x, args):
    """(x, p) when x and the parameters are float64 arrays of the traced shapes, as the
    kernel takes them; else None (``F._run`` then converts and checks them)."""
    if type(x) is not np.ndarray or x.dtype != np.float64 or x.shape != (F._n,) or len(args) != len(F._param_shapes):
        return None
    parts = []
    for arg, shape in zip(args, F._param_shapes):
        if type(arg) is not np.ndarray or arg.dtype != np.float64 or arg.shape != shape:
            return None
        parts.append(arg.ravel())
    return np.ascontiguousarray(x), np.concatenate(parts) if parts else _NO_PARAMS


def _compressed_hessian(program, w, which, seeds, x, p):
    """The kernel's call: replay ``program`` at (x, p) into w, then the Hessian's nonzeros;
    None when a guard fails."""
    plan = _hessian_plan(program, which)
    dot, adj_dot = _scratch(program, plan)
    data = np.empty(plan.src_row.size)
    failed = kernels.compressed_hessian(
        program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj, program.inputs, program.params,
        x, p, plan.outputs, seeds, plan.flags, plan.tangents, plan.src_colour, plan.src_row, dot, adj_dot, data,
    )  # fmt: skip
    if failed == SINGULAR:
        return SINGULAR
    return None if failed >= 0 else _csr_like(plan.template, data)


SINGULAR = -2  # the compressed sweep's answer when a partial is infinite or NaN


def _singular(F, program, x, args, which, weights):
    """The Hessian on its sparsity pattern, computed the dense way (one forward-over-reverse
    sweep per input, symmetrized): where a partial is infinite or NaN, dense and sparse
    results must still be the same numbers, NaNs included."""
    if weights is None:
        dense = F.hessian(x, *args)
    else:
        rows = [weighted_hvp(F, x, e, args, weights) for e in np.eye(F._n)]
        dense = 0.5 * (np.array(rows) + np.array(rows).T)
    template = _hessian_plan(program, which).template
    rows = np.repeat(np.arange(template.shape[0]), np.diff(template.indptr))
    return _csr_like(template, dense[rows, template.indices])


def _with_tangents(F, x, args):
    """Replay F at (x, args); this thread's work columns, with tangent scratch."""
    program, w = F._run(x, args)
    if w.dot is None:
        w.dot = np.zeros(len(program))
        w.adj_dot = np.zeros(len(program))
    return program, w


def _seeds(F, program, weights):
    """(outputs, weights) to seed: the first output with 1, or every output weighted."""
    if weights is None:
        F._scalar_output("hessian")
        return program.outputs[:1], np.ones(1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != program.outputs.size:
        raise ValueError(f"weights must hold one number per output ({program.outputs.size}), got {w.size}")
    return program.outputs, np.ascontiguousarray(w)


def hessian(F, x, args, weights=None):
    """The Hessian of F's first output (or of sum_j weights[j] out_j) at x, a csr_array.
    One compiled call replays the last branch's tape and sweeps it; when a guard fails, or
    x needs converting, or in debug mode, ``F._run`` finds (or records) the tape first."""
    which = differentiated(None, weights)
    if weights is None:
        F._scalar_output("hessian")
        seeds = _ONE
    else:
        seeds = _seeds(F, F._last, weights)[1]
    exact = _exact_arguments(F, x, args)
    if exact is not None and not debug.enabled():
        program = F._last
        h = _compressed_hessian(program, F._work(program), which, seeds, *exact)
        if h is SINGULAR:
            return _singular(F, program, x, args, which, weights)
        if h is not None:
            return h
    program, w = F._run(x, args)
    # the same bits as given: replay wrote x and the parameters there
    h = _compressed_hessian(program, w, which, seeds, w.val[program.inputs], w.val[program.params])
    if h is SINGULAR:
        return _singular(F, program, x, args, which, weights)
    if h is None:
        raise RuntimeError("jitad bug: the tape just replayed at x fails a guard when replayed there again")
    return h


def weighted_hvp(F, x, v, args, weights):
    """(sum_j weights[j] H_j) v: one forward-over-reverse sweep seeded on every output."""
    if weights is None:
        F._scalar_output("hvp")
    program, w = _with_tangents(F, x, args)
    outputs, seeds = _seeds(F, program, weights)
    v = np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
    if v.size != program.inputs.size:
        raise ValueError(f"v must have shape ({program.inputs.size},), got {np.shape(v)}")
    hv = np.empty(program.inputs.size)
    kernels.weighted_hessian_vector(
        program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj, w.dot, w.adj_dot,
        program.inputs, outputs, seeds, v, hv,
    )  # fmt: skip
    return hv


def _jacobian_plan(program):
    def make():
        pattern = jacobian_sparsity(program)
        colour = colour_columns(pattern)
        rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
        by_colour = [np.flatnonzero(colour[pattern.indices] == c) for c in range(colour.max() + 1 if colour.size else 0)]
        template = _CSR((np.zeros(rows.size), pattern.indices, pattern.indptr), shape=pattern.shape)
        return pattern, colour, rows, by_colour, template

    return _cached(program, "jacobian plan", make)


def jacobian(F, x, args):
    """F's (m, n) Jacobian at x as a csr_array: one tangent sweep per colour of columns.
    Where a partial is infinite or NaN, the dense Jacobian's reverse sweeps instead (see
    ``TapeFunction.jacobian``), so both give the same numbers."""
    program, w = F._run(x, args)
    pattern, colour, rows, by_colour, template = _jacobian_plan(program)
    if not (np.isfinite(w.da).all() and np.isfinite(w.db).all()):
        dense = np.atleast_2d(F.jacobian(x, *args))
        return _csr_like(template, dense[rows, pattern.indices])
    data = np.empty(pattern.indices.size)
    dot = np.empty(len(program))
    out_rows = program.outputs[rows]
    for c, where in enumerate(by_colour):
        dot[:] = 0.0
        dot[program.inputs] = colour == c
        kernels.tangent(program.a, program.b, w.da, w.db, dot, 0, len(program))
        data[where] = dot[out_rows[where]]
    return _csr_like(template, data)
