"""The compiler tier's back end: a planned program as LLVM IR, machine code by llvmlite, and
the Numba kernels that call it.

``compiler`` rerolls a program and plans its code (chunks of loops and entries); this module
writes the plan as LLVM IR text and compiles it with llvmlite (a Numba dependency), so no
Numba front end runs per program: Numba took ~20 ms per generated line, LLVM alone takes
milliseconds per hundred entries. The op formulas stay ops.py's, compiled by Numba: each
once per machine, its optimized IR kept on disk, linked into every module that uses it and
inlined there.

The code runs the interpreter's operations in the interpreter's order (the same formulas,
products that skip zeros, adjoints summed entry by entry), without fast-math: its results
are the interpreter's bits. Exported functions take every argument as a 64-bit integer
(array addresses, lengths), which the Numba kernels at the end of this file pass.
"""

import contextlib
import functools
import hashlib
import math
import os
import tempfile
import threading

import llvmlite
import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.compiler_lock import global_compiler_lock
from numba.core.extending import intrinsic

from . import _config, kernels, ops

# --- checked files -------------------------------------------------------------------------
#
# Cached IR and machine code are loaded and run: a file is used only when its header names
# what it was built for and the digest of its body matches; anything else is rebuilt.


def write_checked(path, key, body):
    """Write ``body`` (bytes) under a header naming ``key``; atomically: concurrent writers
    (threads, processes) each write a temporary file and rename it, so a reader sees a
    whole file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(f"jitad {key} {hashlib.sha256(body).hexdigest()}\n".encode() + body)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_checked(path, key):
    """The body written by ``write_checked(path, key, body)``, or None (missing, torn, altered)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, _, body = data.partition(b"\n")
    return body if head == f"jitad {key} {hashlib.sha256(body).hexdigest()}".encode() else None


# --- the op formulas' IR -------------------------------------------------------------------

_FORMULA_SIG = (types.float64, types.float64)
_FORMULA_TYPE = "i32 (ptr, ptr, double, double)"  # Numba's ABI: status(retptr, excinfo, x, y)
_FORMULA_IR = {}  # opcode -> (IR text, function name), for this process
_FORMULA_LOCK = threading.Lock()
_FORMULAS = {}


def _host():
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def _formula_key():
    """What a formula's optimized IR depends on: the op table, Numba, LLVM and the CPU."""
    parts = (_config._SOURCES, numba.__version__, llvmlite.__version__, llvm.get_process_triple(), *_host())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _numba_formula(code):
    # Dispatchers of their own, uncached: Numba keeps the IR of what it compiled in this
    # process only (a cache load has machine code).
    if not _FORMULAS:
        _FORMULAS.update(ops.formulas(kernels._MATH, wrap=numba.njit(cache=False, **_config._OPTIONS)))
    dispatcher = _FORMULAS[code]
    dispatcher.compile(_FORMULA_SIG)
    overload = dispatcher.overloads[_FORMULA_SIG]
    return overload.library.get_llvm_str(), overload.fndesc.mangled_name


def formula_ir(code, directory):
    """(IR text, function name) of an op's formula: from memory, from directory, or Numba."""
    with _FORMULA_LOCK:
        hit = _FORMULA_IR.get(code)
        if hit is None:
            key = _formula_key()
            path = None if directory is None else directory / f"{key}-{code}.ll"
            body = None if path is None else read_checked(path, key)
            if body is not None:
                name, _, text = body.decode().partition("\n")
                hit = (text, name)
            else:
                hit = _numba_formula(code)
                if path is not None:
                    write_checked(path, key, f"{hit[1]}\n{hit[0]}".encode())
            _FORMULA_IR[code] = hit
    return hit


# --- IR of a plan --------------------------------------------------------------------------
#
# A plan (compiler._Plan) is chunks of nodes: ("loop", id, count, nodes), ("source", index)
# or ("entry", slot, opcode, index, x, y), x and y one of ("local", slot) (a value of this
# iteration, in a register), ("val", index) (read from the values array) or ("const",) (the
# entry's constant). Indices are affine in the loop counters: (base, ((loop, coef), ...)).

_ROWS = ("val", "da", "db", "adj", "c")
_ARGS = ", ".join(f"ptr noalias %{r}" for r in _ROWS)
_PASS = ", ".join(f"ptr %{r}" for r in _ROWS)
_NAN = "0x7FF8000000000000"


