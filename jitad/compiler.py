"""The compiler tier: reroll a recorded program's repetition back into loops, plan the code
of its replay, its fused value-and-gradient and its batches (``codegen`` writes it as LLVM
IR and compiles it), cache the machine code by structure, and build it in the background.

Layers: this module reads a program's arrays (it never imports ``trace``); ``trace`` asks
``Tier.get`` for compiled code and falls back to the interpreter kernels until it exists.
"""

import atexit
import contextlib
import hashlib
import os
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np

from . import _config, codegen, kernels, ops

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
    """Find repeated blocks in the tape (op, a, b), level after level; exact and near linear.
    The first level, over entries, runs compiled (``_roll_entries``); the levels above it see
    few items."""
    n = op.shape[0]
    st = Structures()
    has_a, has_b = a >= 0, b >= 0
    # An entry's structure: (opcode, has a, has b); its refs packed to the left.
    keys, inverse = np.unique(op.astype(np.int64) * 4 + has_a * 2 + has_b, return_inverse=True)
    table = [st.intern((_ENTRY, k >> 2, bool(k & 2), bool(k & 1)), (k >> 1 & 1) + (k & 1), 1) for k in keys.tolist()]
    sids = np.asarray(table, dtype=np.int64)[inverse.ravel()]
    refs = np.zeros((n, 2), dtype=np.int64)
    refs[:, 0] = np.where(has_a, a, np.where(has_b, b, 0))
    refs[:, 1] = np.where(has_a & has_b, b, 0)
    rows = np.empty((n, 3), dtype=np.int64)
    found = _roll_entries(sids, refs, rows)
    items = _entry_items(rows[:found].tolist(), sids, refs, st)
    for _ in range(MAX_LEVELS - 1):
        if len(items) == n:
            break
        rolled = _roll_level(items, st)
        if len(rolled) == len(items):
            break
        items = rolled
    return Rerolled(st, items, n)


def _entry_items(rows, sids, refs, st):
    """Level one's items from ``_roll_entries``'s rows (start, repetitions, period): only
    the entries the rows name are read (a block's first two repetitions)."""
    nrefs = np.asarray(st.nrefs, dtype=np.int64)[sids]
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    parts = [table[table[:, 2] == 0, 0]]
    parts += [np.arange(t, t + 2 * period) for t, _, period in table[table[:, 2] > 0].tolist()]
    used = np.unique(np.concatenate(parts)).astype(np.int64)
    at = dict(zip(used.tolist(), zip(sids[used].tolist(), refs[used].tolist(), nrefs[used].tolist())))

    def refs_of(t):
        _, r, m = at[t]
        return tuple(r[:m])

    items = []
    for t, count, period in rows:
        if period == 0:
            items.append((at[t][0], t, refs_of(t)))
            continue
        body = tuple(r for j in range(t, t + period) for r in refs_of(j))
        follow = (r for j in range(t + period, t + 2 * period) for r in refs_of(j))
        strides = tuple(r1 - r0 for r0, r1 in zip(body, follow))
        body_sids = tuple(at[j][0] for j in range(t, t + period))
        sid = st.intern((_BLOCK, count, body_sids, strides), len(body), count * period)
        items.append((sid, t, body))
    return items


@_config.inline
def _entry_repetitions(sids, refs, t, period, most):
    # _repetitions over entries: refs (T, 2), unused slots 0 (they move by 0)
    T = sids.shape[0]
    if t + 2 * period > T:
        return 1
    for j in range(period):
        if sids[t + j] != sids[t + period + j]:
            return 1
    count = 2
    while t + (count + 1) * period <= T and (most < 0 or count < most):
        base = t + count * period
        for j in range(period):
            if sids[base + j] != sids[t + j]:
                return count
            for r in range(2):
                if refs[base + j, r] - refs[base - period + j, r] != refs[t + period + j, r] - refs[t + j, r]:
                    return count
        count += 1
    return count


