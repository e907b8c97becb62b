"""Cold and warm start, each step in a fresh process: `import jitad`, then the first
gradient, grad_batch, hvp and hessian of Rosenbrock (n = 100), with an empty kernel cache
(cold) and with the cache the cold run filled (warm), in wall-clock and in the process's CPU
time (what a quiet machine would take: compiling is single-threaded). Also the compile time
of each kernel (Numba's compile events) in the cold run. `python -m benchmarks.cold_start` prints Markdown."""

import json
import os
import subprocess
import sys
import tempfile

_STEPS = r"""
import json, sys, time
t = {}
cpu = {}
t0 = time.perf_counter()
c0 = time.process_time()
from numba.core import event
import numpy as np
import jitad
t["import jitad"] = time.perf_counter() - t0
cpu["import jitad"] = time.process_time() - c0
compiles = {}

class Listener(event.Listener):
    def on_start(self, ev):
        self.start = getattr(self, "start", {})
        self.start[id(ev.data["dispatcher"])] = time.perf_counter()
    def on_end(self, ev):
        d = ev.data["dispatcher"]
        name = d.py_func.__name__
        compiles[name] = compiles.get(name, 0.0) + time.perf_counter() - self.start.pop(id(d))

event.register("numba:compile", Listener())

def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))

x = np.linspace(-1, 1, 100)
def step(name, fn):
    s, c = time.perf_counter(), time.process_time()
    fn()
    t[name], cpu[name] = time.perf_counter() - s, time.process_time() - c
step("first gradient (trace + grad)", lambda: jitad.grad(rosen)(x))
F = jitad.trace(rosen, x)
step("first grad_batch (1000 points)", lambda: F.grad_batch(np.tile(x, (1000, 1))))
step("first hvp", lambda: F.hvp(x, x))
step("first hessian", lambda: F.hessian(x))
t["total"] = time.perf_counter() - t0
cpu["total"] = time.process_time() - c0
print(json.dumps({"steps": t, "cpu": cpu, "compiles": compiles}))
"""


def run(cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", _STEPS], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    cache = tempfile.mkdtemp(prefix="jitad-cold-")
    cold = run(cache)
    warm = run(cache)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| step (fresh process) | cold: empty kernel cache | cold, CPU time | warm: cache filled | warm, CPU time |")
    print("|---|---:|---:|---:|---:|")
    for step in cold["steps"]:
        print(
            f"| {step} | {cold['steps'][step]:.2f} s | {cold['cpu'][step]:.2f} s "
            f"| {warm['steps'][step]:.2f} s | {warm['cpu'][step]:.2f} s |"
        )
    print("\n| kernel compiled in the cold run (incl. kernels it calls) | seconds |")
    print("|---|---:|")
    for name, s in sorted(cold["compiles"].items(), key=lambda kv: -kv[1]):
        if s >= 0.05:
            print(f"| `{name}` | {s:.2f} |")


if __name__ == "__main__":
    main()