class _Function:
    """One function's IR under construction: SSA names, blocks, loop counters, and the
    current SSA value of every adjoint kept in a register."""

    def __init__(self, head):
        self.head = head
        self.allocas = ["  %exc = alloca ptr"]
        self.lines = []
        self.block = "%entry"
        self.count = 0
        self.k = {}  # loop id -> its counter
        self.g = {}  # slot -> its adjoint (an SSA name or a literal)
        self.t = {}  # slot -> (value, d/dx, d/dy) of its formula call
        self.here = set()  # lanes code: the slots evaluated in the current lanes loop
        self.memo = {}  # index expressions and addresses computed in a block that dominates

    def new(self, stem="r"):
        self.count += 1
        return f"%{stem}{self.count}"

    def op(self, text):
        name = self.new()
        self.lines.append(f"  {name} = {text}")
        return name

    def emit(self, text):
        self.lines.append(f"  {text}")

    def label(self, name):
        self.lines.append(f"{name[1:]}:")
        self.block = name

    def index(self, expr):
        # Each index and address is computed once per loop level: less IR for LLVM to
        # simplify (its compile time grows with the instructions it is given).
        hit = self.memo.get(expr)
        if hit is None:
            hit = self.memo[expr] = self._index(expr)
        return hit

    def _index(self, expr):
        base, terms = expr
        acc = None
        for loop, coef in terms:
            term = self.k[loop] if coef == 1 else self.op(f"mul i64 {self.k[loop]}, {coef}")
            acc = term if acc is None else self.op(f"add i64 {acc}, {term}")
        if acc is None:
            return str(base)
        return self.op(f"add i64 {acc}, {base}") if base else acc

    def address(self, row, i):
        hit = self.memo.get((row, i))
        if hit is None:
            hit = self.memo[row, i] = self.op(f"getelementptr inbounds double, ptr %{row}, i64 {i}")
        return hit

    def lane(self, i):
        """The index of entry i's value in this lane: rows of LANES values per entry."""
        hit = self.memo.get(("lane", i))
        if hit is None:
            hit = self.memo["lane", i] = self.op(f"add i64 {self.op(f'mul i64 {i}, {LANES}')}, {self.k[LANE]}")
        return hit

    def load(self, row, i):
        return self.op(f"load double, ptr {self.address(row, i)}")

    def store(self, row, i, value):
        self.emit(f"store double {value}, ptr {self.address(row, i)}")

    def add_to(self, row, i, value):
        self.store(row, i, self.op(f"fadd double {self.load(row, i)}, {value}"))

    def call(self, name, x, y):
        ret = self.new("ret")
        self.allocas.append(f"  {ret} = alloca [6 x double], align 8")
        self.emit(f'call i32 @"{name}"(ptr {ret}, ptr %exc, double {x}, double {y})')
        parts = [ret] + [self.op(f"getelementptr inbounds i8, ptr {ret}, i64 {8 * j}") for j in (1, 2)]
        return tuple(self.op(f"load double, ptr {p}") for p in parts)

    def loop(self, loop, count, down, carried, body):
        """``for k in range(count)`` (``down``: from count - 1 to 0) around body(); the
        adjoints of ``carried`` slots flow from one iteration to the next."""
        pre, head, inside, done = self.block, self.new("head"), self.new("body"), self.new("done")
        self.emit(f"br label {head}")
        self.label(head)
        k = self.k[loop] = self.new("k")
        at = len(self.lines)
        self.lines.append(None)  # the counter's phi, written once the latch is known
        before = {slot: self.g[slot] for slot in carried}
        phis = {slot: self.new("g") for slot in carried}
        self.lines.extend([None] * len(carried))
        self.g.update(phis)
        test = f"icmp sge i64 {k}, 0" if down else f"icmp slt i64 {k}, {count}"
        self.emit(f"br i1 {self.op(test)}, label {inside}, label {done}")
        self.label(inside)
        outside = dict(self.memo)  # what the body computes does not dominate the exit
        body()
        step = self.op(f"add i64 {k}, {-1 if down else 1}")
        latch = self.block
        self.emit(f"br label {head}")
        self.lines[at] = f"  {k} = phi i64 [{count - 1 if down else 0}, {pre}], [{step}, {latch}]"
        for j, slot in enumerate(carried):
            self.lines[at + 1 + j] = f"  {phis[slot]} = phi double [{before[slot]}, {pre}], [{self.g[slot]}, {latch}]"
        self.g.update(phis)
        self.memo = outside
        del self.k[loop]
        self.label(done)

    def text(self):
        return "\n".join([self.head, "entry:", *self.allocas, *self.lines, "}", ""])


# math functions that compile to a libm call (the rest are an instruction or a few)
_CHEAP_MATH = {"sqrt", "fabs", "copysign", "isnan", "isinf", "isfinite", "floor", "ceil", "trunc", "fmod"}


@functools.cache
def _libm_ops():
    """Opcodes whose formula calls libm (exp, tanh, pow, ...): read off ops.py's formulas."""
    libm = {n for n in dir(math) if callable(getattr(math, n)) and not n.startswith("_")} - _CHEAP_MATH
    return {op.code for op in ops.OPS if op.formula is not None and libm & set(op.formula.__code__.co_names)}


@functools.cache
def _constant_partials():
    """{opcode: (d/dx, d/dy)}, each the op's partial where it is the same nonzero finite
    number at every probe point (None otherwise): read off ops.py's formulas."""
    probes = [(0.3, 0.7), (-1.7, 2.5), (4.0, -0.25), (-0.5, -3.0), (1e3, 1e-3), (2.0, 2.0), (0.0, 1.0)]
    constant = {}
    for code, formula in ops.formulas().items():
        try:
            seen = [formula(x, y)[1:3] for x, y in probes]
        except (ArithmeticError, ValueError):
            seen = [(0.0, 0.0)]
        constant[code] = tuple(
            d[0] if all(e == d[0] for e in d) and d[0] != 0.0 and abs(d[0]) != math.inf else None for d in zip(*seen)
        )
    return constant


