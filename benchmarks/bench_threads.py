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

OUT = Path(__file__).with_name("RESULTS_threads.md")
REPEATS = 7
THREADS = (1, 2)
# (variables of the Rosenbrock function, gradient calls per measurement): ~10^3, 10^5, 10^6 entries
SIZES = ((100, 4000), (10_000, 400), (111_112, 40))


def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def wall_time(F, points, n_threads):
    """Seconds for ``n_threads`` threads to compute F.grad at all ``points`` (split evenly),
    from the moment all threads are released until the last one finishes."""
    shares = np.array_split(np.arange(len(points)), n_threads)
    barrier = threading.Barrier(n_threads + 1)
    errors = []

    def work(rows):
        try:
            barrier.wait()
            for k in rows:
                F.grad(points[k])
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


def measure(n, calls, repeats=REPEATS):
    rng = np.random.default_rng(0)
    F = jitad.trace(rosen, rng.normal(size=n))
    points = [rng.normal(size=n) for _ in range(calls)]
    # Same answers in threads as serially, before timing anything.
    serial = [F.grad(x) for x in points[:8]]
    box = {}
    t = threading.Thread(target=lambda: box.update(g=[F.grad(x) for x in points[:8]]))
    t.start()
    t.join()
    assert all(np.array_equal(a, b) for a, b in zip(serial, box["g"]))
    row = {"what": f"Rosenbrock, n = {n:,}", "entries": f"{len(F.tape):,}", "calls": calls}
    row.update(interleaved(lambda k: wall_time(F, points, k), lambda k: wall_time(F, points[: max(k, calls // 10)], k)))
    return row


def interleaved(timed, warm_up, repeats=REPEATS):
    """Median, min and max seconds of ``timed(k)`` per thread count k; the thread counts take
    turns within each repetition, so a change of the machine's load hits them alike."""
    for k in THREADS:
        warm_up(k)  # per-thread buffers, caches
    times = {k: [] for k in THREADS}
    for _ in range(repeats):
        for k in THREADS:
            times[k].append(timed(k))
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


@numba.njit(nogil=True)
def _spin(n):
    s = 0.0
    for i in range(n):
        s += math.sin(i * 1e-6)
    return s


def control(calls=40, steps=2_000_000):
    """The machine's ceiling right now: the same split of work for a Numba loop that holds
    no GIL and touches no memory (sin of a counter)."""
    _spin(1)

    def run(k, count=calls):
        shares = np.array_split(np.arange(count), k)
        barrier = threading.Barrier(k + 1)

        def work(rows):
            barrier.wait()
            for _ in rows:
                _spin(steps)

        threads = [threading.Thread(target=work, args=(rows,)) for rows in shares]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    row = {"what": "control: a nogil Numba loop, no memory traffic", "entries": "–", "calls": calls}
    row.update(interleaved(run, lambda k: run(k, k)))
    return row


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
    rows = [control()]
    for n, calls in SIZES:
        rows.append(measure(n, calls))
    rows.append(control())
    for row in rows:
        print(
            f"{row['what']:<48} "
            + " ".join(f"{k} thread(s): {row[k][0] * 1e3:8.1f} ms" for k in THREADS)
            + f"  speed-up {row[1][0] / row[2][0]:.2f}x",
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
        "| workload | tape entries | calls | 1 thread: s | 2 threads: s | speed-up | µs per call, 1 / 2 threads |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        one, two = row[1], row[2]
        lines.append(
            f"| {row['what']} | {row['entries']} | {row['calls']:,} "
            f"| {one[0]:.3f} ({one[1]:.3f}–{one[2]:.3f}) | {two[0]:.3f} ({two[1]:.3f}–{two[2]:.3f}) "
            f"| {one[0] / two[0]:.2f}x | {one[0] / row['calls'] * 1e6:,.1f} / {two[0] / row['calls'] * 1e6:,.1f} |"
        )
    lines += [
        "",
        (
            "Reading it: each call holds the GIL only to check its input and pick this thread's "
            "work buffers; the replay and the reverse sweep run in a compiled kernel that releases "
            "it (`nogil=True`). The bigger the tape, the larger the share of each call spent "
            "without the GIL, and the closer two threads come to twice the throughput of one, "
            "as long as two cores are free: on a shared machine the load average above says how "
            "much of the second core other processes took. The control rows (first and last) are "
            "the ceiling at that moment: a loop that never holds the GIL and touches no memory, "
            "split the same way. A jitad speed-up near the control's means the GIL is not the limit."
        ),
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
