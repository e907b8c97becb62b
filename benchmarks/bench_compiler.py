"""The compiler tier against the interpreter, hand-written Numba and CasADi: rerolled size,
compile time (cold, from the disk cache, from memory), and the gradient call.

Run: ``python -m benchmarks.bench_compiler [workload ...]`` (the measured table) and
``python -m benchmarks.bench_compiler small`` (the small-tape call: the seed graph's
``F.grad`` beside CasADi's ``buffer()`` call, interleaved). Each rewrites its own block of
benchmarks/RESULTS_compiler.md and keeps the text around it. It compiles into a fresh Numba
cache directory, so the cold column includes compiling the op formulas the generated code
calls.
"""

import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="jitad-bench-compiler-")  # before numba loads

import numba
import numpy as np

import jitad
from jitad import compiler

from . import workloads as W
from .adapters import CasadiSX, NumbaHand, Unavailable, jitad_namespace
from .measure import cpu_name, median_time

REPEATS = 200
BATCH = 64  # points per grad_batch
RESULTS = Path(__file__).with_name("RESULTS_compiler.md")


def _compile(program):
    return compiler.compile_program(
        program.op, program.a, program.b, program.const, program.value, program.inputs, program.params, program.outputs
    )


def row(w):
    M = jitad_namespace()
    F = jitad.trace(lambda x: w.f(x, M), w.x0, compile=False)
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
    # Batches (item 4), one thread: grad_batch per point against a loop over the hand-written
    # gradient; the compiled tier runs blocks of LANES points side by side.
    Xb = w.points(BATCH, seed=5)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        batch = {}
        C.value_and_grad_batch(Xb)  # starts compiling the batches' code
        assert C._tier.ready(C.tape).second(C.tape, wait=True) is not None
        for key, fn in (("batch_interp", F.value_and_grad_batch), ("batch_comp", C.value_and_grad_batch)):
            fn(Xb)
            batch[key] = median_time(lambda fn=fn: fn(Xb), 7) / BATCH
        assert np.array_equal(F.value_and_grad_batch(Xb)[1], C.value_and_grad_batch(Xb)[1])
    finally:
        numba.set_num_threads(threads)
    batch["batch_hand"] = median_time(lambda: [hand(x) for x in Xb], 7) / BATCH
    s = rr.summary()
    return {
        **batch,
        "label": w.label, "entries": len(p), "static": s["static"], "functions": c.summary.get("functions", 0),
        "reroll_s": reroll_s, "cold_s": cold_s, "disk_s": disk_s, "memory_s": memory_s, "first_s": first_s,
        "interp": interp, "comp": comp, "hand": hand_t, "casadi": cas_t, "identical": identical,
    }  # fmt: skip


def fmt_us(s):
    return "—" if math.isnan(s) else f"{s * 1e6:.1f}"


def _write_block(name, text):
    """Replace the block between ``<!-- bench_compiler:name -->`` and ``<!-- /bench_compiler:name -->``
    in RESULTS_compiler.md (appended when missing): the prose around it is kept."""
    start, end = f"<!-- bench_compiler:{name} -->", f"<!-- /bench_compiler:{name} -->"
    old = RESULTS.read_text() if RESULTS.exists() else ""
    block = f"{start}\n{text.strip()}\n{end}"
    if start in old and end in old:
        head, _, rest = old.partition(start)
        _, _, tail = rest.partition(end)
        new = head + block + tail
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    RESULTS.write_text(new)


def _machine(what):
    return (
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {cpu_name()}, {os.cpu_count()} cores shared with "
        f"other work (load average {os.getloadavg()[0]:.2f}); Python {sys.version.split()[0]}, Numba "
        f"{__import__('numba').__version__}. {what}"
    )


# --- the small-tape call (issue 13, item 5) ----------------------------------------------

ROUNDS = 40
CALLS = 2000


