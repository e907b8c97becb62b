"""Sparse Hessians: jitad's F.hessian(x, sparse=True) against CasADi's SX hessian Function
(which detects sparsity and colours the graph itself) and jitad's dense F.hessian, on
Rosenbrock, median timing at fresh points in one process. jitad's sparse Hessian and
CasADi's are called alternately, at the same points, so that both see the same machine load
(on a shared machine a load change between two separate runs moves the ratio by 50%).

Run: .venv/bin/python -m benchmarks.bench_sparse [n ...]
"""

import sys
import time

import numpy as np

import jitad
from jitad import sparse

from .measure import cpu_name, median_time


def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(x.shape[0] - 1))


def casadi_hessian(n):
    import casadi

    x = casadi.SX.sym("x", n)
    H, _ = casadi.hessian(rosenbrock(x), x)
    return casadi.Function("H", [x], [H])


def row(n, repeats=2000):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(repeats, n))
    F = jitad.trace(rosenbrock, points[0], compile=False)
    H = casadi_hessian(n)
    # correctness first: the same matrix
    np.testing.assert_allclose(F.hessian(points[1], sparse=True).toarray(), np.array(H(points[1])), rtol=1e-13)
    t_sparse, t_casadi = alternately([lambda x: F.hessian(x, sparse=True), H], points)
    it = iter(range(10**9))
    t_dense = median_time(lambda: F.hessian(points[next(it) % repeats]), max(50, repeats // 10))
    colours = sparse.colour_columns(F.hessian_sparsity()).max() + 1
    return n, len(F.tape), colours, t_sparse, t_casadi, t_dense


def alternately(fns, points):
    """Median time of each fn over the points, the fns called in turn at each point."""
    times = np.empty((len(points), len(fns)))
    for k, x in enumerate(points):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(x)
            times[k, j] = time.perf_counter() - t0
    return np.median(times, axis=0)


def main(sizes):
    print(f"CPU: {cpu_name()}")
    print("| n | tape entries | colours | jitad sparse | CasADi SX hessian | jitad / CasADi | jitad dense |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        n, entries, colours, s, c, d = row(n)
        print(f"| {n} | {entries} | {colours} | {s * 1e6:.1f} µs | {c * 1e6:.1f} µs | {s / c:.2f}× | {d * 1e6:.0f} µs |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
