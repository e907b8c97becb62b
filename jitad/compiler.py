"""The compiler tier: reroll a recorded program's repetition back into loops, emit Numba
source for its replay and its fused value-and-gradient, and cache the result by structure.

Layers: this module reads a program's arrays (it never imports ``trace``); ``trace`` asks
``Tier.get`` for compiled code and falls back to the interpreter kernels until it exists.
"""

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from . import _config, kernels, ops

# --- reroll ------------------------------------------------------------------------------
#
# An *item* is an entry or a block; every item has a structure id (``sid``), the index of
# its first entry, and ``refs``: the operand indices (>= 0) of its first repetition, in
# entry order. An entry's structure is (opcode, has a, has b). A block's structure is its
# repetition count, its body's structures and, for each ref of the body, the stride by
# which that ref moves per repetition. Operand indices are thus always base + stride * k:
# a ref into the same repetition moves by the body's span, a ref to a fixed entry by 0,
# a ref to the previous repetition (a running sum) by the span too. Applying the same
# search to the item sequence again finds nested repetition (dot products in neurons in
# samples).

MAX_PERIOD = 512  # longest body (in items of one level) searched for
CANDIDATES = 4  # periods tried at each position: the next occurrences of the same item
MAX_LEVELS = 8
LOOKAHEAD = 4  # items a block's start may move to cover more (a peeled first repetition)
LOOKAHEAD_BELOW = 256  # blocks covering more items than this are taken as found

_ENTRY = 0
_BLOCK = 1


class Structures:
    """Interned item structures: ``kind[sid]``, ``info[sid]``, ``nrefs[sid]``, ``span[sid]``."""

    def __init__(self):
        self._ids = {}
        self.info = []
        self.nrefs = []
        self.span = []

    def intern(self, key, nrefs, span):
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = len(self.info)
            self.info.append(key)
            self.nrefs.append(nrefs)
            self.span.append(span)
        return sid


class Rerolled:
    """A program as top-level items: ``items`` is a list of (sid, start, refs)."""

    def __init__(self, structures, items, n):
        self.structures = structures
        self.items = items
        self.n = n

    def expand(self):
        """(op, a, b) of every entry, from the rerolled form alone (a test of exactness)."""
        op = np.full(self.n, -1, dtype=np.int64)
        a = np.full(self.n, -2, dtype=np.int64)
        b = np.full(self.n, -2, dtype=np.int64)
        stack = [(sid, start, list(refs)) for sid, start, refs in reversed(self.items)]
        while stack:
            sid, start, refs = stack.pop()
            info = self.structures.info[sid]
            if info[0] == _ENTRY:
                _, code, has_a, has_b = info
                op[start] = code
                a[start] = refs[0] if has_a else -1
                b[start] = refs[has_a] if has_b else -1
                continue
            _, count, body, strides = info
            span = self.structures.span[sid] // count
            work = []
            for k in range(count):
                shifted = [r + s * k for r, s in zip(refs, strides)]
                offset = start + span * k
                pos = 0
                for child in body:
                    m = self.structures.nrefs[child]
                    work.append((child, offset, shifted[pos : pos + m]))
                    offset += self.structures.span[child]
                    pos += m
            stack.extend(reversed(work))
        return op, a, b

    def summary(self):
        """Counts for reports: top-level items, blocks, entries emitted (each body once)."""
        blocks = sum(1 for sid, _, _ in self.items if self.structures.info[sid][0] == _BLOCK)
        static = sum(self._static(sid) for sid, _, _ in self.items)
        return {"items": len(self.items), "blocks": blocks, "static": static}

    def _static(self, sid):
        info = self.structures.info[sid]
        return 1 if info[0] == _ENTRY else sum(self._static(c) for c in info[2])


def reroll(op, a, b):
    """Find repeated blocks in the tape (op, a, b), level after level; exact and near linear."""
    n = op.shape[0]
    st = Structures()
    has_a = a >= 0
    has_b = b >= 0
    items = []
    for i, (code, ha, hb, ia, ib) in enumerate(
        zip(op.tolist(), has_a.tolist(), has_b.tolist(), a.tolist(), b.tolist())
    ):
        refs = (ia, ib) if ha and hb else (ia,) if ha else (ib,) if hb else ()
        items.append((st.intern((_ENTRY, code, ha, hb), len(refs), 1), i, refs))
    for _ in range(MAX_LEVELS):
        rolled = _roll_level(items, st)
        if len(rolled) == len(items):
            break
        items = rolled
    return Rerolled(st, items, n)


