"""The tape: a Wengert list in flat NumPy columns, one active tape per thread.

Recording appends one fixed-size packed entry per op to a ``bytearray`` (one C call per
op, the cheapest append measured); the columns are zero-copy views of that buffer.
Entries are in recording order, which is a topological order: no sweep ever sorts.
"""

import struct
import threading

import numpy as np

from . import debug, ops

# One entry: constant, value, d/da, d/db (float64); operands a, b (int32, -1: the
# constant); opcode (uint8). 48 bytes, aligned for the kernels.
ENTRY = np.dtype(
    [("c", "f8"), ("val", "f8"), ("da", "f8"), ("db", "f8"), ("a", "i4"), ("b", "i4"), ("op", "u1")],
    align=True,
)
PACK = struct.Struct("=4d2iB7x").pack
assert struct.calcsize("=4d2iB7x") == ENTRY.itemsize
MAX_ENTRIES = 2**31 - 1  # operand indices are int32


class StaleValueError(RuntimeError):
    """A Value was used after its tape was reset, or on a tape that is not active."""


class _Recorder:
    """The storage of one tape between two resets; Values point to it."""

    __slots__ = ("buf", "n", "tape", "grad", "alive", "tracing", "sites", "lines", "thread")

    def __init__(self, tape):
        self.buf = bytearray()
        self.n = 0
        self.tape = tape
        self.grad = None
        self.alive = True
        self.tracing = False  # set by jitad.trace: conversions to float warn, guards note their line
        self.sites = {}  # guard entry -> "file:line" of its comparison, while tracing
        self.lines = {} if debug.enabled() else None  # entry -> source line, in debug mode
        self.thread = threading.get_ident()

    def entries(self, count=None):
        """The first ``count`` entries (all by default) as a structured array: a zero-copy
        view in the recording thread (drop it before recording more), a copy in any other,
        so that reading a tape never stops its owner from appending."""
        count = self.n if count is None else count
        if self.thread == threading.get_ident():
            return np.frombuffer(self.buf, dtype=ENTRY, count=count)
        return np.frombuffer(self.buf[: count * ENTRY.itemsize], dtype=ENTRY, count=count)

    def accumulate_grad(self, adj):
        n = adj.shape[0]
        if self.grad is None:
            self.grad = np.zeros(max(n, 16))
        elif self.grad.shape[0] < n:
            grown = np.zeros(max(n, 2 * self.grad.shape[0]))
            grown[: self.grad.shape[0]] = self.grad
            self.grad = grown
        self.grad[:n] += adj


class Tape:
    """A Wengert list. ``with jitad.Tape() as tape:`` records into it in this thread.

    Columns (read-only copies): ``op``, ``a``, ``b``, ``const``, ``value``, ``da``, ``db``;
    ``names`` gives the op name of every entry. ``reset()`` empties the tape; Values
    recorded before a reset raise ``StaleValueError`` instead of giving wrong numbers.
    """

    def __init__(self):
        self._rec = _Recorder(self)
        self._outer = []

    # recording scope ------------------------------------------------------------------
    def __enter__(self):
        if self._rec.thread != threading.get_ident():
            raise RuntimeError("a Tape records in the thread that created it; create one per thread")
        self._outer.append(_state.tape)
        _activate(self)
        return self

    def __exit__(self, *exc):
        _activate(self._outer.pop())
        return False

    def reset(self):
        """Remove every entry. Values recorded so far become stale."""
        if self._rec.thread != threading.get_ident():
            raise RuntimeError("reset a tape in the thread that records on it")
        self._rec.alive = False
        self._rec = _Recorder(self)
        if _state.tape is self:
            _state.rec = self._rec

    def zero_grad(self):
        """Set the ``.grad`` of every Value on this tape to 0 (``backward`` accumulates)."""
        self._rec.grad = None

    # reading ----------------------------------------------------------------------------
    def __len__(self):
        return self._rec.n

    def _column(self, field):
        return self._rec.entries()[field].copy()

    op = property(lambda self: self._column("op"), doc="opcode of every entry (uint8)")
    a = property(lambda self: self._column("a"), doc="first operand index, -1: the constant")
    b = property(lambda self: self._column("b"), doc="second operand index, -1: the constant")
    const = property(lambda self: self._column("c"), doc="the constant an entry uses")
    value = property(lambda self: self._column("val"), doc="value of every entry")
    da = property(lambda self: self._column("da"), doc="local partial w.r.t. operand a")
    db = property(lambda self: self._column("db"), doc="local partial w.r.t. operand b")

    @property
    def names(self):
        return [ops.NAMES[k] for k in self._rec.entries()["op"]]

    def __repr__(self):
        return f"<jitad.Tape with {len(self)} entries>"

    def table(self, limit=50):
        """The first ``limit`` entries as text, one line each."""
        e = self._rec.entries()[:limit]
        rows = [f"{'i':>6} {'op':<11} {'a':>6} {'b':>6} {'const':>10} {'value':>12} {'da':>10} {'db':>10}"]
        for i, r in enumerate(e):
            rows.append(
                f"{i:>6} {ops.NAMES[r['op']]:<11} {r['a']:>6} {r['b']:>6} {r['c']:>10.4g} "
                f"{r['val']:>12.6g} {r['da']:>10.4g} {r['db']:>10.4g}"
            )
        if len(self) > limit:
            rows.append(f"... {len(self) - limit} more")
        return "\n".join(rows)


class _State(threading.local):
    def __init__(self):
        self.tape = Tape()
        self.rec = self.tape._rec


_state = _State()


def _activate(tape):
    rec = tape._rec
    if debug.enabled() != (rec.lines is not None):  # debug_nans was switched since it last recorded
        rec.lines = {} if debug.enabled() else None
    _state.tape = tape
    _state.rec = rec


def active():
    """This thread's active tape."""
    return _state.tape