def _literal(value):
    """A double as an LLVM IR constant, exactly (its bits in hex)."""
    return f"0x{np.float64(value).view(np.uint64):016X}"


def _has_entries(nodes):
    """Whether nodes (at any depth) compute an entry (not only sources)."""
    stack = [nodes]
    while stack:
        body = stack.pop()
        if any(node[0] == "entry" for node in body):
            return True
        stack.extend(node[3] for node in body if node[0] == "loop")
    return False


def _adjoint_targets(nodes, local):
    """Slots whose register adjoints the reverse sweep of nodes (at any depth) adds to."""
    out, stack = set(), [nodes]
    while stack:
        for node in stack.pop():
            if node[0] == "loop":
                stack.append(node[3])
            elif node[0] == "entry":
                out.update(x[1] for x in node[4:6] if x[0] == "local" and local[x[1]])
    return out


class _Writer:
    """The IR of one plan: chunk functions, then the exported entry points."""

    def __init__(self, plan, names, exponents):
        self.plan = plan
        self.names = names  # opcode -> formula function name
        self.exponents = exponents
        self.local = plan.local_adjoint  # slots whose value and adjoint stay in registers

    @staticmethod
    def at(fn, i):
        """Where entry i's value, partials and adjoint are in the rows."""
        return i

    def kept(self, node):
        """Whether the forward keeps this entry's value and partials for the reverse, which
        then reads them instead of evaluating the formula again: ops that call libm (exp,
        tanh, pow, ...), whose second evaluation costs more than the memory (the same
        formula on the same operands: the same bits either way)."""
        slot, code = node[1], node[2]
        return code in _libm_ops() and self.exponents.get(slot) not in (0.0, 1.0, 2.0)

    def recall(self, fn, node, at):
        """The kept (value, d/dx, d/dy) of an entry, from index ``at`` of the rows."""
        fn.t[node[1]] = tuple(fn.load(row, at) for row in ("val", "da", "db"))
        fn.here.add(node[1])

    def operand(self, fn, operand, i):
        if operand[0] == "local":
            return fn.t[operand[1]][0]
        if operand[0] == "val":
            return fn.load("val", fn.index(operand[1]))
        return fn.load("c", i)

    def evaluate(self, fn, node):
        _, slot, code, index, x, y = node
        i = fn.index(index)
        y = _literal(self.exponents[slot]) if slot in self.exponents else self.operand(fn, y, i)
        fn.t[slot] = fn.call(self.names[code], self.operand(fn, x, i), y)
        fn.here.add(slot)
        return i

    def forward(self, fn, nodes, full):
        """Values (and with ``full`` partials) of nodes; adjoints kept in arrays start at 0;
        a failed guard returns its index."""
        for node in nodes:
            if node[0] == "source":
                fn.store("adj", fn.index(node[1]), "0.0")
            elif node[0] == "loop":
                fn.loop(node[1], node[2], False, (), lambda body=node[3]: self.forward(fn, body, full))
            else:
                i = self.evaluate(fn, node)
                self.store(fn, node, i, full)
                if node[2] == ops.GUARD:
                    failed, ok = fn.new("failed"), fn.new("ok")
                    fn.emit(f"br i1 {fn.op(f'fcmp oeq double {fn.t[node[1]][0]}, 0.0')}, label {failed}, label {ok}")
                    fn.label(failed)
                    fn.emit(f"ret i64 {i}")
                    fn.label(ok)

    def store(self, fn, node, i, full=False):
        """After an entry's evaluation: its value where another iteration, function or the
        reverse reads it, its partials where they are kept (all with ``full``), and a zero
        adjoint where the adjoint is in memory."""
        slot = node[1]
        v, dx, dy = fn.t[slot]
        at = self.at(fn, i)
        kept = full or self.kept(node)
        if kept or not self.local[slot]:
            fn.store("val", at, v)
        if kept:
            fn.store("da", at, dx)
            fn.store("db", at, dy)
        if not self.local[slot]:
            fn.store("adj", at, "0.0")

    def reverse(self, fn, nodes, evaluated=False):
        """kernels.backward over nodes: entries last to first, the first operand's product
        before the second's, zero products dropped. kernels.backward also skips an entry
        whose adjoint is zero; the product is +0.0 for it here, and adding +0.0 changes no
        adjoint (a sum starting at +0.0 is never -0.0). ``evaluated``: fn's forward already
        holds these nodes' partials (a fused last chunk)."""
        for node in nodes:
            if node[0] == "entry":
                self.prepare(fn, node, evaluated)
        for node in reversed(nodes):
            if node[0] == "loop":
                if _has_entries(node[3]):
                    carried = sorted(s for s in _adjoint_targets(node[3], self.local) if s in fn.g)
                    fn.loop(node[1], node[2], True, carried, lambda body=node[3]: self.reverse(fn, body))
            elif node[0] == "entry":
                self.sweep(fn, node)

    def prepare(self, fn, node, evaluated=False):
        """An entry's value and partials for the reverse (evaluated again, or kept by the
        forward; ``evaluated``: fn's forward holds them), its register adjoint at 0."""
        if not evaluated:
            if self.kept(node):
                self.recall(fn, node, self.at(fn, fn.index(node[3])))
            else:
                self.evaluate(fn, node)  # this iteration's values and partials again
        if self.local[node[1]]:
            fn.g[node[1]] = "0.0"

    def sweep(self, fn, node):
        """An entry's reverse step: its adjoint times each partial into its operands'."""
        _, slot, code, index, x, y = node
        if x[0] == "const" and y[0] == "const":
            return
        h = fn.g[slot] if self.local[slot] else fn.load("adj", self.at(fn, fn.index(index)))
        for which, operand in enumerate((x, y)):
            if operand[0] == "const":
                continue
            product = self.product(fn, code, which, fn.t[slot][1 + which], h)
            if operand[0] == "local" and self.local[operand[1]]:
                self.add(fn, operand[1], product)
            else:
                where = operand[1] if operand[0] == "val" else self.plan.slots[operand[1]][0]
                fn.add_to("adj", self.at(fn, fn.index(where)), product)

    @staticmethod
    def product(fn, code, which, partial, weight):
        """kernels._product(partial, weight) of an entry's operand ``which`` (0 or 1): a zero
        on either side contributes nothing, even against an infinite or NaN other side
        (0 * inf must not turn a finite derivative into NaN). Where the op's partial is a
        nonzero finite constant (x + y, x - y, -x) it is that constant times the weight:
        the checks only turn a zero product's sign to +0.0, and no adjoint the result can
        reach differs for it (see ``add``)."""
        constant = _constant_partials().get(code, (None, None))[which]
        if constant is not None:
            return fn.op(f"fmul double {_literal(constant)}, {weight}")
        both = fn.op(
            f"and i1 {fn.op(f'fcmp une double {weight}, 0.0')}, {fn.op(f'fcmp une double {partial}, 0.0')}"
        )
        return fn.op(f"select i1 {both}, double {fn.op(f'fmul double {partial}, {weight}')}, double 0.0")

    @staticmethod
    def add(fn, slot, contribution):
        """Add a contribution to a slot's adjoint kept in a register. Its first replaces the
        0.0 it starts from: they differ only in a zero's sign, and a register adjoint is
        read only as a product's weight, where +0.0 and -0.0 give products that change no
        sum they are added to (sums start at +0.0 and never become -0.0)."""
        g = fn.g[slot]
        fn.g[slot] = contribution if g == "0.0" else fn.op(f"fadd double {g}, {contribution}")