@_config.inline
def _best_entry_block(sids, refs, nxt, t, enough):
    # _best_block over entries (enough < 0: no bound)
    best_count, best_period = 1, 0
    cand = nxt[t]
    for _ in range(CANDIDATES):
        if cand < 0 or cand - t > MAX_PERIOD:
            break
        period = cand - t
        most = -1 if enough < 0 else (enough + period - 1) // period
        count = _entry_repetitions(sids, refs, t, period, most)
        if count > 1 and count * period > best_count * best_period:
            best_count, best_period = count, period
        cand = nxt[cand]
    return best_count, best_period


@_config.kernel
def _roll_entries(sids, refs, rows):
    """``_roll_level`` on the tape's entries (sids (T,), refs (T, 2)): rows[k] = (start,
    repetitions, period) of each item it finds (period 0: a single entry); returns k."""
    T = sids.shape[0]
    nxt = np.full(T, -1, dtype=np.int64)
    last = np.full(sids.max() + 1 if T else 1, -1, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        nxt[t] = last[sids[t]]
        last[sids[t]] = t
    k = 0
    t = 0
    while t < T:
        count, period = _best_entry_block(sids, refs, nxt, t, -1)
        single = period == 0
        if not single and count * period <= LOOKAHEAD_BELOW:
            need = (3 * count * period) // 2 + LOOKAHEAD
            for d in range(1, LOOKAHEAD + 1):
                if t + d < T:
                    c, q = _best_entry_block(sids, refs, nxt, t + d, need)
                    if c * q >= need:
                        single = True
                        break
        if single:
            count, period = 1, 0
        rows[k, 0] = t
        rows[k, 1] = count
        rows[k, 2] = period
        t += count * max(period, 1)
        k += 1
    return k


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


# --- plan --------------------------------------------------------------------------------
#
# An index in the rerolled program is affine in the loop counters: (constant, ((loop, coef),
# ...)). The plan walks the items once, naming each computed entry's *slot* (its place in
# the generated code, one per repetition pattern) and resolving every operand to a local
# (computed earlier in the same iteration of the same loops, in the same function), the
# value array, or the entry's constant. The compiled replay still writes every value and
# partial to the work arrays, so the interpreter's sweeps (jacobian, hvp, hessian) run
# after it unchanged.

CHUNK = 256  # entries (each loop body counted once) per generated function


def _shift(expr, const=0, loop=None, coef=0):
    base, terms = expr
    terms = dict(terms)
    if loop is not None and coef:
        terms[loop] = terms.get(loop, 0) + coef
    return base + const, tuple(sorted((k, v) for k, v in terms.items() if v))


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


# --- build and cache ---------------------------------------------------------------------
#
# The generated code depends only on the structure (opcodes, operand indices, inputs,
# parameters, outputs, the exponents of x ** c): other constants are read from the
# program's ``const`` column and source values from the work arrays, so every program of
# one structure shares one module. Its object code is written to CACHE_DIR/compiled/
# <key>.o (the batches' to <key>-lanes.o), checked by a digest when read back.

_HERE = Path(__file__)
_VERSION = hashlib.sha256(
    _HERE.read_bytes() + _HERE.with_name("codegen.py").read_bytes() + _config._SOURCES.encode()
).hexdigest()
_MEMORY = {}  # structure key -> Compiled, for this process (the MEMORY_KEPT last built)
_MEMORY_LOCK = threading.Lock()
MEMORY_KEPT = 256
# Entries in the generated code (each loop body once) beyond which a program is not
# compiled: LLVM takes ~10 ms per entry, and a tape with little repetition (each entry its
# own code) would take minutes and gigabytes. The interpreter runs it.
MAX_STATIC = 2_000


class TooIrregular(Exception):
    """The program repeats too little to be worth compiling (see MAX_STATIC)."""


def structure_key(op, a, b, const, inputs, params, outputs):
    """A hash of everything the generated code depends on: no values, and of the constants
    only the exponents of ``x ** c`` (x ** 2 and x ** 3 are different operations: the code
    has the exponent as a literal, so that x ** 2 compiles to x * x)."""
    h = hashlib.sha256(_VERSION.encode())
    for arr in (op, a, b, inputs, params, outputs, const[op == ops.CODE["powc"]]):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:40]


def cache_dir():
    """Where compiled code lives (None: in memory only, JITAD_CACHE=0 or no writable dir)."""
    if not _config.CACHE:
        return None
    return Path(_config.CACHE_DIR) / "compiled"


