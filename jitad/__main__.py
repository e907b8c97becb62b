"""``python -m jitad``: the seed examples and a timed 10^5-variable Rosenbrock gradient."""

import time

import numpy as np

import jitad
from jitad import Value


def seed_graph():
    print("1. A small graph: b = 5 - 3a, c = 7 + 5d, e = b c, f = 4e, o = d**2, g = 3f - o")
    with jitad.Tape():
        a, d = Value(2.0), Value(3.0)
        b = 5 - 3 * a
        c = 7 + 5 * d
        e = b * c
        f = 4 * e
        o = d**2
        g = 3 * f - o
        g.backward()
        print(f"   g = {g.data}, dg/da = {a.grad} (analytic -252 - 180 d = {-252 - 180 * d.data})")
        print(f"   dg/dd = {d.grad} (analytic 60 b - 2 d = {60 * b.data - 2 * d.data})")


def seed_function():
    print("2. f = (sin(x2) + 1) / (x2 + exp(x1)) + x1 x2 at x1 = 1.5, x2 = 0.5")
    with jitad.Tape() as tape:
        x1, x2 = Value(1.5), Value(0.5)
        s = x2.sin() + 1
        f = s / (x2 + x1.exp()) + x1 * x2
        f.backward()
        print(f"   f = {f.data:.16g}, df/dx1 = {x1.grad:.16g}, df/dx2 = {x2.grad:.16g} (expected 1.6165488003791766)")
        ds = jitad.gradients(f, [s])[0]
        print(
            f"   df/ds for the intermediate s = sin(x2) + 1: {ds:.16g} (analytic 1/(x2 + e^x1) = {1 / (0.5 + np.exp(1.5)):.16g})"
        )
        print(f"   the tape ({len(tape)} entries):")
        print("   " + tape.table().replace("\n", "\n   "))


def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def timed_rosenbrock(n=100_000):
    print(f"3. Rosenbrock in {n} variables")
    x0 = np.linspace(-1.2, 1.2, n)
    with jitad.Tape() as tape:
        t0 = time.perf_counter()
        x = [Value(v) for v in x0]
        y = rosenbrock(x)
        t1 = time.perf_counter()
        y.backward()
        t2 = time.perf_counter()
        g = np.array([v.grad for v in x])
        ops = len(tape)
    print(
        f"   eager: recorded {ops} entries in {t1 - t0:.3f} s ({(t1 - t0) / ops * 1e9:.0f} ns/entry), backward {(t2 - t1) * 1e3:.1f} ms"
    )
    t0 = time.perf_counter()
    F = jitad.trace(rosenbrock, x0)
    t1 = time.perf_counter()
    F.grad(x0)
    t2 = time.perf_counter()
    x1 = x0 + 0.01
    reps = 20
    for _ in range(reps):
        g1 = F.grad(x1)
    t3 = time.perf_counter()
    per = (t3 - t2) / reps
    print(f"   traced in {t1 - t0:.3f} s; first replayed gradient {(t2 - t1) * 1e3:.1f} ms (includes loading kernels)")
    print(f"   replayed gradient at a new point: {per * 1e3:.2f} ms ({per / ops * 1e9:.2f} ns/entry)")
    ref = _rosen_der(x1)
    print(f"   max relative error vs the analytic gradient: {np.max(np.abs(g1 - ref)) / np.max(np.abs(ref)):.1e}")
    assert np.allclose(g, _rosen_der(x0))


def _rosen_der(x):
    d = np.zeros_like(x)
    d[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    d[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return d


if __name__ == "__main__":
    seed_graph()
    seed_function()
    timed_rosenbrock()