LANES = 8  # points per block of a batch: a value per point side by side, so that LLVM can vectorize
LANE = "lane"  # the lanes loop's key among a function's loop counters


def _segments(nodes):
    """nodes as ("loop", node) and ("run", [nodes]): the runs of entries and sources between loops."""
    parts, run = [], []
    for node in nodes:
        if node[0] == "loop":
            if run:
                parts.append(("run", run))
                run = []
            parts.append(("loop", node))
        else:
            run.append(node)
    if run:
        parts.append(("run", run))
    return parts


def _lane_local(plan):
    """Slots whose value and adjoint stay in registers in the lanes code: local adjoints
    (every use a local operand of the same iteration) whose uses are all in the run of
    entries that defines them (a loop between ends the lanes loop that holds them)."""
    defined, used = {}, {}
    stack = list(plan.chunks)
    run = 0
    while stack:
        for kind, part in _segments(stack.pop()):
            run += 1
            if kind == "loop":
                stack.append(part[3])
                continue
            for node in part:
                if node[0] == "entry":
                    defined[node[1]] = run
                    for x in node[4:6]:
                        if x[0] == "local":
                            used.setdefault(x[1], set()).add(run)
    return [
        bool(local) and used.get(slot, set()) <= {defined.get(slot)} for slot, local in enumerate(plan.local_adjoint)
    ]


class _LanesWriter(_Writer):
    """The same sweeps for LANES points at once: each run of entries becomes a loop over the
    lanes (innermost, so that LLVM vectorizes it), values and adjoints in memory as rows of
    LANES. Each lane performs the scalar code's operations in its order: the same bits.
    A failed guard does not stop the sweep: failed[lane] keeps the first one."""

    def __init__(self, plan, names, exponents):
        super().__init__(plan, names, exponents)
        self.local = _lane_local(plan)

    def operand(self, fn, operand, i):
        if operand[0] == "local" and operand[1] in fn.here:
            return fn.t[operand[1]][0]
        if operand[0] == "const":
            return fn.load("c", i)
        at = operand[1] if operand[0] == "val" else self.plan.slots[operand[1]][0]
        return fn.load("val", self.at(fn, fn.index(at)))

    @staticmethod
    def at(fn, i):
        return fn.lane(i)

    def forward(self, fn, nodes, full=False):
        for kind, part in _segments(nodes):
            if kind == "loop":
                fn.loop(part[1], part[2], False, (), lambda body=part[3]: self.forward(fn, body))
            else:
                fn.loop(LANE, LANES, False, (), lambda run=part: self._forward_run(fn, run))

    def _forward_run(self, fn, run):
        fn.here = set()
        for node in run:
            if node[0] == "source":
                fn.store("adj", self.at(fn, fn.index(node[1])), "0.0")
                continue
            i = self.evaluate(fn, node)
            self.store(fn, node, i)
            if node[2] == ops.GUARD:
                where = fn.op(f"getelementptr inbounds i64, ptr %failed, i64 {fn.k[LANE]}")
                first = fn.op(f"load i64, ptr {where}")
                zero = fn.op(f"fcmp oeq double {fn.t[node[1]][0]}, 0.0")
                now = fn.op(f"and i1 {zero}, {fn.op(f'icmp slt i64 {first}, 0')}")
                fn.emit(f"store i64 {fn.op(f'select i1 {now}, i64 {i}, i64 {first}')}, ptr {where}")

    def reverse(self, fn, nodes, evaluated=False):
        for kind, part in reversed(_segments(nodes)):
            if kind == "loop":
                if _has_entries(part[3]):
                    fn.loop(part[1], part[2], True, (), lambda body=part[3]: self.reverse(fn, body))
            elif _has_entries(part):
                fn.loop(LANE, LANES, False, (), lambda run=part: self._reverse_run(fn, run))

    def _reverse_run(self, fn, run):
        fn.here = set()
        for node in run:
            if node[0] == "entry":
                self.prepare(fn, node)
        for node in reversed(run):
            if node[0] == "entry":
                self.sweep(fn, node)