def generate(op, a, b, const, outputs, inputs, params, second=False):
    """(IR text, opcodes it calls, summary) of a module for a program's structure: its
    first, or its second (see ``codegen.emit``)."""
    rr = reroll(op, a, b)
    static = rr.summary()["static"]
    if static > MAX_STATIC:
        raise TooIrregular(f"{static:,} entries in code after rerolling {len(op):,} (at most {MAX_STATIC:,} are compiled)")
    plan = _Plan(rr, op, a, b, outputs)
    text, codes = codegen.emit(plan, inputs, params, outputs, _exponents(plan, op, const), second)
    return text, codes, {**rr.summary(), "functions": text.count("\ndefine ")}


# Exponents that stay read from the constants at run time: with a literal exponent LLVM
# rewrites pow(x, 0.5) as sqrt(x), pow(x, -1) as 1 / x and pow(x, 2) as x * x, without
# fast-math, as these are correctly rounded; libm's pow is not always (glibc: < 0.52 ulp),
# and the interpreter calls it. powc's formula calls pow(x, c), pow(x, c - 1) and
# pow(x, c - 2) (c = 0, 1 and 2 return before the calls that would be rewritten).
_LIBM_EXPONENTS = frozenset({0.5, -1.0, 1.5, 3.0, 2.5, 4.0})


def _exponents(plan, op, const):
    """{slot: exponent} of the ``x ** c`` entries whose c is the same in every repetition
    (and not one of ``_LIBM_EXPONENTS``)."""
    out = {}
    powc = ops.CODE["powc"]
    for slot, ((base, terms), counts, _) in enumerate(plan.slots):
        if op[base] != powc or float(const[base]) in _LIBM_EXPONENTS:
            continue
        idx = np.array([base])
        for loop, coef in terms:
            idx = (idx[:, None] + coef * np.arange(counts[loop])[None, :]).ravel()
        bits = const[idx].view(np.int64)
        if np.all(bits == bits[0]):
            out[slot] = float(const[base])
    return out