def _roll_level(items, st):
    sids = [it[0] for it in items]
    T = len(items)
    nxt = [-1] * T
    last = {}
    for t in range(T - 1, -1, -1):
        nxt[t] = last.get(sids[t], -1)
        last[sids[t]] = t
    out = []
    t = 0
    while t < T:
        count, period = _best_block(items, sids, nxt, t)
        # A first repetition that differs (a sum's first term, a loss's first sample) is
        # left straight when a block starting up to LOOKAHEAD items later covers half as
        # much again (counted only that far: a long block is not scanned once per start).
        need = (3 * count * period) // 2 + LOOKAHEAD
        if (
            period == 0
            or count * period <= LOOKAHEAD_BELOW
            and any(
                _coverage(_best_block(items, sids, nxt, t + d, need)) >= need
                for d in range(1, LOOKAHEAD + 1)
                if t + d < T
            )
        ):
            out.append(items[t])
            t += 1
            continue
        best_count, best_period = count, period
        body = items[t : t + best_period]
        refs = tuple(r for it in body for r in it[2])
        follow = items[t + best_period : t + 2 * best_period]
        strides = tuple(r1 - r0 for r0, r1 in zip(refs, (r for it in follow for r in it[2])))
        body_sids = tuple(sids[t : t + best_period])
        span = sum(st.span[s] for s in body_sids) * best_count
        sid = st.intern((_BLOCK, best_count, body_sids, strides), len(refs), span)
        out.append((sid, items[t][1], refs))
        t += best_count * best_period
    return out


def _coverage(block):
    return block[0] * block[1]