def _lanes_functions(w, inputs, params, outputs):
    """IR of ``jitad_lanes``: LANES points' values (and gradients) in one call."""
    plan = w.plan
    args = "ptr noalias %val, ptr noalias %da, ptr noalias %db, ptr noalias %adj, ptr noalias %c, ptr noalias %failed"
    passed = "ptr %val, ptr %da, ptr %db, ptr %adj, ptr %c, ptr %failed"
    parts = []
    for k, chunk in enumerate(plan.chunks):
        fn = _Function(f"define internal void @lanes_forward{k}({args}) {{")
        w.forward(fn, chunk)
        fn.emit("ret void")
        parts.append(fn.text())
        fn = _Function(f"define internal void @lanes_reverse{k}({args}) {{")
        w.reverse(fn, chunk)
        fn.emit("ret void")
        parts.append(fn.text())
    # x: LANES rows of the inputs; p: rows of the parameters, pstep apart (0: shared);
    # grad: LANES rows of the gradient; values: LANES rows of the outputs; failed: LANES.
    names = ["val", "da", "db", "adj", "c", "x", "p", "grad", "values", "failed"]
    fn = _Function(
        f"define void @jitad_lanes({', '.join(f'i64 %i{a}' for a in names)}, i64 %pstep, i64 %want) {{"
    )
    for a in names:
        fn.emit(f"%{a} = inttoptr i64 %i{a} to ptr")
    out, nin, npar, m = int(outputs[0]), len(inputs), len(params), len(outputs)

    def per_lane(body):
        fn.loop(LANE, LANES, False, (), body)

    def per_item(table, count, body):
        # for j in range(count): body(j, table[j]) with an inner loop over the lanes
        _for_table(fn, table, count, lambda j, i: per_lane(lambda: body(j, i)))

    def row(j, step):
        return fn.op(f"add i64 {fn.op(f'mul i64 {fn.k[LANE]}, {step}')}, {j}")

    per_item("@inputs", nin, lambda j, i: fn.store("val", fn.lane(i), fn.load("x", row(j, nin))))
    per_item("@params", npar, lambda j, i: fn.store("val", fn.lane(i), fn.load("p", row(j, "%pstep"))))
    per_lane(lambda: fn.emit(f"store i64 -1, ptr {fn.op(f'getelementptr inbounds i64, ptr %failed, i64 {fn.k[LANE]}')}"))
    for k in range(len(plan.chunks)):
        fn.emit(f"call void @lanes_forward{k}({passed})")
    per_item("@outputs", m, lambda j, i: fn.store("values", row(j, m), fn.load("val", fn.lane(i))))
    grad, done = fn.new("grad"), fn.new("done")
    fn.emit(f"br i1 {fn.op('icmp ne i64 %want, 0')}, label {grad}, label {done}")
    fn.label(grad)
    per_lane(lambda: fn.store("adj", fn.lane(out), "1.0"))
    for k in reversed(range(len(plan.chunks))):
        fn.emit(f"call void @lanes_reverse{k}({passed})")

    def gradient(j, i):
        # an input the output does not depend on (recorded after it) gets 0
        value = fn.load("adj", fn.lane(i))
        fn.store("grad", row(j, nin), fn.op(f"select i1 {fn.op(f'icmp sle i64 {i}, {out}')}, double {value}, double 0.0"))

    per_item("@inputs", nin, gradient)
    fn.emit(f"br label {done}")
    fn.label(done)
    fn.emit("ret void")
    parts.append(fn.text())
    return parts


def _for_table(fn, table, count, body):
    """for j in range(count): body(j, table[j]), over a constant i64 table of the module."""
    if not count:
        return
    loop = object()

    def outer():
        j = fn.k[loop]
        body(j, fn.op(f"load i64, ptr {fn.op(f'getelementptr inbounds [{count} x i64], ptr {table}, i64 0, i64 {j}')}"))

    fn.loop(loop, count, False, (), outer)