class Compiled:
    """The compiled code of one program structure: its first module (the gradient of one
    point, and its values alone) at once, its second (the full replay and the batches'
    lanes) in the background when first asked for."""

    def __init__(self, key, machine, summary, cache_path, outputs):
        self.key = key
        self.summary = summary
        self.cache_path = cache_path
        self.machine = machine  # keeps the code in memory
        self.outputs = np.array(outputs, dtype=np.int64)
        self.params = bool(summary["params"])
        # entry(address, work rows, x, [p,] grad) -> f, or NaN where a guard failed
        self.address = machine.entry
        types = (_I8, *ENTRY_TYPES) if self.params else (_I8, *ENTRY_TYPES[:2], ENTRY_TYPES[3])
        self.entry = direct(codegen.call_entry_params if self.params else codegen.call_entry, types)
        self._local = threading.local()
        self._second = None  # the second module's Machine
        self._second_lock = threading.Lock()
        self._second_thread = None
        self.compile_s = None

    def replay(self, program, w, x, p):
        """Like kernels.replay into w's arrays: the first failed guard or -1; None while the
        code compiles (the caller runs the interpreter's replay)."""
        second = self.second(program)
        if second is None:
            return None
        x, p = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(p, dtype=np.float64)
        return codegen.call_replay(second.replay, w.val, w.da, w.db, w.adj, program.const, x, p)

    def value(self, program, w, x, p):
        """Like ``replay``, for the values alone: w.val holds the outputs' values (and the
        values read across chunks), not every entry's, and no partials."""
        x, p = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(p, dtype=np.float64)
        return codegen.call_replay(self.machine.value, w.val, w.da, w.db, w.adj, program.const, x, p)

    def value_and_grad(self, program, w, x, p, grad):
        """Like kernels.replay_value_and_grad for the program's first output."""
        x, p = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(p, dtype=np.float64)
        out = grad if grad.flags.c_contiguous else np.empty_like(grad)
        m = self.machine
        failed = codegen.call_value_and_grad(m.value_and_grad, w.val, w.da, w.db, w.adj, program.const, x, p, out)
        if out is not grad:
            grad[...] = out
        return failed

    def batch(self, program, rows, X, P, want_grad, values, grads, failed, workers=1):
        """A replay (or replay and sweep) per row of X (K, n): values (K, m), grads (K, n),
        failed (K,): the first failed guard of each point, or -1. P: (1 or K, parameters).
        rows: this thread's work rows of the program (values as recorded, constants).
        Blocks of LANES points run side by side once the second module is ready (the first
        batch of LANES points or more starts compiling it; ``workers`` threads share the
        blocks: the caller holds what launching Numba's threads needs), the other points one
        by one in the first module's code."""
        K = X.shape[0]
        second = self.second(program) if K >= codegen.LANES else self._second
        X, P = np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(P, dtype=np.float64)
        g = grads if grads.flags.c_contiguous else np.empty_like(grads)
        c = rows[4]
        full = 0 if second is None else K - K % codegen.LANES
        if full:
            work = self._lanes_rows(rows, workers)
            if workers > 1:
                codegen.call_lanes_parallel(second.lanes, workers, work, c, X, P, want_grad, values, g, failed)
            else:
                codegen.call_lanes(second.lanes, 0, 1, *work[0], c, X, P, want_grad, values, g, failed)
        if full < K:
            rest = slice(full, K)
            Pr = P if P.shape[0] == 1 else P[rest]
            gr = g[rest] if want_grad else g
            args = (self.outputs, rows, X[rest], Pr, want_grad, values[rest], gr, failed[rest])
            codegen.call_batch(self.machine.value, self.machine.value_and_grad, *args)
        if g is not grads:
            grads[...] = g

    def second(self, program, wait=False):
        """The second module's Machine, or None while it compiles (in a background thread
        that the first call starts; ``wait``: until it is ready)."""
        if self._second is not None:
            return self._second
        with self._second_lock:
            if self._second_thread is None and program is not None and not _EXITING.is_set():
                arrays = (program.op, program.a, program.b, program.const, program.outputs, program.inputs, program.params)
                args = (arrays, program.value)
                self._second_thread = threading.Thread(target=self._build_second, args=args, daemon=True)
                _BUILDS.add(self._second_thread)
                self._second_thread.start()
            thread = self._second_thread
        if wait and thread is not None:
            thread.join()
        return self._second

    def _build_second(self, program, value):
        try:
            machine, _ = _machine(self.key, "-second", program, codegen.SECOND, {})
            # Its kernels run once here (compiled, or loaded from Numba's cache), the lanes
            # on one thread and on two: the call that finds it ready waits for nothing.
            _, _, _, const, outputs, inputs, params = program
            L, n = codegen.LANES, value.shape[0]
            x, p = np.ascontiguousarray(value[inputs]), np.ascontiguousarray(value[params])
            work = np.empty((2, 4, n * L))
            work[:, 0] = np.repeat(value, L)
            codegen.call_replay(machine.replay, *work[0, :4, :n], const, x, p)
            X = np.repeat(x[None, :], L, axis=0)
            out = np.empty((L, outputs.shape[0])), np.empty((L, inputs.shape[0])), np.empty(L, dtype=np.int64)
            codegen.call_lanes(machine.lanes, 0, 1, *work[0], const, X, p[None, :], True, *out)
            codegen.call_lanes_parallel(machine.lanes, 2, work, const, X, p[None, :], True, *out)
            self._second = machine
        except _Cancelled:
            pass
        except Exception as e:  # noqa: BLE001 - the interpreter keeps running these; say why once
            import warnings

            warnings.warn(f"jitad: compiling the tape's replay and batches failed: {e!r}", RuntimeWarning)
        finally:
            _BUILDS.discard(threading.current_thread())

    def _forked(self):
        # In a forked child (see _after_fork_in_child): a second module that was compiling
        # is compiled again when next asked for.
        self._second_lock = threading.Lock()
        if self._second is None:
            self._second_thread = None

    def _lanes_rows(self, rows, workers):
        """This thread's (workers, 4, entries x LANES) values, partials and adjoints of
        LANES points for each of ``workers`` threads, for the program whose work rows are
        rows: its recorded values (constant leaves keep theirs) side by side."""
        local = self._local
        if getattr(local, "rows", None) is not rows or local.lanes.shape[0] < workers:
            local.lanes = np.empty((workers, 4, rows.shape[1] * codegen.LANES))
            local.lanes[:, 0] = np.repeat(rows[0], codegen.LANES)
            local.rows = rows
        return local.lanes


