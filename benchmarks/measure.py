"""Timing, memory and correctness of one (system, workload) cell.

Times are wall-clock ``time.perf_counter`` around single calls; each steady-state sample
is a call at a new point. A cell starts from a collected heap; for eager systems (which
build a new graph, often of reference cycles, at every call) a sample slower than 1 ms is
also preceded by ``gc.collect()`` (not timed), so that the garbage of one call does not
bill the next. Replay and compiled systems create no such garbage and are not collected
between samples: a collection walks the whole heap and leaves the caches cold, which
doubled a compiled 1 ms gradient (ADBench GMM d=10 K=25) in a trial. Memory is the
``tracemalloc`` peak during one gradient evaluation at a new point (Python allocators and
NumPy buffers; blind to torch, XLA and CasADi allocations, which are flagged).
"""

import gc
import platform
import signal
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .adapters import Unavailable


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_time(fn, repeats):
    """Median wall time of ``repeats`` calls of fn."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class CellTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds):
    """Raise CellTimeout in the main thread after ``seconds`` (Python code only: a long C
    call, e.g. an XLA compile, is interrupted when it returns)."""
    if not seconds:
        yield
        return

    def handler(signum, frame):
        raise CellTimeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def rel_error(g, ref):
    """max |g - ref| / max |ref| (normwise, so near-zero components do not blow it up)."""
    g = np.asarray(g, dtype=float).ravel()
    ref = np.asarray(ref, dtype=float).ravel()
    if g.shape != ref.shape:
        return float("nan")
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(g - ref)) / (scale if scale > 0 else 1.0))


def peak_memory(fn):
    """tracemalloc peak (bytes) above the level at the start, while fn() runs."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def run_cell(adapter, w, *, budget_s=1.0, min_samples=3, max_samples=200, limit_s=120.0, memory_max_s=1.0):
    """Measure one cell; returns a dict (see ``blank``)."""
    r = blank(adapter, w)
    try:
        adapter.check()
    except Unavailable as e:
        r.update(status="unavailable", reason=str(e))
        return r
    reason = adapter.skip(w)
    if reason:
        r.update(status="skipped", reason=reason)
        return r
    try:
        with time_limit(limit_s):
            gc.collect()
            t0 = time.perf_counter()
            prepared = adapter.prepare(w)
            prepared.grad(w.x0)
            r["first_s"] = time.perf_counter() - t0
            r["compile_s"] = prepared.compile_s
            r["note"] = prepared.note
            times = []
            start = time.perf_counter()
            rng = np.random.default_rng(123)
            check_point = None
            check_grad = None
            collect = adapter.kind == "eager"
            while len(times) < max_samples:
                x = _new_point(w, rng)
                if collect and (not times or times[-1] > 1e-3):
                    # Start every slow sample from a collected heap: micrograd's graphs are
                    # reference cycles that only the cyclic GC frees, and garbage left by one
                    # call would otherwise slow down the next ones (and other systems).
                    gc.collect()
                t = time.perf_counter()
                _, g = prepared.grad(x)
                times.append(time.perf_counter() - t)
                if check_point is None:
                    check_point, check_grad = x, np.array(g, dtype=float)
                if len(times) >= min_samples and time.perf_counter() - start > budget_s:
                    break
            t = np.array(times)
            r["samples"] = t.size
            r["median_s"] = float(np.median(t))
            r["q1_s"], r["q3_s"] = (float(v) for v in np.percentile(t, [25, 75]))
            _, ref = w.hand(check_point, *w.hand_data)
            r["rel_err"] = rel_error(check_grad, ref)
            r["ops"] = prepared.ops() if callable(prepared.ops) else prepared.ops
            r["ops_note"] = prepared.ops_note
            if r["median_s"] <= memory_max_s:
                x = _new_point(w, rng)
                r["mem_bytes"] = peak_memory(lambda: prepared.grad(x))
            else:
                r["mem_note"] = f"not measured: one call takes {r['median_s']:.1f} s (x3 under tracemalloc)"
            if adapter.native_memory and r["mem_bytes"] is not None:
                r["mem_note"] = "Python heap only; native allocations not traced"
            r["status"] = "ok"
            r["prepared"] = prepared
    except CellTimeout as e:
        r.update(status="failed", reason=str(e))
    except RecursionError as e:
        r.update(status="failed", reason=f"RecursionError: {e}")
    except MemoryError as e:
        r.update(status="failed", reason=f"MemoryError: {e}")
    except Exception as e:  # noqa: BLE001 - a failing peer must not stop the suite
        r.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:200]}")
    return r


def _new_point(w, rng):
    scale = w.perturb * (np.abs(w.x0) + 0.1)
    return w.x0 + scale * rng.uniform(-1.0, 1.0, size=w.n)


def blank(adapter, w):
    return dict(
        system=adapter.key,
        label=adapter.label,
        kind=adapter.kind,
        workload=w.name,
        workload_label=w.label,
        ref_ops=w.meta.get("ref_ops"),
        status="",
        reason="",
        ops=None,
        ops_note="",
        first_s=None,
        compile_s=None,
        median_s=None,
        q1_s=None,
        q3_s=None,
        samples=0,
        rel_err=None,
        mem_bytes=None,
        mem_note="",
        note="",
        prepared=None,
    )


def timeit_loop(fn, min_time=0.2, repeat=5):
    """Best-of-``repeat`` mean seconds per call of fn(), each repeat looping >= min_time
    (for calls too short to time one by one)."""
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= min_time / 4:
            break
        n *= 4
    n = max(1, int(n * min_time / max(dt, 1e-9)))
    best = float("inf")
    per = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t) / n)
        best = min(best, per[-1])
    return float(np.median(per)), best
