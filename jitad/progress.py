"""Progress on long work (``progress=`` of ``trace``, ``optimize=True`` and the batches):
a watcher thread that stays silent for the first seconds, then shows a tqdm bar when tqdm
is installed, or a plain stderr line every few seconds otherwise.

Watching from another thread keeps the hot loops free of hooks: recording only appends to
the tape, and the watcher reads the tape's length; for a batch it counts the points whose
results the kernels have written.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

DELAY_S = 2.0  # work shorter than this never prints anything
PLAIN_INTERVAL_S = 5.0  # seconds between plain stderr lines (tqdm redraws on its own)


def wanted(progress: bool | None) -> bool:
    """``progress=None`` (the default) shows progress when stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


@contextlib.contextmanager
def watch(
    what: str,
    progress: bool | None = None,
    count: Callable[[], int] | None = None,
    unit: str = "entries",
    total: int | None = None,
) -> Iterator[None]:
    """Show progress of the work done inside the ``with`` block once it has run ``DELAY_S``:
    ``what`` names the work, ``count()`` (read from the watcher thread) how far it is, out
    of ``total`` when that is known."""
    if not wanted(progress):
        yield
        return
    done = threading.Event()
    start = time.perf_counter()
    if count is not None:
        count = _tolerant(count)
    thread = threading.Thread(target=_report, args=(what, count, unit, total, start, done), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _tolerant(count: Callable[[], int]) -> Callable[[], int]:
    # count() reads state that the working thread is changing: a failed read shows the last
    # good number instead of ending the watcher.
    last = 0

    def read() -> int:
        nonlocal last
        try:
            last = int(count())
        except Exception:  # noqa: BLE001 - a progress display must never break the work
            pass
        return last

    return read


def _report(
    what: str,
    count: Callable[[], int] | None,
    unit: str,
    total: int | None,
    start: float,
    done: threading.Event,
) -> None:
    if done.wait(DELAY_S):
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(
            desc=f"jitad: {what}",
            total=total,
            initial=count() if count else int(time.perf_counter() - start),  # rates from here on
            unit=unit if count else "s",
            unit_scale=True,
            leave=True,
        )
        while True:
            finished = done.wait(0.5)
            bar.n = count() if count else int(time.perf_counter() - start)
            bar.refresh()
            if finished:
                break
        bar.close()
        return
    while True:
        finished = done.wait(PLAIN_INTERVAL_S)
        of = f" of {total:,}" if total is not None else ""
        so_far = f"{count():,}{of} {unit}, " if count else ""
        state = "done in" if finished else "running for"
        print(f"jitad: {what}: {so_far}{state} {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        if finished:
            return