def compile_program(op, a, b, const, value, inputs, params, outputs):
    """The Compiled code for this structure: from memory, from the disk cache, or built now.
    The call loads it and runs it once (on scratch arrays), so it is ready to run."""
    if numba.config.DISABLE_JIT:
        raise RuntimeError("the compiled tier needs Numba's JIT (NUMBA_DISABLE_JIT is set)")
    key = structure_key(op, a, b, const, inputs, params, outputs)
    with _MEMORY_LOCK:
        hit = _MEMORY.get(key)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    summary = {"params": len(params)}
    program = (op, a, b, const, outputs, inputs, params)
    machine, path = _machine(key, "", program, codegen.FIRST, summary)
    compiled = Compiled(key, machine, summary, path, outputs)
    _warm(compiled, const, value, inputs, params, outputs)
    compiled.compile_s = time.perf_counter() - t0
    with _MEMORY_LOCK:
        compiled = _MEMORY.setdefault(key, compiled)
        while len(_MEMORY) > MEMORY_KEPT:  # the oldest goes (TapeFunctions keep theirs)
            del _MEMORY[next(iter(_MEMORY))]
        return compiled


def _machine(key, suffix, program, exported, summary):
    """(Machine, cache path) of one module of a structure: from the disk cache, or built
    (and written there). summary gets "disk" and, when built, the rerolled sizes."""
    directory = cache_dir()
    path = None if directory is None else directory / f"{key}{suffix}.o"
    body = None if path is None else codegen.read_checked(path, key)
    if body is not None:
        # A missing, torn or altered file is rebuilt, never trusted.
        head, _, obj = body.partition(b"\n")
        with contextlib.suppress(Exception):
            summary["disk"] = True
            return codegen.Machine(obj, head.decode().split(), exported), path
    summary["disk"] = False
    _check_exit()
    text, codes, shape = generate(*program, second=exported is codegen.SECOND)
    summary.update(shape)
    _check_exit()
    obj, symbols = codegen.build(text, codes, None if directory is None else directory / "formulas", exported)
    if path is not None:
        codegen.write_checked(path, key, " ".join(symbols).encode() + b"\n" + obj)
    return codegen.Machine(obj, symbols, exported), path


def _check_exit():
    if _EXITING.is_set():
        raise _Cancelled


def _warm(compiled, const, value, inputs, params, outputs):
    # Every call kernel run once here (compiled, or loaded from Numba's cache): the caller's
    # first call then waits for nothing.
    n = value.shape[0]
    work = np.zeros((5, n))
    work[0] = value
    work[4] = const
    x = np.ascontiguousarray(value[inputs])
    p = np.ascontiguousarray(value[params])
    grad = np.empty(inputs.shape[0])
    if compiled.params:
        compiled.entry(compiled.address, work, x, p, grad)
    else:
        compiled.entry(compiled.address, work, x, grad)
    values, grads = np.empty((1, outputs.shape[0])), np.empty((1, grad.shape[0]))
    compiled.batch(None, work, x[None, :], p[None, :], True, values, grads, np.empty(1, dtype=np.int64))
    rows = SimpleNamespace(val=work[0], da=work[1], db=work[2], adj=work[3])
    compiled.value_and_grad(SimpleNamespace(const=const), rows, x, p, grad)


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
    return types.float64[::1], types.float64[:, ::1], types.int32[::1], types.int64


_F1, _F2, _I1, _I8 = _array_types()
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
_BUILDS = set()  # compile threads running now
_EXITING = threading.Event()


class _Cancelled(Exception):
    """The process is exiting: a background compile stops at its next stage."""


def _stop_builds():
    # At exit, before the interpreter tears down: a compile thread still inside LLVM when
    # LLVM's own globals are destroyed would crash the process. Each stops at its next stage.
    _EXITING.set()
    for thread in list(_BUILDS):
        thread.join()


atexit.register(_stop_builds)

