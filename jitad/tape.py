"""The tape: a Wengert list of packed entries in chunks, one active tape per thread.

Recording appends one fixed-size packed entry per op to the tape's open *chunk* (a
``bytearray``: one C call per op, the cheapest append measured). Entries are numbered in
recording order, a topological order, so no sweep ever sorts. A Value holds its chunk,
and a chunk holds the older chunks its entries read: reference counting frees a chunk as
soon as nothing can reach it, so an eager training loop runs in constant space and a
backward sweep visits only the chunks its output depends on.
"""

from __future__ import annotations

import itertools
import struct
import sys
import threading
import weakref
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from . import debug, kernels, ops

# One entry: constant, value, d/da, d/db (float64); operands a, b (int64 sequence numbers,
# -1: the constant); opcode (uint8). 56 bytes, aligned for the kernels.
ENTRY = np.dtype(
    [("c", "f8"), ("val", "f8"), ("da", "f8"), ("db", "f8"), ("a", "i8"), ("b", "i8"), ("op", "u1")],
    align=True,
)
PACK = struct.Struct("=4d2qB7x").pack
assert struct.calcsize("=4d2qB7x") == ENTRY.itemsize
_SIZE = ENTRY.itemsize
_VAL = ENTRY.fields["val"][1]
_OP = ENTRY.fields["op"][1]
# Programs (traced tapes, saved files) keep 48-byte entries with int32 positions.
PROGRAM_ENTRY = np.dtype(
    [("c", "f8"), ("val", "f8"), ("da", "f8"), ("db", "f8"), ("a", "i4"), ("b", "i4"), ("op", "u1")],
    align=True,
)
MAX_ENTRIES = 2**31 - 1  # operand positions of a Program are int32

# A chunk is closed when it holds CHUNK entries, at every backward(), at the first op after
# a run of LEAVES or more leaves (so that parameters live apart from what is computed from
# them), and at a leaf created after SPLIT computed entries (so that each pass of a loop
# starts afresh).
CHUNK = 1 << 14
SPLIT = 256
LEAVES = 32  # fewer leaves share a chunk with what follows (a chunk costs microseconds)


class StaleValueError(RuntimeError):
    """A Value whose entries are gone (its tape was reset), or not on the active tape."""


class _Chunk:
    """Consecutive entries of one tape; Values and later chunks hold it alive."""

    __slots__ = ("buf", "base", "deps", "grad", "mods", "first_op", "__weakref__")

    def __init__(self, base, deps):
        self.buf = bytearray()
        self.base = base  # sequence number of its first entry
        self.deps = deps  # the chunks its entries read: every older live chunk until closed
        self.grad = None  # accumulated .grad of its entries, when any
        self.mods = None  # {leaf: sequence number when its .data was set}
        self.first_op = None  # sequence number of its first computed entry

    def __len__(self):
        return len(self.buf) // _SIZE

    def close(self):
        """Keep only the chunks its entries read (it is closed: nothing more is appended)."""
        if self.first_op is None or not self.deps:
            self.deps = []
            return
        e = np.frombuffer(self.buf, dtype=ENTRY)
        bases = np.array([d.base for d in self.deps], dtype=np.int64)
        used = np.zeros(bases.shape[0], dtype=np.bool_)
        kernels.referenced_chunks(e["a"], e["b"], self.base, bases, used)
        del e
        self.deps = [d for d, u in zip(self.deps, used.tolist()) if u]


