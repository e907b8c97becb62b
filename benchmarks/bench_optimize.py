"""Does tape optimization pay for itself? Time ``optimize`` and the replayed gradient
before and after on a few workloads; the break-even is optimize time / time saved per call.

Run: ``python -m benchmarks.bench_optimize`` (writes benchmarks/RESULTS_optimize.md).
"""

import datetime
import os
import platform
from pathlib import Path

import numpy as np

import jitad
from jitad.optimize import optimize

from .measure import cpu_name, median_time


def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def pairwise_energy(x):
    # Lennard-Jones-like energy of points on a line, written as people write it: each
    # distance is computed twice (i<j and j<i), and a debug term is never used.
    n = len(x)
    e = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                r2 = (x[i] - x[j]) ** 2 + 1.0
                e = e + 0.5 * (1 / r2**6 - 1 / r2**3)
    unused = sum(jitad.exp(v) for v in x)  # noqa: F841
    return e


def springs(x):
    # A chain of springs in the plane, with a stretch penalty written as a second loop
    # that recomputes every length: the common subexpressions CSE is for.
    n = len(x) // 2
    e = 0
    for i in range(n - 1):
        dx, dy = x[2 * i + 2] - x[2 * i], x[2 * i + 3] - x[2 * i + 1]
        e = e + (jitad.sqrt(dx * dx + dy * dy) - 1) ** 2
    for i in range(n - 1):
        dx, dy = x[2 * i + 2] - x[2 * i], x[2 * i + 3] - x[2 * i + 1]
        e = e + 0.1 * jitad.relu(jitad.sqrt(dx * dx + dy * dy) - 1.2)
    return e


WORKLOADS = [
    ("Rosenbrock n=1000", rosenbrock, 1000),
    ("pairwise energy n=60", pairwise_energy, 60),
    ("springs n=2000", springs, 2000),
]


def main():
    rows = []
    for name, f, n in WORKLOADS:
        x = np.random.default_rng(0).uniform(0.1, 1.0, n)
        F = jitad.trace(f, x, compile=False)
        G = jitad.trace(f, x, optimize=True, compile=False)
        np.testing.assert_allclose(F.grad(x), G.grad(x), rtol=1e-12, atol=1e-12)
        t_opt = median_time(lambda: optimize(F.tape), 5)
        t_before = median_time(lambda: F.grad(x), 50)
        t_after = median_time(lambda: G.grad(x), 50)
        saved = t_before - t_after
        breakeven = f"{t_opt / saved:,.0f}" if saved > 0 else "never"
        rows.append(
            f"| {name} | {len(F.tape):,} | {len(G.tape):,} | {t_opt * 1e3:.2f} | {t_before * 1e6:.1f} | "
            f"{t_after * 1e6:.1f} | {breakeven} |"
        )
        print(rows[-1])
    cpu = cpu_name()
    text = "\n".join(
        [
            "## Tape optimization: break-even",
            "",
            f"Measured {datetime.date.today()} on {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            "medians of 5 (optimize) and 50 (gradient) runs.",
            "",
            "| workload | entries | after optimize | optimize (ms) | grad before (µs) | grad after (µs) | break-even (replays) |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    Path(__file__).with_name("RESULTS_optimize.md").write_text(text)


if __name__ == "__main__":
    main()
