"""The compiler tier against the interpreter, hand-written Numba and CasADi: rerolled size,
compile time (cold, from the disk cache, from memory), and the gradient call.

Run: ``python -m benchmarks.bench_compiler`` (writes benchmarks/RESULTS_compiler.md). It
compiles into a fresh Numba cache directory, so the cold column includes compiling the op
formulas the generated code calls.
"""

import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="jitad-bench-compiler-")  # before numba loads

import numpy as np

import jitad
from jitad import compiler

from . import workloads as W
from .adapters import CasadiSX, NumbaHand, Unavailable, jitad_namespace
from .measure import cpu_name, median_time

REPEATS = 200


def _compile(program):
    return compiler.compile_program(
        program.op, program.a, program.b, program.const, program.value, program.inputs, program.params, program.outputs
    )


def row(w):
    M = jitad_namespace()
    F = jitad.trace(lambda x: w.f(x, M), w.x0)
    p = F.tape
    t0 = time.perf_counter()
    rr = compiler.reroll(p.op, p.a, p.b)
    reroll_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = _compile(p)
    cold_s = time.perf_counter() - t0
    compiler._MEMORY.clear()
    t0 = time.perf_counter()
    _compile(p)
    disk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _compile(p)
    memory_s = time.perf_counter() - t0
    C = jitad.trace(lambda x: w.f(x, M), w.x0, compile=True)
    t0 = time.perf_counter()
    C.value_and_grad(w.x0)  # the first call runs on the interpreter while the tier compiles
    first_s = time.perf_counter() - t0
    C._tier.wait()
    points = w.points(REPEATS, seed=3)
    it = iter(np.concatenate([points, points]))
    interp = median_time(lambda: F.value_and_grad(next(it)), REPEATS)
    it = iter(np.concatenate([points, points]))
    comp = median_time(lambda: C.value_and_grad(next(it)), REPEATS)
    x = points[0]
    vi, gi = F.value_and_grad(x)
    vc, gc = C.value_and_grad(x)
    identical = vi == vc and np.array_equal(gi, gc)
    hand = NumbaHand().prepare(w).grad
    hand(x)
    it = iter(np.concatenate([points, points]))
    hand_t = median_time(lambda: hand(next(it)), REPEATS)
    try:
        cas = CasadiSX()
        cas.check()
        prepared = cas.prepare(w)  # holds CasADi's buffer: keep it alive while timing
        cg = prepared.grad
        cg(x)
        it = iter(np.concatenate([points, points]))
        cas_t = median_time(lambda: cg(next(it)), REPEATS)
    except Unavailable:
        cas_t = float("nan")
    s = rr.summary()
    return {
        "label": w.label, "entries": len(p), "static": s["static"], "functions": c.summary.get("functions", 0),
        "reroll_s": reroll_s, "cold_s": cold_s, "disk_s": disk_s, "memory_s": memory_s, "first_s": first_s,
        "interp": interp, "comp": comp, "hand": hand_t, "casadi": cas_t, "identical": identical,
    }  # fmt: skip


def fmt_us(s):
    return "—" if math.isnan(s) else f"{s * 1e6:.1f}"


def main(names):
    rows = []
    for name in names:
        w = W.by_name(name)
        r = row(w)
        rows.append(r)
        print(r, flush=True)
    lines = [
        (
            "| workload | tape entries | rerolled (entries in code) | reroll (s) | compile cold (s) | from disk (s) "
            "| from memory (ms) | first call, compile=True (ms) | interpreter (µs) | compiled (µs) | hand Numba (µs) "
            "| CasADi SX (µs) | compiled / hand | compiled / CasADi | bit-identical |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['entries']:,} | {r['static']:,} in {r['functions']} functions | {r['reroll_s']:.2f} "
            f"| {r['cold_s']:.1f} | {r['disk_s']:.2f} | {r['memory_s'] * 1e3:.2f} | {r['first_s'] * 1e3:.1f} "
            f"| {fmt_us(r['interp'])} | {fmt_us(r['comp'])} | {fmt_us(r['hand'])} | {fmt_us(r['casadi'])} "
            f"| {r['comp'] / r['hand']:.1f}x | {r['comp'] / r['casadi']:.2f}x | {'yes' if r['identical'] else 'NO'} |"
        )
    header = (
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {cpu_name()}, {os.cpu_count()} cores shared with "
        f"other work (load average {os.getloadavg()[0]:.2f}); Python {sys.version.split()[0]}, Numba "
        f"{__import__('numba').__version__}. Medians of {REPEATS} `value_and_grad` calls at new points; "
        "`python -m benchmarks.bench_compiler` reproduces it."
    )
    text = "\n".join(["## Compiled tier: measured", "", header, "", *lines, ""])
    Path(__file__).with_name("RESULTS_compiler.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:] or ["seed", "rosen1k", "mlp", "gmm_l"])