def _copy(fn, table, count, src, dst, gather=False, limit=None):
    """for k in range(count): dst[table[k]] = src[k] (gather: dst[k] = src[table[k]], 0 where
    table[k] > limit)."""

    def body(k, j):
        if not gather:
            fn.store(dst, j, fn.load(src, k))
            return
        value = fn.load(src, j)
        fn.store(dst, k, fn.op(f"select i1 {fn.op(f'icmp sle i64 {j}, {limit}')}, double {value}, double 0.0"))

    _for_table(fn, table, count, body)


def _array(name, values):
    values = [int(v) for v in values]
    body = f"[{', '.join(f'i64 {v}' for v in values)}]" if values else "zeroinitializer"
    return f"{name} = private unnamed_addr constant [{len(values)} x i64] {body}"


def _driver(name, calls, nin, npar, out=None, reverses=0, fused=False):
    """IR of ``jitad_<name>``: the inputs and parameters copied in, the chunk functions
    ``calls`` run in order (returning the first failed guard), then, with ``out``, the
    reverse of the ``reverses`` first chunks and the gradient copied out."""
    fn = _Function(f"define internal i64 @{name}({_ARGS}, ptr noalias %x, ptr noalias %p, ptr noalias %grad) {{")
    _copy(fn, "@inputs", nin, "x", "val")
    _copy(fn, "@params", npar, "p", "val")
    for call in calls:
        failed = fn.op(f"call i64 @{call}({_PASS})")
        bad, ok = fn.new("bad"), fn.new("ok")
        fn.emit(f"br i1 {fn.op(f'icmp sge i64 {failed}, 0')}, label {bad}, label {ok}")
        fn.label(bad)
        fn.emit(f"ret i64 {failed}")
        fn.label(ok)
    if out is not None:
        # The forward zeroed every adjoint kept in the array; seed the output as
        # kernels.gradient does (fused: after its forward, before its reverse).
        if not fused:
            fn.store("adj", out, "1.0")
        for k in reversed(range(reverses)):
            fn.emit(f"call void @reverse{k}({_PASS})")
        _copy(fn, "@inputs", nin, "adj", "grad", gather=True, limit=out)
    fn.emit("ret i64 -1")
    # Exported: every argument an integer (an address).
    args = [*_ROWS, "x", "p", "grad"]
    export = _Function(f"define i64 @jitad_{name}({', '.join(f'i64 %i{a}' for a in args)}) {{")
    for a in args:
        export.emit(f"%{a} = inttoptr i64 %i{a} to ptr")
    export.emit(f"ret i64 {export.op(f'call i64 @{name}({_PASS}, ptr %x, ptr %p, ptr %grad)')}")
    return [fn.text(), export.text()]


def emit(plan, inputs, params, outputs, exponents, second=False):
    """The module's IR text (without the formulas, which ``build`` links in) and the
    opcodes whose formulas it calls: a program's first module (FIRST: the gradient of one
    point, its values alone for ``F(x)``, and the small-tape entry point) or, with
    ``second``, the one built when first needed (SECOND: the full replay, partials included,
    that ``jacobian`` and ``hvp`` start from, and the batches' lanes). ``exponents``: {slot: c} of ``x ** c`` entries whose c is a
    literal in the code."""
    n = plan.rr.n
    codes = set()
    stack = list(plan.chunks)
    while stack:
        for node in stack.pop():
            if node[0] == "loop":
                stack.append(node[3])
            elif node[0] == "entry":
                codes.add(node[2])
    names = {code: f"jitad.f{code}" for code in codes}  # renamed by build
    w = _Writer(plan, names, exponents)
    out, nin, npar = int(outputs[0]), len(inputs), len(params)
    parts = [_array("@inputs", inputs), _array("@params", params), _array("@outputs", outputs)]
    parts += [f'declare i32 @"{names[code]}"(ptr, ptr, double, double)' for code in sorted(codes)]
    last = len(plan.chunks) - 1
    fused = not second and last >= 0 and not _has_entries([n for n in plan.chunks[last] if n[0] == "loop"])
    for k, chunk in enumerate(plan.chunks):
        if second:
            fn = _Function(f"define internal i64 @forward{k}({_ARGS}) {{")
            w.forward(fn, chunk, True)
            fn.emit("ret i64 -1")
            parts.append(fn.text())
            continue
        fn = _Function(f"define internal i64 @fast{k}({_ARGS}) {{")
        w.forward(fn, chunk, False)
        fn.emit("ret i64 -1")
        parts.append(fn.text())
        if not (fused and k == last):
            fn = _Function(f"define internal void @reverse{k}({_ARGS}) {{")
            w.reverse(fn, chunk)
            fn.emit("ret void")
            parts.append(fn.text())
    if fused:
        fn = _Function(f"define internal i64 @fused{last}({_ARGS}) {{")
        w.forward(fn, plan.chunks[last], False)
        fn.store("adj", out, "1.0")
        w.reverse(fn, plan.chunks[last], evaluated=True)
        fn.emit("ret i64 -1")
        parts.append(fn.text())
    chunks = range(len(plan.chunks))
    if second:
        parts += _driver("replay", [f"forward{k}" for k in chunks], nin, npar)
    else:
        # value: the outputs' values alone (the fast forward stores every value read
        # elsewhere, outputs included), for F(x); value_and_grad: and the gradient.
        parts += _driver("value", [f"fast{k}" for k in chunks], nin, npar)
        calls = [f"fused{k}" if fused and k == last else f"fast{k}" for k in chunks]
        parts += _driver("value_and_grad", calls, nin, npar, out, len(plan.chunks) - fused, fused)
    if second:
        parts += _lanes_functions(_LanesWriter(plan, names, exponents), inputs, params, outputs)
        return "\n".join(parts), sorted(codes)
    # The small-tape call (TapeFunction.value_and_grad): work is the rows val, da, db, adj,
    # const of one (5, n) array; f, or NaN when a guard failed or x (or p) is not a
    # contiguous vector of the right length (the caller then takes the slow way, which
    # checks and converts everything).
    fn = _Function("define double @jitad_entry(i64 %iwork, i64 %ix, i64 %nx, i64 %sx, i64 %ip, i64 %np, i64 %sp, i64 %igrad) {")
    checks = [f"icmp eq i64 %nx, {nin}", "icmp eq i64 %sx, 8"]
    if npar:
        checks += [f"icmp eq i64 %np, {npar}", "icmp eq i64 %sp, 8"]
    good = fn.op(f"icmp eq i64 %nx, {nin}")
    for check in checks[1:]:
        good = fn.op(f"and i1 {good}, {fn.op(check)}")
    run, refuse = fn.new("run"), fn.new("refuse")
    fn.emit(f"br i1 {good}, label {run}, label {refuse}")
    fn.label(refuse)
    fn.emit(f"ret double {_NAN}")
    fn.label(run)
    fn.emit("%val = inttoptr i64 %iwork to ptr")
    for row, name in enumerate(_ROWS[1:], 1):
        fn.emit(f"%{name} = getelementptr inbounds double, ptr %val, i64 {row * n}")
    for a in ("x", "p", "grad"):
        fn.emit(f"%{a} = inttoptr i64 %i{a} to ptr")
    failed = fn.op(f"call i64 @value_and_grad({_PASS}, ptr %x, ptr %p, ptr %grad)")
    value = fn.load("val", out)
    bad = fn.op(f"icmp sge i64 {failed}, 0")
    fn.emit(f"ret double {fn.op(f'select i1 {bad}, double {_NAN}, double {value}')}")
    parts.append(fn.text())
    return "\n".join(parts), sorted(codes)


