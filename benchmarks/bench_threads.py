"""Threads sharing one TapeFunction: the speed-up of 2 threads calling ``F.grad`` over 1.

jitad's kernels are compiled with ``nogil=True`` and every thread gets its own work buffers,
so on a big tape the replay and reverse sweep of two threads should overlap; on a small
tape the Python work around each call (which holds the GIL) limits it.

``python -m benchmarks.bench_threads`` writes ``benchmarks/RESULTS_threads.md``.
"""

import datetime
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np

import jitad

from .measure import cpu_name

OUT = Path(__file__).with_name("RESULTS_threads.md")
REPEATS = 7
THREADS = (1, 2)
# (variables of the Rosenbrock function, gradient calls per measurement): ~10^3, 10^5, 10^6 entries
SIZES = ((100, 4000), (10_000, 400), (111_112, 40))


def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def split_run(n_threads, items, call):
    """Seconds for ``n_threads`` threads to run ``call(item)`` for all ``items`` (split
    evenly), from the moment all threads are released until the last one finishes."""
    shares = np.array_split(np.arange(len(items)), n_threads)
    barrier = threading.Barrier(n_threads + 1)
    errors = []

    def work(rows):
        try:
            barrier.wait()
            for k in rows:
                call(items[k])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(rows,)) for rows in shares]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


@numba.njit(nogil=True)
def _spin(n):
    s = 0.0
    for i in range(n):
        s += math.sin(i * 1e-6)
    return s


def measure(n, calls, repeats=REPEATS):
    """Seconds per thread count for F.grad at ``calls`` points, and for the control: a Numba
    loop that never holds the GIL nor touches memory, sized like one call, split the same
    way. Both take turns within each repetition, so the control shows how much of a second
    core was free while the workload ran."""
    rng = np.random.default_rng(0)
    F = jitad.trace(rosen, rng.normal(size=n), compile=False)
    points = [rng.normal(size=n) for _ in range(calls)]
    # Same answers in threads as serially, before timing anything.
    serial = [F.grad(x) for x in points[:8]]
    box = {}
    t = threading.Thread(target=lambda: box.update(g=[F.grad(x) for x in points[:8]]))
    t.start()
    t.join()
    assert all(np.array_equal(a, b) for a, b in zip(serial, box["g"]))

    one_call = time.perf_counter()
    for x in points[: min(calls, 20)]:
        F.grad(x)
    one_call = (time.perf_counter() - one_call) / min(calls, 20)
    _spin(1)
    steps = 1000
    while True:  # the control's call takes as long as one gradient
        t = time.perf_counter()
        _spin(steps)
        if time.perf_counter() - t > one_call or steps > 10**9:
            break
        steps *= 2
    spins = [steps] * calls

    for k in THREADS:  # warm-up: per-thread buffers, caches
        split_run(k, points[: max(k, calls // 10)], F.grad)
    times = {(what, k): [] for what in ("grad", "control") for k in THREADS}
    for _ in range(repeats):
        for k in THREADS:
            times["grad", k].append(split_run(k, points, F.grad))
            times["control", k].append(split_run(k, spins, _spin))
    row = {"n": n, "entries": len(F.tape), "calls": calls}
    for key, v in times.items():
        row[key] = (statistics.median(v), min(v), max(v))
    return row


def speedup(row, what):
    return row[what, 1][0] / row[what, 2][0]


def threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel ran: F.grad does not use Numba's thread pool
        return "not used"


def load_average():
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main():
    started = datetime.datetime.now()
    load_before = load_average()
    jitad.trace(rosen, np.ones(3)).grad(np.ones(3))  # compile the kernels outside the timings
    rows = []
    for n, calls in SIZES:
        row = measure(n, calls)
        rows.append(row)
        print(
            f"n = {n:>7,}: grad {row['grad', 1][0] * 1e3:7.1f} / {row['grad', 2][0] * 1e3:7.1f} ms "
            f"(speed-up {speedup(row, 'grad'):.2f}x), control speed-up {speedup(row, 'control'):.2f}x",
            flush=True,
        )
    load_after = load_average()

    lines = [
        "# Threads sharing one TapeFunction",
        "",
        (
            f"Measured {started:%Y-%m-%d %H:%M} on {cpu_name()}, {os.cpu_count()} logical CPUs, "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
            f"NumPy {np.__version__}, Numba {numba.__version__} (threading layer "
            f"{threading_layer()}), jitad {jitad.__version__}. "
            f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after} "
            "(other processes competing for the cores; 0 is an idle machine)."
        ),
        "",
        (
            "Workload: `F.grad(x)` of the Rosenbrock function at fixed random points, one "
            "`TapeFunction` shared by all threads. The same calls are split evenly over 1 or 2 "
            "threads, released together by a barrier; the time is from the release until the last "
            f"thread is done. Median (min–max) of {REPEATS} repetitions after a warm-up. Speed-up = "
            "median with 1 thread / median with 2 threads; 2.00x is perfect overlap. "
            "`python -m benchmarks.bench_threads` reproduces it."
        ),
        "",
        (
            "| variables | tape entries | calls | 1 thread: s | 2 threads: s | speed-up "
            "| µs per gradient, 1 / 2 threads | control speed-up |"
        ),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        one, two = row["grad", 1], row["grad", 2]
        lines.append(
            f"| {row['n']:,} | {row['entries']:,} | {row['calls']:,} "
            f"| {one[0]:.3f} ({one[1]:.3f}–{one[2]:.3f}) | {two[0]:.3f} ({two[1]:.3f}–{two[2]:.3f}) "
            f"| **{speedup(row, 'grad'):.2f}x** | {one[0] / row['calls'] * 1e6:,.1f} / {two[0] / row['calls'] * 1e6:,.1f} "
            f"| {speedup(row, 'control'):.2f}x |"
        )
    lines += [
        "",
        (
            "Reading it: each call holds the GIL only to check its input and pick this thread's "
            "work buffers; the replay and the reverse sweep run in a compiled kernel that releases "
            "it (`nogil=True`). The bigger the tape, the larger the share of each call spent "
            "without the GIL, and the closer two threads come to twice the throughput of one, "
            "as long as two cores are free: on a shared machine the load average above says how "
            "much of the second core other processes took. The last column is the ceiling at the "
            "same moments: a Numba loop that never holds the GIL nor touches memory, each call as "
            "long as one gradient, split the same way and timed in turn with the gradients. A "
            "jitad speed-up near the control's means neither the GIL nor jitad is the limit; a "
            "control near 1.00x means no second core was free, and the row says nothing about "
            "scaling (the fastest 2-thread run, in parentheses, shows what a free moment gave). "
            "On a small tape a gradient costs a few µs, mostly Python work under the GIL: two "
            "threads then hand the GIL back and forth and can be slower than one; for many "
            "points of a small function, `F.grad_batch` is the parallel path."
        ),
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