def _best_block(items, sids, nxt, t, enough=None):
    """(repetitions, period) of the block starting at t that covers most items (or at
    least ``enough``), or (1, 0)."""
    best_count, best_period = 1, 0
    cand = nxt[t]
    for _ in range(CANDIDATES):
        if cand < 0 or cand - t > MAX_PERIOD:
            break
        period = cand - t
        count = _repetitions(items, sids, t, period, None if enough is None else -(-enough // period))
        if count > 1 and count * period > best_count * best_period:
            best_count, best_period = count, period
        cand = nxt[cand]
    return best_count, best_period


def _repetitions(items, sids, t, period, most=None):
    """How many times (up to ``most``) items[t : t + period] repeat from t with refs affine
    in the repetition."""
    T = len(items)
    if t + 2 * period > T or sids[t : t + period] != sids[t + period : t + 2 * period]:
        return 1
    strides = [tuple(r1 - r0 for r0, r1 in zip(items[t + j][2], items[t + period + j][2])) for j in range(period)]
    count = 2
    while t + (count + 1) * period <= T and (most is None or count < most):
        base = t + count * period
        if sids[base : base + period] != sids[t : t + period]:
            break
        ok = True
        for j in range(period):
            prev = items[base - period + j][2]
            cur = items[base + j][2]
            if any(r1 - r0 != s for r0, r1, s in zip(prev, cur, strides[j])):
                ok = False
                break
        if not ok:
            break
        count += 1
    # The second repetition fixed the strides; the first pair must agree with them too,
    # which holds by construction (the strides were measured on it).
    return count


# --- emit --------------------------------------------------------------------------------
#
# An index in the rerolled program is affine in the loop counters: (constant, ((loop, coef),
# ...)). The plan walks the items once, naming each computed entry's *slot* (its place in
# the generated code, one per repetition pattern) and resolving every operand to a local
# (computed earlier in the same iteration of the same loops, in the same function), the
# value array, or the entry's constant. Every value and partial is still written to the
# work arrays, so the interpreter's sweeps (jacobian, hvp, hessian) run after a compiled
# replay unchanged.

CHUNK = 256  # entries (each loop body counted once) per generated function


def _shift(expr, const=0, loop=None, coef=0):
    base, terms = expr
    terms = dict(terms)
    if loop is not None and coef:
        terms[loop] = terms.get(loop, 0) + coef
    return base + const, tuple(sorted((k, v) for k, v in terms.items() if v))


def _render(expr):
    base, terms = expr
    return " + ".join([str(base)] + [f"{coef} * k{loop}" for loop, coef in terms])


class _Plan:
    """The generated code's shape: chunks of nodes; a node is ("loop", id, count, nodes) or
    ("entry", slot, code, index, x, y) with x, y one of ("local", slot), ("val", index),
    ("const",)."""

    def __init__(self, rr, op, a, b, outputs):
        self.rr = rr
        self.slots = []  # slot -> [index expr, loop counts {loop: count}, local uses]
        self.loops = 0
        self.chunks = []
        self._counts = {}
        items = rr.items
        chunk, size = [], 0
        for sid, start, refs in items:
            cost = rr._static(sid)
            if chunk and size + cost > CHUNK:
                self.chunks.append(chunk)
                chunk, size = [], 0
            if not chunk:
                self._locals = {}
            chunk.extend(self._item(sid, (start, ()), [(r, ()) for r in refs]))
            size += cost
        if chunk:
            self.chunks.append(chunk)
        self.local_adjoint = self._local_adjoints(op, a, b, outputs)

    def _item(self, sid, start, refs):
        st = self.rr.structures
        info = st.info[sid]
        if info[0] == _ENTRY:
            return [self._entry(info, start, refs)]
        _, count, body, strides = info
        loop = self.loops
        self.loops += 1
        self._counts[loop] = count
        span = st.span[sid] // count
        moved = [_shift(r, loop=loop, coef=s) for r, s in zip(refs, strides)]
        nodes = []
        offset = _shift(start, loop=loop, coef=span)
        pos = 0
        for child in body:
            m = st.nrefs[child]
            nodes.extend(self._item(child, offset, moved[pos : pos + m]))
            offset = _shift(offset, const=st.span[child])
            pos += m
        # Values computed inside the loop are not locals after it.
        self._locals = {k: v for k, v in self._locals.items() if all(l != loop for l, _ in k[1])}
        del self._counts[loop]
        return [("loop", loop, count, nodes)]

    def _entry(self, info, index, refs):
        _, code, has_a, has_b = info
        if code < kernels.FIRST_COMPUTED:
            return ("source", index)
        operands = []
        refs = iter(refs)
        for has in (has_a, has_b):
            if not has:
                operands.append(("const",))
                continue
            ref = next(refs)
            slot = self._locals.get(ref)
            if slot is None:
                operands.append(("val", ref))
            else:
                # one use per iteration of the loops entered since the slot's definition
                defined = self.slots[slot][1]
                self.slots[slot][2] += int(np.prod([c for l, c in self._counts.items() if l not in defined]))
                operands.append(("local", slot))
        slot = len(self.slots)
        self.slots.append([index, dict(self._counts), 0])
        self._locals[index] = slot
        return ("entry", slot, code, index, operands[0], operands[1])

    def _local_adjoints(self, op, a, b, outputs):
        """Slots whose adjoint can live in a local: every use of every instance is a local
        operand of the same iteration, and no instance is an output."""
        n = op.shape[0]
        uses = np.bincount(a[a >= 0], minlength=n) + np.bincount(b[b >= 0], minlength=n)
        uses[outputs] = -1  # never equal to a count of local uses
        local = []
        for (base, terms), counts, local_uses in self.slots:
            idx = np.array([base])
            for loop, coef in terms:
                idx = (idx[:, None] + coef * np.arange(counts[loop])[None, :]).ravel()
            local.append(bool(np.all(uses[idx] == local_uses)))
        return local


def _source(plan, outputs, inputs, params):
    """Python source of the generated module (functions undecorated: see ``_module``).

    ``replay`` writes every value and partial, as kernels.replay does. ``value_and_grad``
    keeps values in locals and stores only those read from another iteration or function;
    its reverse sweep recomputes each iteration's values and partials from them (the same
    formulas on the same inputs give the same bits) instead of reading them back. The last
    chunk, when no loop of it computes anything (small tapes), runs forward and reverse in
    one function whose reverse reads the forward's locals: each formula evaluated once.
    """
    lines = ["# generated by jitad.compiler; do not edit", "import numpy as np", ""]
    # Global arrays are constants to Numba: the entry point passes them without arguments.
    lines.append(f"INPUTS = {_index_array(inputs)}")
    lines.append(f"PARAMS = {_index_array(params)}")
    lines.append(f"OUTPUTS = {_index_array(outputs)}")
    lines.append("")
    out = int(outputs[0])
    last = len(plan.chunks) - 1
    fused = last >= 0 and not _computes_in_loops(plan.chunks[last])
    for k, chunk in enumerate(plan.chunks):
        for name, full in ((f"forward{k}", True), (f"fast{k}", False)):
            if full or not (fused and k == last):
                lines.append(f"def {name}(val, da, db, adj, c):")
                _forward_lines(plan, chunk, lines, "    ", full)
                lines.append("    return -1")
                lines.append("")
        if not (fused and k == last):
            lines.append(f"def reverse{k}(val, da, db, adj, c):")
            body = []
            _reverse_lines(plan, chunk, body, "    ")
            lines.extend(body or ["    pass"])
            lines.append("")
    if fused:
        lines.append(f"def fused{last}(val, da, db, adj, c):")
        _forward_lines(plan, plan.chunks[last], lines, "    ", False)
        lines.append(f"    adj[{out}] = 1.0")
        _reverse_lines(plan, plan.chunks[last], lines, "    ", evaluated=True)
        lines.append("    return -1")
        lines.append("")
    for name in ("replay", "value_and_grad"):
        grad = name == "value_and_grad"
        lines.append(f"def {name}(val, da, db, adj, c, inputs, params, x, p{', grad' if grad else ''}):")
        lines.append("    for k in range(inputs.shape[0]):")
        lines.append("        val[inputs[k]] = x[k]")
        lines.append("    for k in range(params.shape[0]):")
        lines.append("        val[params[k]] = p[k]")
        for k in range(len(plan.chunks)):
            call = "forward" if not grad else "fused" if fused and k == last else "fast"
            lines.append(f"    failed = {call}{k}(val, da, db, adj, c)")
            lines.append("    if failed >= 0:")
            lines.append("        return failed")
        if grad:
            # The forward zeroed every adjoint kept in the array; seed the output as
            # kernels.gradient does (fused: after its forward, before its reverse).
            if not fused:
                lines.append(f"    adj[{out}] = 1.0")
            for k in reversed(range(len(plan.chunks) - fused)):
                lines.append(f"    reverse{k}(val, da, db, adj, c)")
            lines.append("    for k in range(inputs.shape[0]):")
            lines.append(f"        grad[k] = adj[inputs[k]] if inputs[k] <= {out} else 0.0")
        lines.append("    return -1")
        lines.append("")
    # The call TapeFunction.value_and_grad makes, without Numba's type dispatch (see
    # ``direct``): work = the rows val, da, db, adj, const; no p without parameters (each
    # argument costs); f, or NaN when a guard failed or x is not a contiguous vector of the
    # inputs' length (the caller checked its type, dtype and ndim and takes the slow way on
    # NaN, which checks and converts everything).
    if len(params):
        lines.append("def entry(work, x, p, grad):")
        lines.append(f"    if x.shape[0] != {len(inputs)} or x.strides[0] != 8 or p.shape[0] != {len(params)}:")
    else:
        lines.append("def entry(work, x, grad):")
        lines.append("    p = x[:0]")
        lines.append(f"    if x.shape[0] != {len(inputs)} or x.strides[0] != 8:")
    lines.append("        return np.nan")
    lines.append("    val = work[0]")
    lines.append("    if value_and_grad(val, work[1], work[2], work[3], work[4], INPUTS, PARAMS, x, p, grad) >= 0:")
    lines.append("        return np.nan")
    lines.append(f"    return float(val[{out}])")
    lines.append("")
    # Batches (item 4, without lanes yet): one replay, or replay and sweep, per point in one
    # compiled call; P holds one row of parameters shared by all points or one per point.
    lines.append("def batch(work, X, P, want_grad, values, grads, failed):")
    lines.append("    val, da, db, adj, c = work[0], work[1], work[2], work[3], work[4]")
    lines.append("    for k in range(X.shape[0]):")
    lines.append("        p = P[0] if P.shape[0] == 1 else P[k]")
    lines.append("        if want_grad:")
    lines.append("            f = value_and_grad(val, da, db, adj, c, INPUTS, PARAMS, X[k], p, grads[k])")
    lines.append("        else:")
    lines.append("            f = replay(val, da, db, adj, c, INPUTS, PARAMS, X[k], p)")
    lines.append("        failed[k] = f")
    lines.append("        if f < 0:")
    lines.append("            for j in range(OUTPUTS.shape[0]):")
    lines.append("                values[k, j] = val[OUTPUTS[j]]")
    lines.append("")
    return "\n".join(lines)


def _index_array(idx):
    """Source of an int32 array equal to idx (a range when it is one: inputs always are)."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return f"np.arange({int(idx[0])}, {int(idx[0]) + idx.size}, dtype=np.int32)"
    return f"np.array({idx.tolist()}, dtype=np.int32)"


def _operand(plan, operand, index):
    kind = operand[0]
    if kind == "local":
        return f"v{operand[1]}"
    if kind == "val":
        return f"val[{_render(operand[1])}]"
    return f"c[{index}]"


def _evaluate(plan, node, lines, pad):
    _, slot, code, index, x, y = node
    i = _render(index)
    # Every name is assigned once: Numba's SSA pass is quadratic in the redefinitions of
    # one variable, which made compiling a few hundred entries take minutes.
    lines.append(f"{pad}t{slot} = f{code}({_operand(plan, x, i)}, {_operand(plan, y, i)})")
    lines.append(f"{pad}v{slot} = t{slot}[0]")
    return i


def _forward_lines(plan, nodes, lines, pad, full):
    for node in nodes:
        if node[0] == "source":
            # A source's adjoint accumulates in the array: start it from zero, as
            # kernels.gradient does (its value was written by the caller).
            lines.append(f"{pad}adj[{_render(node[1])}] = 0.0")
            continue
        if node[0] == "loop":
            _, loop, count, body = node
            lines.append(f"{pad}for k{loop} in range({count}):")
            _forward_lines(plan, body, lines, pad + "    ", full)
            continue
        slot, code = node[1], node[2]
        i = _evaluate(plan, node, lines, pad)
        # A slot read only in its own iteration (local_adjoint) needs no array at all.
        shared = not plan.local_adjoint[slot]
        if full or shared:
            lines.append(f"{pad}val[{i}] = v{slot}")
        if full:
            lines.append(f"{pad}da[{i}] = t{slot}[1]")
            lines.append(f"{pad}db[{i}] = t{slot}[2]")
        if shared:
            lines.append(f"{pad}adj[{i}] = 0.0")
        if code == ops.GUARD:
            lines.append(f"{pad}if v{slot} == 0.0:")
            lines.append(f"{pad}    return {i}")


def _computes_in_loops(nodes):
    """Whether a loop among nodes (at any depth) computes an entry (not only sources)."""
    stack = [node[3] for node in nodes if node[0] == "loop"]
    while stack:
        body = stack.pop()
        if any(node[0] == "entry" for node in body):
            return True
        stack.extend(node[3] for node in body if node[0] == "loop")
    return False


def _reverse_lines(plan, nodes, lines, pad, evaluated=False):
    # Same operations in the same order as kernels.backward: entries from last to first,
    # the first operand's contribution before the second's, zero products dropped
    # (_product): the gradient is bit-identical to the interpreter's. kernels.backward also
    # skips an entry whose adjoint is zero; here _product returns +0.0 for it instead, and
    # adding +0.0 changes no adjoint (a sum starting at +0.0 is never -0.0). Branch-free
    # code also keeps Numba's compile time linear: its SSA pass is quadratic in blocks.
    # evaluated: the forward ran in this function, its locals hold these nodes' partials.
    for node in nodes:
        if node[0] == "entry":
            if not evaluated:
                _evaluate(plan, node, lines, pad)  # this iteration's values and partials again
            if plan.local_adjoint[node[1]]:
                lines.append(f"{pad}g{node[1]} = 0.0")
    for node in reversed(nodes):
        if node[0] == "source":
            continue
        if node[0] == "loop":
            _, loop, count, body = node
            inner = []
            _reverse_lines(plan, body, inner, pad + "    ")
            if inner:
                lines.append(f"{pad}for k{loop} in range({count - 1}, -1, -1):")
                lines.extend(inner)
            continue
        _, slot, _, index, x, y = node
        if x[0] == "const" and y[0] == "const":
            continue
        i = _render(index)
        g = f"g{slot}" if plan.local_adjoint[slot] else f"adj[{i}]"
        lines.append(f"{pad}h{slot} = {g}")
        for operand, partial in ((x, 1), (y, 2)):
            if operand[0] == "const":
                continue
            if operand[0] == "local" and plan.local_adjoint[operand[1]]:
                target = f"g{operand[1]}"
            elif operand[0] == "val":
                target = f"adj[{_render(operand[1])}]"
            else:
                target = f"adj[{_render(plan.slots[operand[1]][0])}]"
            lines.append(f"{pad}{target} += _product(t{slot}[{partial}], h{slot})")


# --- build and cache ---------------------------------------------------------------------
#
# The generated source depends only on the structure (opcodes, operand indices, inputs,
# parameters, outputs): constants are read from the program's ``const`` column and source
# values from the work arrays, so every program of one structure shares one module. The
# source is written to CACHE_DIR/compiled/<key>.py, whose Numba cache then holds the machine
# code (Numba keys it on the file's path and stamp; _config keys it on ops/kernels too).

_VERSION = hashlib.sha256(Path(__file__).read_bytes() + _config._SOURCES.encode()).hexdigest()
_HEADER = "# jitad-compiled {key} {digest}\n"
_MEMORY = {}  # structure key -> Compiled, for this process
_MEMORY_LOCK = threading.Lock()


def structure_key(op, a, b, inputs, params, outputs):
    """A hash of everything the generated code depends on (no values)."""
    h = hashlib.sha256(_VERSION.encode())
    for arr in (op, a, b, inputs, params, outputs):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:40]


def cache_dir():
    """Where generated sources live (None: in memory only, JITAD_CACHE=0 or no writable dir)."""
    if not _config.CACHE:
        return None
    return Path(_config.CACHE_DIR) / "compiled"


def _formulas():
    # Compiled functions, not Numba-inlined ones: Numba's IR inlining at every call site
    # made compiling a 250-entry body take minutes; LLVM still inlines the calls.
    # The formulas as the interpreter compiles them (kernels._MATH: math as Numba sees it);
    # the getattr fallbacks cover the op table before formulas() existed.
    make = getattr(ops, "formulas", None)
    if make is None:
        return {op.code: _config.kernel(op.formula) for op in ops.OPS if op.formula is not None}
    math_module = getattr(kernels, "_MATH", None)
    if math_module is None:
        return make(wrap=_config.kernel)
    return make(math_module, wrap=_config.kernel)


_FORMULAS = None
# kernels._product, compiled as a function of its own (Numba's IR inlining adds blocks to
# every caller; LLVM inlines it as a select).
_PRODUCT = _config.kernel(getattr(kernels._product, "py_func", kernels._product))  # a plain function under NUMBA_DISABLE_JIT
_FORMULAS_LOCK = threading.Lock()


def _namespace():
    global _FORMULAS
    with _FORMULAS_LOCK:
        if _FORMULAS is None:
            _FORMULAS = {f"f{code}": f for code, f in _formulas().items()}
    return {**_FORMULAS, "_product": _PRODUCT}


def generate(op, a, b, outputs, inputs, params):
    """(source, summary) of the generated module for a program's structure."""
    rr = reroll(op, a, b)
    plan = _Plan(rr, op, a, b, outputs)
    source = _source(plan, outputs, inputs, params)
    return source, {**rr.summary(), "functions": source.count("\ndef ")}


def _read_valid(path, key):
    """The cached source at path when its header names this key and its digest matches."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    header, _, body = text.partition("\n")
    if header + "\n" != _HEADER.format(key=key, digest=hashlib.sha256(body.encode()).hexdigest()):
        return None
    return body


def _write_atomic(path, text):
    # Concurrent writers (threads, processes) each write a temporary file and rename it:
    # a reader sees a whole file, never a torn one; the contents are the same anyway.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Compiled:
    """The compiled replay and fused value-and-gradient of one program structure."""

    def __init__(self, key, module, summary, source_path):
        self.key = key
        self.summary = summary
        self.source_path = source_path
        self._replay = module.replay
        self._value_and_grad = module.value_and_grad
        # entry(work rows, x, [p,] grad) -> f, or NaN where a guard failed
        self.params = bool(summary["params"])
        self.entry = direct(module.entry, ENTRY_TYPES if self.params else ENTRY_TYPES[:2] + ENTRY_TYPES[3:])
        # batch(work rows, X (K, n), P (1 or K, p), want_grad, values (K, m), grads (K, n), failed (K,))
        self.batch = module.batch
        self.compile_s = None

    def replay(self, program, w, x, p):
        """Like kernels.replay into w's arrays; returns the first failed guard or -1."""
        return self._replay(w.val, w.da, w.db, w.adj, program.const, program.inputs, program.params, x, p)

    def value_and_grad(self, program, w, x, p, grad):
        """Like kernels.replay_value_and_grad for the program's first output."""
        return self._value_and_grad(w.val, w.da, w.db, w.adj, program.const, program.inputs, program.params, x, p, grad)


def _module(key, source, path):
    name = f"jitad_compiled_{key}"
    if path is not None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        module.__dict__.update(_namespace())
        spec.loader.exec_module(module)
    else:
        module = type(sys)(name)
        module.__dict__.update(_namespace())
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - our generated code
    functions = [k for k, v in list(module.__dict__.items()) if callable(v) and getattr(v, "__module__", None) == name]
    # Wrapped after execution: Numba reads the globals when it compiles, so the kernels
    # call each other compiled (and cached per file when path is set).
    for fname in functions:
        fn = module.__dict__[fname]
        if path is not None:
            module.__dict__[fname] = _config.kernel(fn)
        else:
            import numba

            module.__dict__[fname] = numba.njit(**_config._OPTIONS)(fn)
    return module


def compile_program(op, a, b, const, value, inputs, params, outputs):
    """The Compiled code for this structure: from memory, from the disk cache, or built now.
    The call compiles it (a warm-up replay on scratch arrays), so it is ready to run."""
    key = structure_key(op, a, b, inputs, params, outputs)
    with _MEMORY_LOCK:
        hit = _MEMORY.get(key)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    directory = cache_dir()
    path = None if directory is None else directory / f"{key}.py"
    source = _read_valid(path, key) if path is not None else None
    summary = {"disk": source is not None, "params": len(params)}
    if source is None:
        source, shape = generate(op, a, b, outputs, inputs, params)
        summary.update(shape)
        if path is not None:
            # A missing, torn or altered file is rewritten, never trusted.
            _write_atomic(path, _HEADER.format(key=key, digest=hashlib.sha256(source.encode()).hexdigest()) + source)
    try:
        compiled = _warm(key, _module(key, source, path), summary, path, const, value, inputs, params, outputs)
    except Exception:
        if path is None:
            raise
        # Numba's own cache files for this source may be damaged: compile without them.
        compiled = _warm(key, _module(key, source, None), summary, None, const, value, inputs, params, outputs)
    compiled.compile_s = time.perf_counter() - t0
    with _MEMORY_LOCK:
        return _MEMORY.setdefault(key, compiled)


def _warm(key, module, summary, path, const, value, inputs, params, outputs):
    compiled = Compiled(key, module, summary, path)
    n = value.shape[0]
    val = value.copy()
    da, db, adj = np.zeros(n), np.zeros(n), np.zeros(n)
    x = np.ascontiguousarray(val[inputs], dtype=np.float64)
    p = np.ascontiguousarray(val[params], dtype=np.float64)
    grad = np.empty(inputs.shape[0])
    module.value_and_grad(val, da, db, adj, const, inputs, params, x, p, grad)
    # The batch function, compiled here for the types TapeFunction._batched passes.
    work = np.zeros((5, n))
    work[0] = value
    work[4] = const
    values = np.empty((1, outputs.shape[0]))
    failed = np.empty(1, dtype=np.int64)
    module.batch(work, x[None, :].copy(), p[None, :].copy(), True, values, grad[None, :].copy(), failed)
    return compiled


# --- direct calls --------------------------------------------------------------------------
#
# Numba's dispatcher types every argument to pick the machine code (~0.1 us per argument);
# the compiled function of one signature can be called without it (~0.05 us per argument,
# the unboxing), which is most of a small tape's call. Its caller must pass exactly those
# types: an array of another dtype, dimension or layout would be read as the wrong memory.


def _array_types():
    try:
        from numba import types
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return types.float64[::1], types.float64[:, ::1], types.int32[::1]


_F1, _F2, _I1 = _array_types()
# entry(work, x, p, grad) (without p when there are no parameters) and
# kernels.packed_value_and_grad(ints, work, x, p, grad): every vector C-contiguous float64
# (ints int32), work a C-contiguous (5, n) float64 array
ENTRY_TYPES = (_F2, _F1, _F1, _F1)
PACKED_TYPES = (_I1, _F2, _F1, _F1, _F1)


def direct(dispatcher, types, sample=None):
    """The machine code of ``dispatcher`` for exactly these argument types, compiled (or
    loaded from the cache) now, as a function that skips Numba's type dispatch; the
    dispatcher itself where there is none (NUMBA_DISABLE_JIT=1). ``sample``: arguments of
    these types that the function refuses at once, called to compile it the usual way (a
    first compile on this machine then says so on stderr, as every kernel's does)."""
    overloads = getattr(dispatcher, "overloads", None)
    if overloads is None:
        return dispatcher
    # Looked up first: compile() holds Numba's compiler lock, which a background compile
    # of another tape may hold for minutes.
    known = overloads.get(tuple(types))
    if known is None and sample is not None:
        dispatcher(*sample)
        known = overloads.get(tuple(types))
    return dispatcher.compile(types) if known is None else known.entry_point


# --- the tier: interpreter first, compiled code when it is ready ----------------------------

AUTO_CALLS = 64  # compile="auto": calls of one program before compiling it in the background
AUTO_MIN_ENTRIES = 2_000  # ... and only tapes this long (the interpreter is near compiled below)


class Tier:
    """One TapeFunction's compiled code: ``get(program)`` returns a ``Compiled`` or None
    (run the interpreter). Compilation runs in a background thread; nothing waits for it."""

    def __init__(self, mode):
        if mode not in (False, True, "auto"):
            raise ValueError(f"compile must be False, True or 'auto', got {mode!r}")
        self.mode = mode
        self._ready = weakref.WeakKeyDictionary()  # program -> Compiled
        self._calls = weakref.WeakKeyDictionary()  # program -> calls seen (auto mode)
        self._threads = []
        self._lock = threading.Lock()
        self._hot = (None, None)  # (program, Compiled): the last lookup, checked first
        self._failed = weakref.WeakSet()  # programs whose compile raised: the interpreter runs them
        self.errors = []

    def __getstate__(self):  # a pickled TapeFunction compiles again where it lands
        return {"mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["mode"])

    def get(self, program):
        hot_program, hot = self._hot
        if hot_program is program:
            return hot
        if not self.mode:
            return None
        compiled = self._ready.get(program)
        if compiled is not None:
            self._hot = (program, compiled)
            return compiled
        self._request(program)
        return None

    def _request(self, program):
        with self._lock:
            seen = self._calls.get(program, 0)
            if seen < 0:
                return  # started already
            # compile=True starts at the second call: the first runs (and compiles or loads)
            # the interpreter's kernels before the background compile holds Numba's lock.
            threshold = 1 if self.mode is True else AUTO_CALLS
            if seen < threshold or (self.mode == "auto" and len(program) < AUTO_MIN_ENTRIES):
                self._calls[program] = seen + 1
                return
            self._calls[program] = -1
            thread = threading.Thread(target=self._build, args=(program,), name="jitad-compile", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _build(self, program):
        try:
            compiled = compile_program(
                program.op, program.a, program.b, program.const, program.value,
                program.inputs, program.params, program.outputs,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the interpreter keeps running; say why once
            self.errors.append(e)
            self._failed.add(program)
            import warnings

            warnings.warn(f"jitad: compiling the tape failed, the interpreter runs it: {e!r}", RuntimeWarning)
            return
        self._ready[program] = compiled

    def wait(self, timeout=None):
        """Wait for the compilations started so far; True when all finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def ready(self, program):
        """The Compiled code of ``program`` when it is ready, else None (starts nothing)."""
        return self._ready.get(program)

    def pending(self, program):
        """Whether ``get(program)`` may return compiled code later: a caller that keeps its
        answer must ask again while this holds (False: compiled, or never will be)."""
        if not self.mode or program in self._ready or program in self._failed:
            return False
        return not (self.mode == "auto" and len(program) < AUTO_MIN_ENTRIES)