# --- machine code --------------------------------------------------------------------------

FIRST = ("jitad_value_and_grad", "jitad_value", "jitad_entry")
SECOND = ("jitad_replay", "jitad_lanes")
OPT_LEVEL = 3
VECTORIZE = True
# Loops are not unrolled: measured side by side, unrolled lanes loops (8 copies before
# vectorizing) compile ~1.6x slower and the single-point code 1.3x slower (MLP), neither
# running faster; O2, O3 and vectorization on or off ran the single-point code alike.
_TARGET = []


def _target_machine(shared=True):
    """The host's target machine; ``shared=False``: a new one (an execution engine owns and
    frees the one it is given)."""
    if shared and _TARGET:
        return _TARGET[0]
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    cpu, features = _host()
    tm = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=cpu, features=features, opt=3, jit=True
    )
    if shared:
        _TARGET.append(tm)
    return tm


def build(text, codes, formula_dir, exported):
    """Object code of the module: the formulas linked in and inlined, optimized at -O3
    (loop and SLP vectorization on, as Numba's; no fast-math, so no reassociation).
    Returns (object bytes, external symbols it needs)."""
    formulas = {code: formula_ir(code, formula_dir) for code in codes}
    with global_compiler_lock:  # LLVM's global context is shared with Numba's compiles
        tm = _target_machine()
        for code, (_, name) in formulas.items():
            text = text.replace(f'@"jitad.f{code}"', f'@"{name}"')
        module = llvm.parse_assembly(text)
        for code, (formula, name) in formulas.items():
            part = llvm.parse_assembly(formula)
            # Only the formula stays visible (to link); Numba's wrappers around it and
            # private copies of its helpers are dropped once nothing calls them.
            for f in part.functions:
                if not f.is_declaration and f.name != name:
                    f.linkage = "internal"
            for g in part.global_variables:
                if not g.is_declaration:
                    g.linkage = "internal"
            formula = part.get_function(name)
            if str(formula.global_value_type) != _FORMULA_TYPE:
                raise RuntimeError(f"unexpected ABI of {ops.NAMES[code]}'s formula: {formula.global_value_type}")
            formula.add_function_attribute("alwaysinline")
            module.link_in(part)
        for f in module.functions:
            if not f.is_declaration and f.name not in exported:
                f.linkage = "internal"
        module.triple = tm.triple
        module.data_layout = str(tm.target_data)
        module.verify()
        options = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
        options.loop_vectorization = VECTORIZE
        options.slp_vectorization = VECTORIZE
        options.loop_unrolling = False
        builder = llvm.create_pass_builder(tm, options)
        builder.getModulePassManager().run(module, builder)
        symbols = sorted(
            {f.name for f in module.functions if f.is_declaration and not f.name.startswith("llvm.")}
            | {g.name for g in module.global_variables if g.is_declaration}
        )
        return tm.emit_object(module), symbols