# A compile in a background thread holds these locks for up to seconds (Numba's for every
# LLVM stage). A child forked meanwhile (multiprocessing's default on Linux) would inherit
# them held by a thread it does not have, and hang at its first compile: instead the fork
# waits for the stage to end, and in the child the builds that were in flight start again
# at the next call. Acquired in the order the compile threads take them.
_TIERS = weakref.WeakSet()
_FORK_LOCKS = (codegen._FORMULA_LOCK, codegen.global_compiler_lock, _MEMORY_LOCK)


def _before_fork():
    for lock in _FORK_LOCKS:
        lock.acquire()


def _after_fork():
    for lock in reversed(_FORK_LOCKS):
        lock.release()


def _after_fork_in_child():
    _after_fork()
    _BUILDS.clear()
    for tier in list(_TIERS):
        tier._forked()
    with _MEMORY_LOCK:
        known = list(_MEMORY.values())
    for compiled in known:
        compiled._forked()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork_in_child)


class Tier:
    """One TapeFunction's compiled code: ``get(program)`` returns a ``Compiled`` or None
    (run the interpreter). Compilation runs in a background thread; nothing waits for it."""

    def __init__(self, mode):
        if mode not in (False, True, "auto"):
            raise ValueError(f"compile must be False, True or 'auto', got {mode!r}")
        self.mode = mode
        # "auto" is the default: where nothing can be compiled (NUMBA_DISABLE_JIT=1) it
        # stays on the interpreter quietly; compile=True asked for it, and warns.
        self._auto_off = mode == "auto" and bool(numba.config.DISABLE_JIT)
        self._ready = weakref.WeakKeyDictionary()  # program -> Compiled
        self._calls = weakref.WeakKeyDictionary()  # program -> calls seen (auto mode)
        self._threads = []
        self._lock = threading.Lock()
        self._hot = (None, None)  # (program, Compiled): the last lookup, checked first
        self._failed = weakref.WeakSet()  # programs whose compile raised: the interpreter runs them
        self.errors = []
        _TIERS.add(self)

    def _forked(self):
        # In a forked child: the compile threads did not come along; their programs are
        # compiled again from the next call.
        self._lock = threading.Lock()
        self._threads = []
        threshold = 1 if self.mode is True else AUTO_CALLS
        for program, seen in list(self._calls.items()):
            if seen < 0 and program not in self._ready and program not in self._failed:
                self._calls[program] = threshold
        for compiled in list(self._ready.values()):
            compiled._forked()

    def __getstate__(self):  # a pickled TapeFunction compiles again where it lands
        return {"mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["mode"])

    def get(self, program):
        hot_program, hot = self._hot
        if hot_program is program:
            return hot
        if not self.mode or self._auto_off:
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
            if seen < threshold:
                self._calls[program] = seen + 1
                return
            self._calls[program] = -1
            if _EXITING.is_set():
                return
            thread = threading.Thread(target=self._build, args=(program,), name="jitad-compile", daemon=True)
            self._threads.append(thread)
            _BUILDS.add(thread)
        thread.start()

    def _build(self, program):
        try:
            self._compile(program)
        finally:
            _BUILDS.discard(threading.current_thread())

    def now(self, program):
        """Compile ``program`` here, both modules, waiting for them (a background compile
        of it that is running is waited for); its Compiled code, or None where it stays on
        the interpreter (the warning says why)."""
        with self._lock:
            self._calls[program] = -1  # no background start from now on
        self.wait()
        if program not in self._ready and program not in self._failed:
            self._compile(program, asked=True)
        compiled = self._ready.get(program)
        if compiled is not None:
            compiled.second(program, wait=True)
        return compiled

    def _compile(self, program, asked=False):
        try:
            compiled = compile_program(
                program.op, program.a, program.b, program.const, program.value,
                program.inputs, program.params, program.outputs,
            )  # fmt: skip
        except _Cancelled:
            return
        except Exception as e:  # noqa: BLE001 - the interpreter keeps running; say why once
            self.errors.append(e)
            self._failed.add(program)
            if isinstance(e, TooIrregular) and self.mode == "auto" and not asked:
                return  # the default's own choice, not a failure
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
        return not self._auto_off