class _Recorder:
    """The storage of one tape between two resets; Values point to it and to their chunk."""

    __slots__ = (
        "chunk", "n", "limit", "full", "chunks", "kept", "tape", "alive", "tracing", "sites", "lines", "thread",
        "active", "prune_at",
    )  # fmt: skip

    def __init__(self, tape):
        self.n = 0  # sequence number of the next entry
        self.chunks = []  # weak references to the chunks, oldest first (dead ones pruned on roll)
        self.kept = []  # chunks held while tracing: a traced program needs every entry, guards too
        self.tape = tape
        self.alive = True
        self.tracing = False  # set by jitad.trace: conversions to float warn, guards note their line
        self.sites = {}  # guard entry -> "file:line" of its comparison, while tracing
        self.lines = {} if debug.enabled() else None  # entry -> source line, in debug mode
        self.thread = threading.get_ident()
        self.active = 0  # the thread's id while this is its active tape
        self.prune_at = 8  # chunks alive at which roll() next looks for chains to break
        self.chunk = None
        self._open()

    def _open(self):
        live = self.live()
        self.chunk = _Chunk(self.n, live)
        self.chunks.append(weakref.ref(self.chunk))
        self.full = self.n + CHUNK
        self.limit = self.n  # the first op notes itself in the chunk (before_op)

    def live(self):
        """The chunks still alive, oldest first."""
        live = []
        refs = []
        for r in self.chunks:
            c = r()
            if c is not None:
                live.append(c)
                refs.append(r)
        self.chunks = refs
        return live

    def roll(self):
        """Close the open chunk, if it holds entries, and open a new one."""
        old = self.chunk
        if not old.buf:
            return
        old.close()
        if self.tracing:
            self.kept.append(old)
        elif len(self.chunks) >= self.prune_at:
            self.prune()
        self._open()

    def prune(self):
        """Break chains of chunks that no Value holds.

        A chunk stays alive while a later chunk reads any of its entries, and so do the
        chunks *it* reads: in a loop that records without calling backward(), each chunk
        holds the previous one through the pass that straddles their border, and nothing
        would ever be freed. Here the entries that Values can still reach are marked, and
        the others, in chunks that no Value holds, are cut loose from their operands."""
        live = self.live()
        held = {id(c): 0 for c in live}
        for c in live:
            for d in c.deps:
                if id(d) in held:
                    held[id(d)] += 1
        # References a chunk has beyond the lists here and the later chunks that read it
        # are Values (or callers' frames, which only make this conservative).
        orphans = [sys.getrefcount(c) - 3 - held[id(c)] <= 0 for c in live]
        if any(orphans):
            self._cut(live, orphans)
            del live
        # Pruning again once the chunks have doubled keeps its cost at O(1) per entry.
        self.prune_at = 2 * len(self.live()) + 8

    def _cut(self, live, orphans):
        """Turn the entries of orphan chunks that nothing needs into inert leaves. Marks
        chunk by chunk, newest first, in place: one byte per entry, no copy of the tape."""
        sizes = [len(c) for c in live]
        starts = np.fromiter(itertools.accumulate(sizes[:-1], initial=0), dtype=np.int64, count=len(live))
        bases = np.array([c.base for c in live], dtype=np.int64)
        needed = np.zeros(sum(sizes), dtype=np.bool_)
        for c, start, size, orphan in zip(live, starts.tolist(), sizes, orphans):
            if not orphan:
                needed[start : start + size] = True  # everything in a chunk that Values hold
        for j in range(len(live) - 1, -1, -1):
            own = np.frombuffer(live[j].buf, dtype=ENTRY)
            kernels.mark_needed(own["a"], own["b"], bases, starts, j, needed)
            if orphans[j]:
                unused = ~needed[starts[j] : starts[j] + sizes[j]]
                own["a"][unused] = -1
                own["b"][unused] = -1
                own["op"][unused] = ops.LEAF  # inert: a value with no operands
            del own
            if orphans[j]:
                live[j].close()

    def before_op(self):
        """Called by the first op after a leaf, and when the open chunk is full."""
        chunk = self.chunk
        if self.n >= self.full or (chunk.first_op is None and len(chunk.buf) >= LEAVES * _SIZE):
            self.roll()
            chunk = self.chunk
        if chunk.first_op is None:
            chunk.first_op = self.n
        self.limit = self.full

    # reading ------------------------------------------------------------------------------
    def __len__(self):
        return sum(len(c) for c in self.live())

    def gather(self, chunks):
        """The entries of ``chunks`` (oldest first) as one array, operands as positions in it,
        and the position of each chunk's first entry."""
        sizes = [len(c.buf) for c in chunks]
        e = np.empty(sum(sizes) // _SIZE, dtype=ENTRY)
        raw = e.view(np.uint8)
        at = 0
        for c, size in zip(chunks, sizes):
            # Raw bytes: NumPy copies a structured array field by field, 50x slower.
            raw[at : at + size] = np.frombuffer(c.buf, dtype=np.uint8, count=size)
            at += size
        starts = np.fromiter(itertools.accumulate(sizes[:-1], initial=0), dtype=np.int64, count=len(sizes))
        starts //= _SIZE
        bases = np.array([c.base for c in chunks], dtype=np.int64)
        kernels.positions(e["a"], e["b"], bases, starts)
        return e, starts

    def entries(self):
        """Every live entry in the Program layout (int32 positions), a copy."""
        e, _ = self.gather(self.live())
        if e.shape[0] > MAX_ENTRIES:
            raise OverflowError(f"a traced tape holds at most {MAX_ENTRIES} entries (operand indices are int32)")
        out = np.empty(e.shape[0], dtype=PROGRAM_ENTRY)
        for name in ENTRY.names:
            out[name] = e[name]
        return out

    def reachable(self, chunk):
        """``chunk`` and every chunk its entries depend on, oldest first: no recursion."""
        seen = {id(chunk): chunk}
        stack = [chunk]
        while stack:
            for d in stack.pop().deps:
                if id(d) not in seen:
                    seen[id(d)] = d
                    stack.append(d)
        return sorted(seen.values(), key=lambda c: c.base)


class Tape:
    """A Wengert list. ``with jitad.Tape() as tape:`` records into it in this thread.

    Columns (copies of what is alive): ``op``, ``a``, ``b``, ``const``, ``value``, ``da``,
    ``db``; ``names`` gives the op name of every entry. Entries that no Value can reach any
    more are freed as recording goes on. ``reset()`` empties the tape; Values recorded
    before a reset raise ``StaleValueError`` instead of giving wrong numbers.
    """

    def __init__(self) -> None:
        self._rec = _Recorder(self)
        self._outer: list[Tape] = []

    # recording scope ------------------------------------------------------------------
    def __enter__(self) -> Tape:
        if self._rec.thread != threading.get_ident():
            raise RuntimeError("a Tape records in the thread that created it; create one per thread")
        self._outer.append(_state.tape)
        _activate(self)
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        _activate(self._outer.pop())
        return False

    def reset(self) -> None:
        """Remove every entry. Values recorded so far become stale."""
        if self._rec.thread != threading.get_ident():
            raise RuntimeError("reset a tape in the thread that records on it")
        self._rec.alive = False
        self._rec.active = 0
        self._rec = _Recorder(self)
        if _state.tape is self:
            _activate(self)

    def zero_grad(self) -> None:
        """Set the ``.grad`` of every Value on this tape to 0 (``backward`` accumulates)."""
        for c in self._rec.live():
            c.grad = None

    # reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rec)

    def _column(self, field: str) -> NDArray[Any]:
        return self._rec.entries()[field].copy()

    @property
    def op(self) -> NDArray[np.uint8]:
        """opcode of every entry (uint8)"""
        return self._column("op")

    @property
    def a(self) -> NDArray[np.int32]:
        """first operand index, -1: the constant"""
        return self._column("a")

    @property
    def b(self) -> NDArray[np.int32]:
        """second operand index, -1: the constant"""
        return self._column("b")

    @property
    def const(self) -> NDArray[np.float64]:
        """the constant an entry uses"""
        return self._column("c")

    @property
    def value(self) -> NDArray[np.float64]:
        """value of every entry"""
        return self._column("val")

    @property
    def da(self) -> NDArray[np.float64]:
        """local partial w.r.t. operand a"""
        return self._column("da")

    @property
    def db(self) -> NDArray[np.float64]:
        """local partial w.r.t. operand b"""
        return self._column("db")

    @property
    def names(self) -> list[str]:
        """The op name of every entry."""
        return [ops.NAMES[k] for k in self._rec.entries()["op"]]

    def __repr__(self) -> str:
        return f"<jitad.Tape with {len(self)} entries>"

    def table(self, limit: int = 50) -> str:
        """The first ``limit`` entries as text, one line each."""
        entries = self._rec.entries()
        e = entries[:limit]
        rows = [f"{'i':>6} {'op':<11} {'a':>6} {'b':>6} {'const':>10} {'value':>12} {'da':>10} {'db':>10}"]
        for i, r in enumerate(e):
            rows.append(
                f"{i:>6} {ops.NAMES[r['op']]:<11} {r['a']:>6} {r['b']:>6} {r['c']:>10.4g} "
                f"{r['val']:>12.6g} {r['da']:>10.4g} {r['db']:>10.4g}"
            )
        if len(entries) > limit:
            rows.append(f"... {len(entries) - limit} more")
        return "\n".join(rows)


class _State(threading.local):
    def __init__(self):
        self.tape = Tape()
        self.rec = self.tape._rec
        self.rec.active = threading.get_ident()


_state = _State()


def _activate(tape):
    rec = tape._rec
    if debug.enabled() != (rec.lines is not None):  # debug_nans was switched since it last recorded
        rec.lines = {} if debug.enabled() else None
    _state.rec.active = 0
    rec.active = threading.get_ident()
    _state.tape = tape
    _state.rec = rec


def active() -> Tape:
    """This thread's active tape."""
    return _state.tape


def set_leaf(chunk, i, value, stamp):
    """Write a leaf's new value into its entry; raise if entry i is not a leaf."""
    j = (i - chunk.base) * _SIZE
    if chunk.buf[j + _OP] != ops.LEAF:
        return False
    struct.pack_into("=d", chunk.buf, j + _VAL, value)
    if chunk.mods is None:
        chunk.mods = {}
    chunk.mods[i] = stamp
    return True