class Machine:
    """Object code loaded into memory: each exported function's address, as an attribute
    named without its ``jitad_`` prefix."""

    def __init__(self, obj, symbols, exported):
        missing = [s for s in symbols if not llvm.address_of_symbol(s)]
        if missing:  # LLVM would abort the process on an unresolved symbol
            raise RuntimeError(f"compiled code needs symbols this process lacks: {missing}")
        with global_compiler_lock:
            self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine(shared=False))
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()
            for name in exported:
                setattr(self, name.removeprefix("jitad_"), self._engine.get_function_address(name))


# --- calls from Numba ----------------------------------------------------------------------


def _caller(restype):
    """An intrinsic ``call(address, (int, ...))``: calls the machine code at address with
    those 64-bit integers and returns its ``restype``."""

    @intrinsic
    def call(typingctx, address, args):
        if not all(isinstance(t, types.Integer) for t in (address, *args)):
            return None  # an address computed in floats (uint64 + int64 is float64 in NumPy's rules)

        def codegen(context, builder, signature, llargs):
            values = [builder.extract_value(llargs[1], j) for j in range(len(signature.args[1]))]
            fnty = ir.FunctionType(context.get_value_type(restype), [ir.IntType(64)] * len(values))
            return builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), values)

        return restype(address, args), codegen

    return call


_call_int = _caller(types.int64)
_call_float = _caller(types.float64)


@_config.kernel
def call_replay(fn, val, da, db, adj, c, x, p):
    """The compiled replay at address fn; every array C-contiguous (Compiled checks)."""
    args = (val.ctypes.data, da.ctypes.data, db.ctypes.data, adj.ctypes.data, c.ctypes.data)
    return _call_int(fn, (*args, x.ctypes.data, p.ctypes.data, 0))


@_config.kernel
def call_value_and_grad(fn, val, da, db, adj, c, x, p, grad):
    args = (val.ctypes.data, da.ctypes.data, db.ctypes.data, adj.ctypes.data, c.ctypes.data)
    return _call_int(fn, (*args, x.ctypes.data, p.ctypes.data, grad.ctypes.data))


@_config.kernel
def call_entry(fn, work, x, grad):
    """TapeFunction.value_and_grad's call without parameters (see ``emit``)."""
    return _call_float(fn, (work.ctypes.data, x.ctypes.data, x.shape[0], x.strides[0], 0, 0, 8, grad.ctypes.data))


@_config.kernel
def call_entry_params(fn, work, x, p, grad):
    args = (work.ctypes.data, x.ctypes.data, x.shape[0], x.strides[0], p.ctypes.data, p.shape[0], p.strides[0])
    return _call_float(fn, (*args, grad.ctypes.data))


@_config.kernel
def call_batch(value, value_and_grad, outputs, work, X, P, want_grad, values, grads, failed):
    """The values (or values and gradient) at each row of X, in one call; P holds one row
    of parameters shared by all points or one per point."""
    val, da, db, adj, c = work[0], work[1], work[2], work[3], work[4]
    rows = (val.ctypes.data, da.ctypes.data, db.ctypes.data, adj.ctypes.data, c.ctypes.data)
    for k in range(X.shape[0]):
        p = P[0] if P.shape[0] == 1 else P[k]
        if want_grad:
            f = _call_int(value_and_grad, (*rows, X[k].ctypes.data, p.ctypes.data, grads[k].ctypes.data))
        else:
            f = _call_int(value, (*rows, X[k].ctypes.data, p.ctypes.data, 0))
        failed[k] = f
        if f < 0:
            for j in range(outputs.shape[0]):
                values[k, j] = val[outputs[j]]


@_config.inline
def _address(a):
    return np.int64(a.ctypes.data)


@_config.kernel
def call_lanes(fn, w, workers, val, da, db, adj, c, X, P, want_grad, values, grads, failed):
    """Worker w's share of the full blocks of LANES points of X (every workers-th block),
    by ``jitad_lanes`` at fn. P: one row of parameters shared by all points, or one per
    point. The last K % LANES points are the caller's."""
    n, m = X.shape[1], values.shape[1]
    p_step = P.shape[1] if P.shape[0] != 1 else 0
    want = 1 if want_grad else 0
    rows = (val.ctypes.data, da.ctypes.data, db.ctypes.data, adj.ctypes.data, c.ctypes.data)
    for block in range(w, X.shape[0] // LANES, workers):
        k = block * LANES
        x = _address(X) + 8 * k * n
        p = _address(P) + 8 * k * p_step
        g = _address(grads) + 8 * k * n if want_grad else _address(grads)
        _call_int(fn, (*rows, x, p, g, _address(values) + 8 * k * m, _address(failed) + 8 * k, p_step, want))
    return 0


@_config.kernel(parallel=True)
def call_lanes_parallel(fn, workers, rows, c, X, P, want_grad, values, grads, failed):
    """``call_lanes`` on ``workers`` threads, worker w with values, partials and adjoints
    rows[w] (4, entries x LANES)."""
    for w in numba.prange(workers):
        r = rows[w]
        call_lanes(fn, w, workers, r[0], r[1], r[2], r[3], c, X, P, want_grad, values, grads, failed)
    return 0
