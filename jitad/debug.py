"""NaN/inf debugging: with ``debug_nans`` on, recording keeps the source line of every
entry and raises at the first entry that turns finite operands into NaN or inf; replay
checks the same after each sweep. Off by default, so normal recording pays nothing."""

from __future__ import annotations

import math
import sys
from types import FrameType
from typing import Literal

import numpy as np

from . import ops
from ._config import kernel

_enabled = False


class debug_nans:
    """``jitad.debug_nans(True)`` turns the check on (``False`` off); as a context manager
    (``with jitad.debug_nans():``) it restores the previous setting on exit. It applies to
    the active tape of the calling thread and to every tape created while it is on."""

    def __init__(self, enable: bool = True) -> None:
        global _enabled
        self._previous = _enabled
        _enabled = bool(enable)
        from .tape import _state

        _state.rec.lines = {} if _enabled else None

    def __enter__(self) -> debug_nans:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        debug_nans(self._previous)
        return False


def enabled() -> bool:
    return _enabled


def caller_site() -> str:
    """``file:line`` of the innermost frame outside jitad: the user's line that recorded."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("jitad."):
        frame = frame.f_back
    return "unknown line" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def check_entry(rec, i, code, x, y, v):
    """Note where entry i was recorded; raise if it made NaN/inf out of finite operands."""
    site = rec.lines[i] = caller_site()
    if not math.isfinite(v) and math.isfinite(x) and math.isfinite(y):
        raise FloatingPointError(
            f"{ops.NAMES[code]} at tape entry {i} gave {v} from finite operands ({x}, {y}); recorded at {site}"
        )


@kernel
def first_nonfinite(a, b, c, val):
    """The first entry whose value is NaN/inf while its operands are finite, or -1."""
    for i in range(val.shape[0]):
        if np.isfinite(val[i]):
            continue
        ia = a[i]
        ib = b[i]
        x = val[ia] if ia >= 0 else c[i]
        y = val[ib] if ib >= 0 else c[i]
        if (ia >= 0 or ib >= 0) and np.isfinite(x) and np.isfinite(y):
            return i
    return -1


def check_replay(program, val):
    """Raise FloatingPointError naming the first entry of a replay that made NaN/inf."""
    i = first_nonfinite(program.a, program.b, program.const, val)
    if i < 0:
        return
    x = val[program.a[i]] if program.a[i] >= 0 else program.const[i]
    y = val[program.b[i]] if program.b[i] >= 0 else program.const[i]
    site = program.lines.get(int(i), "unknown line (trace with jitad.debug_nans on to keep source lines)")
    raise FloatingPointError(
        f"{ops.NAMES[program.op[i]]} at tape entry {i} gave {val[i]} from finite operands ({x}, {y}) "
        f"during replay; recorded at {site}"
    )
