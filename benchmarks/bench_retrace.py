"""What a branch flip costs: a replay on the recorded branch, the first call on the other
branch (re-recording), and later calls that switch between two recorded branches.

Run: ``python -m benchmarks.bench_retrace`` (writes benchmarks/RESULTS_retrace.md).
"""

import datetime
import os
import time
from pathlib import Path

import numpy as np

import jitad

from .measure import cpu_name, median_time


def branchy_rosenbrock(x):
    s = sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))
    return s if x[0] > 0 else 2 * s


def main():
    rows = []
    for n in (100, 1000, 10000):
        plus = np.full(n, 0.5)
        minus = -plus
        F = jitad.trace(branchy_rosenbrock, plus, compile=False)
        F.grad(plus)
        replay = median_time(lambda: F.grad(plus), 30)

        def first_flip():
            G = jitad.trace(branchy_rosenbrock, plus, compile=False)
            G.grad(plus)
            t0 = time.perf_counter()
            G.grad(minus)
            return time.perf_counter() - t0

        retrace = float(np.median([first_flip() for _ in range(5)]))
        F.grad(minus)  # both branches recorded now
        flip = median_time(lambda: (F.grad(plus), F.grad(minus)), 30) / 2
        rows.append(
            f"| {n} | {len(F.tape):,} | {replay * 1e6:.1f} | {retrace * 1e3:.2f} | {retrace / replay:.0f}x | "
            f"{flip * 1e6:.1f} | {flip / replay:.1f}x |"
        )
        print(rows[-1])
    cpu = cpu_name()
    Path(__file__).with_name("RESULTS_retrace.md").write_text(
        "\n".join(
            [
                "## A branch flip: re-recording vs replay",
                "",
                f"Measured {datetime.date.today()} on {cpu}, {os.cpu_count()} cores, load average "
                f"{os.getloadavg()[0]:.2f}; medians. `F.grad` of a Rosenbrock function with one guard "
                "(`if x[0] > 0`). *first flip*: the first call on the other branch records f again there. "
                "*switching*: both branches recorded; each call finds its tape by replaying the other's "
                "guard first when needed.",
                "",
                "| n | tape entries | replay (µs) | first flip (ms) | first flip / replay | switching (µs) | switching / replay |",
                "|---:|---:|---:|---:|---:|---:|---:|",
                *rows,
                "",
            ]
        )
    )


if __name__ == "__main__":
    main()
