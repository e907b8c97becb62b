"""Eager mode against micrograd, in one process: micrograd's own training loop (its nn.py
MLP(2, [16, 16, 1]) on 100 moons, SVM loss + L2, ``p.data -= lr * p.grad``) on the default
tape, Rosenbrock n=1000 recorded and swept in a loop, and the seeds' 20-op graph.

    python -m benchmarks.bench_eager [--steps 40] [--label after]

Run it with ``PYTHONPATH`` pointing at another checkout of jitad to measure that one
(``--label before``); the table it prints goes into benchmarks/RESULTS_eager.md.
"""

import argparse
import random
import sys
import time

import numpy as np

import jitad
from jitad import Value

from .measure import cpu_name, median_time

sys.setrecursionlimit(100_000)  # micrograd's topological sort recurses


def set_data(p, x):
    try:
        p.data = x
    except AttributeError:  # jitad before settable leaves: the workaround the issue used
        p._data = x


def mlp(V, sizes):
    """micrograd's MLP as (parameters, forward): neurons of ReLU(w . x + b), linear last layer."""
    layers = [[([V(random.uniform(-1, 1)) for _ in range(m)], V(0)) for _ in range(n)] for m, n in zip(sizes, sizes[1:])]

    def forward(x):
        for k, layer in enumerate(layers):
            acts = [sum((w * xi for w, xi in zip(ws, x)), b) for ws, b in layer]
            x = [a.relu() for a in acts] if k < len(layers) - 1 else acts
        return x[0]

    params = [p for layer in layers for ws, b in layer for p in ws + [b]]
    return params, forward


def moons(n, seed=1):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    X = np.where(upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    return (X + rng.normal(0, 0.1, X.shape)).tolist(), np.where(upper, 1, -1).tolist()


def training(V, steps):
    """Seconds per step of micrograd's demo loop, and what the tape held after each step."""
    X, y = moons(100)
    random.seed(1337)
    params, forward = mlp(V, [2, 16, 16, 1])
    times, held = [], []
    for k in range(steps):
        t0 = time.perf_counter()
        scores = [forward(list(map(V, x))) for x in X]
        losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores)]
        loss = sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for p in params)
        for p in params:
            p.grad = 0
        loss.backward()
        for p in params:
            set_data(p, p.data - (1.0 - 0.9 * k / 100) * p.grad)
        times.append(time.perf_counter() - t0)
        held.append(len(jitad.tape.active()) if V is Value else 0)
    return times, held


def rosenbrock(V, n=1000):
    x0 = np.linspace(-1.2, 1.2, n).tolist()

    def run():
        x = [V(v) for v in x0]
        y = sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(n - 1))
        y.backward()

    return run


def seed_graph(V):
    def run():
        a, o = V(2.0), V(1.0)
        b = 5 + -3 * a
        c = 2 * b + 3
        d = 5 * b + 6
        e = 7 * c + d**2
        f = 2 * e
        g = 3 * f + -o
        g.backward()

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--label", default="this checkout")
    args = ap.parse_args()
    from micrograd.engine import Value as Micro

    ours, held = training(Value, args.steps)
    theirs, _ = training(Micro, 3)
    entries = 65_579  # recorded per step (params, data leaves and ops), as counted on a fresh tape
    early, late = np.median(ours[1:6]), np.median(ours[-5:])
    rj, rm = median_time(rosenbrock(Value), 9), median_time(rosenbrock(Micro), 3)
    sj, sm = median_time(seed_graph(Value), 2000), median_time(seed_graph(Micro), 2000)
    print(f"jitad: {args.label} ({jitad.__file__}); {cpu_name()}; {time.strftime('%Y-%m-%d')}")
    print("| measure | jitad | micrograd | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| training step, steps 1-5 | {early * 1e3:.1f} ms | {min(theirs) * 1e3:.0f} ms | {min(theirs) / early:.1f}x |")
    print(f"| training step, last 5 of {args.steps} | {late * 1e3:.1f} ms | | {min(theirs) / late:.1f}x |")
    print(f"| per op in training, last 5 steps | {late / entries * 1e9:.0f} ns | {min(theirs) / entries * 1e9:.0f} ns | |")
    print(f"| tape entries held after step 1 / last step | {held[0]:,} / {held[-1]:,} | | |")
    print(f"| Rosenbrock n=1000, record + backward | {rj * 1e3:.2f} ms | {rm * 1e3:.1f} ms | {rm / rj:.1f}x |")
    print(f"| seed graph (20 ops), record + backward | {sj * 1e6:.1f} µs | {sm * 1e6:.1f} µs | {sm / sj:.1f}x |")


if __name__ == "__main__":
    main()
