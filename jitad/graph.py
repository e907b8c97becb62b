"""Pictures of the recorded graph: Graphviz DOT source for what a Value depends on.

Reads the tape backward from the output's entry (the tape is in topological order), so
it never recurses; past ``max_nodes`` entries the oldest ones collapse into one node.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from . import ops
from .tape import StaleValueError
from .value import Value

if TYPE_CHECKING:
    import graphviz

# Ops drawn as an infix symbol; the rest are drawn by name, as calls.
_SOURCE_STYLE = {ops.LEAF: "#dbeafe", ops.PARAM: "#e5e7eb"}  # fill colours of leaves, params

_INSTALL = (
    "jitad.draw needs the `graphviz` Python package and the Graphviz `dot` program: "
    "`pip install graphviz`, and `apt-get install graphviz` (Debian/Ubuntu) or "
    "`brew install graphviz` (macOS). jitad.to_dot(y) gives the DOT source without them."
)


def to_dot(y: Value, max_nodes: int = 200, labels: Mapping[str, Value] | None = None) -> str:
    """Graphviz DOT source of the graph that Value ``y`` depends on.

    Each entry is a record ``name | data | grad`` (``grad`` is the ``.grad`` accumulated
    by ``backward()``), fed by a node naming its op; a constant operand is written into
    the op's label (``* 2``). Only the ``max_nodes`` entries nearest ``y`` are drawn; the
    older ones become one "… N more entries" node. ``labels`` maps names to Values
    (``{"a": a, "b": b}``); unnamed entries show their tape index ``#i``.

    >>> x = Value(3.0); y = x * x + 1; y.backward()
    >>> print(to_dot(y))  # doctest: +SKIP
    """
    if not isinstance(y, Value):
        raise TypeError(f"to_dot needs a Value, got {type(y).__name__}")
    if int(max_nodes) < 1:
        raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
    t = y._t
    if not t.alive:
        raise StaleValueError(f"{y!r} is from a tape that was reset; its graph is gone")
    names = _names(t, labels)
    chunks = t.reachable(y._k)
    e, starts = t.gather(chunks)
    out = int(starts[chunks.index(y._k)]) + y._i - y._k.base
    # Nodes are named by tape index (sequence number), whatever was freed in between.
    seq = np.repeat([c.base for c in chunks] - starts, [len(c) for c in chunks]) + np.arange(e.shape[0])
    ancestors = _ancestors(e["a"].tolist(), e["b"].tolist(), out)
    kept = np.array(ancestors[: int(max_nodes)][::-1], dtype=np.int64)
    rows = e[kept]
    grad = np.concatenate([_grads(c) for c in chunks])
    first = int(kept[0])  # every ancestor not drawn comes before every one that is
    hidden = len(ancestors) - len(kept)

    lines = [
        "digraph jitad {",
        '  graph [rankdir=LR, fontname="Helvetica", nodesep=0.25, ranksep=0.35];',
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [color="#6b7280", arrowsize=0.7];',
    ]
    if hidden:
        noun = "entries" if hidden > 1 else "entry"
        lines.append(f'  more [shape=box, style="dashed,rounded", label="… {hidden} more {noun}"];')
    for p, r in zip(kept.tolist(), rows):
        code = int(r["op"])
        g = float(grad[p])
        i = int(seq[p])
        name = names.get(i, f"#{i}")
        label = f"{{ {_escape_record(name)} | data {_number(r['val'])} | grad {_number(g)} }}"
        style = f', style="filled", fillcolor="{_SOURCE_STYLE[code]}"' if code in _SOURCE_STYLE else ""
        if p == out:
            style += ", penwidth=2"
        lines.append(f'  n{i} [shape=record, label="{label}"{style}];')
        if ops.OPS[code].arity == 0:
            continue
        lines.append(
            f'  op{i} [shape=ellipse, label="{_escape(_op_label(code, r))}", fontsize=10, margin="0.04,0.02"];'
        )
        lines.append(f"  op{i} -> n{i};")
        operands = [int(r["a"])] if ops.OPS[code].arity == 1 else [int(r["a"]), int(r["b"])]
        named = len(operands) == 2 and min(operands) >= 0 and not ops.OPS[code].commutative
        seen = {}
        for side, j in zip("ab", operands):
            if j >= 0:
                seen.setdefault(j, []).append(side)
        for j, sides in seen.items():
            src = f"n{seq[j]}" if j >= first else "more"
            edge = f' [label="{",".join(sides)}", fontsize=9]' if named else ""
            lines.append(f"  {src} -> op{i}{edge};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(
    y: Value, max_nodes: int = 200, labels: Mapping[str, Value] | None = None, format: str = "svg"
) -> graphviz.Source:
    """Render the graph of ``y`` (see ``to_dot``) as a ``graphviz.Source``; in Jupyter it
    shows as a picture. Needs the ``graphviz`` package and Graphviz's ``dot`` program."""
    try:
        import graphviz
    except ImportError:
        raise ImportError(_INSTALL) from None
    if shutil.which("dot") is None:
        raise RuntimeError("Graphviz's `dot` program is not on PATH. " + _INSTALL)
    return graphviz.Source(to_dot(y, max_nodes, labels), format=format)


def _ancestors(a, b, out):
    """Entries that ``out`` depends on (itself included), nearest first."""
    needed = bytearray(out + 1)
    needed[out] = 1
    found = []
    for i in range(out, -1, -1):
        if needed[i]:
            found.append(i)
            if a[i] >= 0:
                needed[a[i]] = 1
            if b[i] >= 0:
                needed[b[i]] = 1
    return found


def _grads(chunk):
    g = np.zeros(len(chunk))
    if chunk.grad is not None:
        n = min(g.shape[0], chunk.grad.shape[0])
        g[:n] = chunk.grad[:n]
    return g


def _names(t, labels):
    if labels is not None and not isinstance(labels, Mapping):
        raise TypeError(f"labels must map names to Values, got {type(labels).__name__}")
    names = {}
    for name, v in (labels or {}).items():
        if not isinstance(v, Value):
            raise TypeError(f"labels maps names to Values; {name!r} maps to {type(v).__name__}")
        if v._t is t:
            names[v._i] = str(name)
    return names


def _op_label(code, r):
    """The op node's text, with a constant operand written in."""
    name = ops.NAMES[code]
    c = _number(r["c"], short=True)
    if code == ops.GUARD:
        return f"guard: {'true' if r['c'] != 0.0 else 'false'}"
    a, b = int(r["a"]), int(r["b"])
    sym = ops.OPS[code].symbol
    if sym is not None:
        if b < 0:  # a constant second operand, or the exponent of powc
            return f"{sym} {c}"
        return f"{c} {sym}" if a < 0 else sym
    if ops.OPS[code].arity == 1:
        return name
    if b < 0:
        return f"{name}(·, {c})"
    return f"{name}({c}, ·)" if a < 0 else name


def _number(x, short=False):
    x = float(x)
    if short:
        return f"{x:.10g}"
    if x == 0.0 or 1e-3 <= abs(x) < 1e6 or not np.isfinite(x):
        return f"{x:.4f}"
    return f"{x:.3e}"


def _escape(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _escape_record(s):
    for ch in '\\{}|<>"':
        s = s.replace(ch, "\\" + ch)
    return s