def _before(F):
    """F.value_and_grad as it was before the packed call (commit 8648ad9), for a side-by-side
    figure: the interpreter's 14-argument kernel, or the compiled tier's 10-argument
    value_and_grad, each through Numba's dispatcher, and the same Python checks."""
    from jitad import debug, kernels
    from jitad.trace import _as_vector, _flatten_params

    def value_and_grad(x, *args):
        F._scalar_output("value_and_grad")
        x = _as_vector(x, F._n)
        grad = np.empty(F._n)
        program = F._last
        w = F._work(program)
        out = program.out
        compiled = F._tier.get(program)
        p = _flatten_params(args, F._param_shapes)
        if compiled is not None:
            failed = compiled.value_and_grad(program, w, x, p, grad)
        else:
            failed = kernels.replay_value_and_grad(
                program.op, program.a, program.b, program.const, w.val, w.da, w.db, w.adj,
                program.inputs, program.params, out, x, p, grad,
            )  # fmt: skip
        if failed >= 0 or debug.enabled():
            raise RuntimeError("the seed graph has no guards")
        return float(w.val[out]), grad

    return value_and_grad


def small():
    """The seed graph's call, jitad's tiers and CasADi's ``buffer()`` interleaved: ROUNDS
    rounds, each timing CALLS calls of every contender at rotating points."""
    w = W.by_name("seed")
    M = jitad_namespace()
    interp = jitad.trace(lambda x: w.f(x, M), w.x0, compile=False)
    comp = jitad.trace(lambda x: w.f(x, M), w.x0, compile=True)
    comp.grad(w.x0)
    comp.grad(w.x0)  # the second call starts the compile
    comp._tier.wait()
    cas = CasadiSX()
    cas.check()
    prepared = cas.prepare(w)  # holds CasADi's buffer: keep it alive while timing
    points = w.points(CALLS, seed=3)
    contenders = {
        "CasADi SX `buffer()` call (copies x in, the gradient out)": prepared.grad,
        "`F.grad`, compiled tier": comp.grad,
        "`F.value_and_grad`, compiled tier": comp.value_and_grad,
        "`F.grad`, interpreter": interp.grad,
        "`F.value_and_grad`, interpreter": interp.value_and_grad,
        "before: compiled tier's `value_and_grad` through the dispatcher": _before(comp),
        "before: interpreter's 14-argument kernel through the dispatcher": _before(interp),
    }
    x = points[0]
    reference = interp.value_and_grad(x)
    for name, fn in contenders.items():
        out = fn(x)
        g = out[1] if isinstance(out, tuple) else out
        if "CasADi" not in name:
            assert np.array_equal(g, reference[1]), name  # every jitad path: the same bits
    times = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for k in range(CALLS):
                fn(points[k])
            times[name].append((time.perf_counter() - t0) / CALLS)
    base = np.median(times[next(iter(contenders))])
    base_min = np.min(times[next(iter(contenders))])
    lines = [
        "| call | median (µs) | fastest round (µs) | median / CasADi | fastest / CasADi's fastest |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in times.items():
        med, low = float(np.median(t)), float(np.min(t))
        lines.append(f"| {name} | {med * 1e6:.2f} | {low * 1e6:.2f} | {med / base:.2f}x | {low / base_min:.2f}x |")
    header = _machine(
        f"{ROUNDS} rounds; in each, {CALLS} calls of every row in turn at the same {CALLS} new points; the "
        "per-call time of a round, its median and fastest over the rounds. Every jitad row returns the same "
        "gradient bits. `python -m benchmarks.bench_compiler small` reproduces it."
    )
    text = "\n".join([header, "", *lines])
    _write_block("small", text)
    print(text)


def compile_breakdown():
    """Where a cold compile goes, stage by stage (formulas and call kernels already compiled)."""
    from jitad import codegen

    compiler.reroll(np.zeros(1, np.uint8), np.full(1, -1, np.int32), np.full(1, -1, np.int32))
    lines = [
        "| workload | tape entries | reroll (s) | emit (s) | IR lines | LLVM (s) | load (ms) | total (s) | second module (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    M = jitad_namespace()
    for name in ("rosen100000", "mlp", "gmm_l"):
        w = W.by_name(name)
        p = jitad.trace(lambda x: w.f(x, M), w.x0, compile=False).tape
        for c in compiler.generate(p.op, p.a, p.b, p.const, p.outputs, p.inputs, p.params)[1]:
            codegen.formula_ir(c, compiler.cache_dir() / "formulas")  # Numba's part, once per machine
        cells = []
        for exported in (codegen.FIRST, codegen.SECOND):
            program = (p.op, p.a, p.b, p.const, p.outputs, p.inputs, p.params)
            t0 = time.perf_counter()
            compiler.reroll(p.op, p.a, p.b)
            t1 = time.perf_counter()
            text, codes, _ = compiler.generate(*program, second=exported is codegen.SECOND)
            t2 = time.perf_counter()  # (generate rerolls again: emit = t2 - t1 - reroll)
            obj, symbols = codegen.build(text, codes, compiler.cache_dir() / "formulas", exported)
            t3 = time.perf_counter()
            codegen.Machine(obj, symbols, exported)
            t4 = time.perf_counter()
            if exported is codegen.FIRST:
                reroll_s = t1 - t0
                cells += [f"{reroll_s:.2f}", f"{t2 - t1 - reroll_s:.2f}", f"{text.count(chr(10)):,}"]
                cells += [f"{t3 - t2:.2f}", f"{(t4 - t3) * 1e3:.0f}", f"**{t4 - t1:.2f}**"]
            else:
                cells.append(f"{t4 - t1:.2f}")
        lines.append(f"| {w.label} | {len(p):,} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    header = _machine(
        "One cold compile of each module, stage by stage, with the op formulas and the call kernels already "
        "compiled; `python -m benchmarks.bench_compiler compile` reproduces it."
    )
    text = "\n".join([header, "", *lines])
    _write_block("compile", text)
    print(text)


def main(names):
    # Numba's compile of the rerolling kernel, once per machine, is not the workloads'
    compiler.reroll(np.zeros(1, np.uint8), np.full(1, -1, np.int32), np.full(1, -1, np.int32))
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
            "| CasADi SX (µs) | compiled / hand | compiled / CasADi | bit-identical "
            "| batch per point: interpreter / compiled / hand loop (µs) | batch compiled / hand |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['entries']:,} | {r['static']:,} in {r['functions']} functions | {r['reroll_s']:.2f} "
            f"| {r['cold_s']:.1f} | {r['disk_s']:.2f} | {r['memory_s'] * 1e3:.2f} | {r['first_s'] * 1e3:.1f} "
            f"| {fmt_us(r['interp'])} | {fmt_us(r['comp'])} | {fmt_us(r['hand'])} | {fmt_us(r['casadi'])} "
            f"| {r['comp'] / r['hand']:.1f}x | {r['comp'] / r['casadi']:.2f}x | {'yes' if r['identical'] else 'NO'} "
            f"| {fmt_us(r['batch_interp'])} / {fmt_us(r['batch_comp'])} / {fmt_us(r['batch_hand'])} "
            f"| {r['batch_comp'] / r['batch_hand']:.2f}x |"
        )
    header = _machine(
        f"Medians of {REPEATS} `value_and_grad` calls at new points; batches: medians of 7 "
        f"`value_and_grad_batch` calls of {BATCH} new points on one thread, per point; "
        "`python -m benchmarks.bench_compiler` reproduces it."
    )
    text = "\n".join([header, "", *lines])
    _write_block("table", text)
    print(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["small"]:
        small()
    elif sys.argv[1:] == ["compile"]:
        compile_breakdown()
    else:
        main(sys.argv[1:] or ["seed", "rosen1k", "mlp", "gmm_l"])
