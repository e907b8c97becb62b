"""Run the benchmark suite and write benchmarks/RESULTS.md, results.json and PNG plots.

    python -m benchmarks.run            # the full suite (~17 minutes on 2 cores)
    python -m benchmarks.run --quick    # smallest sizes, a few samples per cell (~3 minutes)

``smoke()`` runs every adapter once on the seed graph and returns the result rows.
"""

import os
import sys
import tempfile

if __name__ == "__main__":
    # A fresh Numba cache per run, set before Numba is imported, so that every run pays
    # (and reports) the same compile costs.
    _CACHE = tempfile.mkdtemp(prefix="jitad-bench-numba-")
    os.environ["NUMBA_CACHE_DIR"] = _CACHE

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from . import adapters as A  # noqa: E402
from . import workloads as W  # noqa: E402
from .measure import cpu_name, rel_error, run_cell, time_limit, timeit_loop  # noqa: E402
from .report import fmt_b, fmt_t, write_report  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVAL_LIMIT_S = 5.0  # skip a cell whose predicted time per gradient is above this


# --- small helpers -------------------------------------------------------------------------


def log(*args):
    print(*args, flush=True)


def machine():
    cpu = cpu_name()
    versions = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    for mod in ("jitad", "torch", "jax", "jaxlib", "casadi", "autograd", "micrograd"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        commit = ""
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    except OSError:
        load = []
    return dict(
        load=load,
        cpu=cpu,
        nproc=os.cpu_count(),
        numba_threads=numba.get_num_threads(),
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        platform=platform.platform(),
        versions=versions,
        commit=commit.strip(),
    )


def ref_ops(w):
    """The size of a workload: jitad's tape length when recorded eagerly."""
    try:
        import jitad
    except ImportError:
        return None
    M = A.jitad_namespace()
    with jitad.Tape() as tape:
        w.f([jitad.Value(v) for v in w.x0.tolist()], M)
        return len(tape)


# --- warm-up: one-time costs, reported, kept out of the per-workload first calls ---------------


def warm_up():
    out = {}
    t = time.perf_counter()
    try:
        import jitad

        out["import_jitad_s"] = time.perf_counter() - t
        M = A.jitad_namespace()
        t = time.perf_counter()
        with jitad.Tape():
            xs = [jitad.Value(1.5), jitad.Value(0.5)]
            W.seed(xs, M).backward()
        out["jitad_eager_kernels_s"] = time.perf_counter() - t
        if hasattr(jitad, "trace"):
            t = time.perf_counter()
            F = jitad.trace(lambda x: W.seed(x, M), np.array([1.5, 0.5]), compile=False)
            F.value_and_grad(np.array([1.0, 0.4]))
            out["jitad_replay_kernels_s"] = time.perf_counter() - t
            for name, call in (
                ("grad_batch", lambda: F.grad_batch(np.ones((4, 2)))),
                ("hvp", lambda: F.hvp(np.ones(2), np.ones(2))),
                ("hessian", lambda: F.hessian(np.ones(2))),
            ):
                if hasattr(F, name):
                    t = time.perf_counter()
                    try:
                        call()
                        out[f"jitad_{name}_kernels_s"] = time.perf_counter() - t
                    except Exception as e:  # noqa: BLE001
                        out[f"jitad_{name}_error"] = f"{type(e).__name__}: {e}"
        if hasattr(getattr(jitad, "TapeFunction", object), "compile"):
            # The compiled tier's own kernels (rerolling, calls, lanes) and the formulas of
            # every op the workloads use (the seed graph's, and maximum for the GMM): once
            # per machine, like the interpreter's kernels; the main table's compiles are then
            # the workloads' own.
            t = time.perf_counter()
            try:
                F = jitad.trace(lambda x: W.seed(x, M) + M.maximum(x[0], x[1]), np.array([1.5, 0.5])).compile()
                F.value_and_grad(np.array([1.0, 0.4]))
                F.grad_batch(np.ones((16, 2)))
                F.hvp(np.ones(2), np.ones(2))
                out["jitad_compiled_kernels_s"] = time.perf_counter() - t
            except Exception as e:  # noqa: BLE001
                out["jitad_compiled_error"] = f"{type(e).__name__}: {e}"
    except ImportError as e:
        out["jitad_error"] = str(e)
    for mod in ("torch", "jax", "casadi", "autograd", "micrograd.engine"):
        t = time.perf_counter()
        try:
            __import__(mod)
            out[f"import_{mod.split('.')[0]}_s"] = time.perf_counter() - t
        except ImportError:
            pass
    try:
        jax, jnp = A._jax()
        t = time.perf_counter()
        jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(x))))(jnp.ones(3)).block_until_ready()
        out["jax_first_jit_s"] = time.perf_counter() - t
    except A.Unavailable:
        pass
    return out


def compiled_cache():
    """Where the compiled tier caches its code in this run, and whether that is inside the
    run's own fresh Numba cache (so that its compiles are cold)."""
    try:
        from jitad import compiler
    except ImportError as e:
        return dict(error=str(e))
    d = compiler.cache_dir()
    root = A.JitadCompiled.purge_root
    inside = False
    if d is not None and root is not None:
        try:
            Path(d).resolve().relative_to(Path(root).resolve())
            inside = True
        except ValueError:
            pass
    return dict(dir=None if d is None else str(d), fresh=inside, purged_per_cell=inside)


# --- the main table --------------------------------------------------------------------------


def main_table(workloads, quick):
    rows = []
    cost = {}  # system -> seconds per reference op, from its last measured cell
    for w in workloads:
        log(f"== {w.label} ({w.meta.get('ref_ops')} ops)")
        for adapter in A.ADAPTERS:
            predicted = None
            if adapter.kind == "eager" and adapter.key in cost and w.meta.get("ref_ops"):
                predicted = cost[adapter.key] * w.meta["ref_ops"]
            if predicted is not None and predicted > EVAL_LIMIT_S:
                r = _skipped(
                    adapter,
                    w,
                    f"predicted {predicted:.0f} s per gradient ({cost[adapter.key] * 1e6:.1f} µs/op "
                    f"measured on the previous workload) > {EVAL_LIMIT_S:.0f} s limit",
                )
            elif adapter.key == "jax_scalar":
                r = jax_scalar_cell(w, A.JaxScalar.cap_s)
            else:
                r = run_cell(
                    adapter,
                    w,
                    budget_s=0.3 if quick else 1.0,
                    min_samples=1 if quick else 3,
                    max_samples=3 if quick else 200,
                    limit_s=120.0,
                )
            if r["status"] == "ok" and w.name != "seed" and w.meta.get("ref_ops"):
                cost[adapter.key] = r["median_s"] / w.meta["ref_ops"]
            if adapter.key == "casadi_jit" and r["status"] == "ok":
                A.CasadiJit.learn(r["prepared"].jit_s, w.meta.get("ref_ops"), f"measured on {w.label}")
            _log_row(r)
            rows.append(r)
    return rows


def _skipped(adapter, w, reason):
    from .measure import blank

    r = blank(adapter, w)
    r.update(status="skipped", reason=reason)
    return r


def _log_row(r):
    if r["status"] == "ok":
        log(
            f"  {r['system']:16} first {fmt_t(r['first_s']):>9}  median {fmt_t(r['median_s']):>9} "
            f"(n={r['samples']})  err {r['rel_err']:.1e}  mem {fmt_b(r['mem_bytes'])}"
        )
    else:
        log(f"  {r['system']:16} {r['status']}: {r['reason']}")


# --- section 5: first call vs size ----------------------------------------------------------


def first_call_sweep(quick):
    sizes = [10, 100, 1000] if quick else [10, 30, 100, 300, 1000, 3000, 10000]
    systems = [
        A.JitadReplay(),
        A.JitadCompiled(),
        A.CasadiSX(),
        A.CasadiJit(),
        A.JaxVec(),
        A.JitadEager(),
        A.TorchVec(),
    ]
    rows = []
    jax_cap = 5.0 if quick else 20.0  # the sweep only
    main_cap = A.CasadiJit.cap_s
    A.CasadiJit.cap_s = min(jax_cap, main_cap)  # the sweep only, like JAX's: restored below
    jax_slope = None
    try:
        A.JaxScalar().check()
        jax_sizes = [n for n in sizes if n <= 1000]
        jrows, timed_out, wall = _stream_probe(
            ["jaxscalar", "--first-only", "--cap", str(jax_cap), *(f"rosen{n}" for n in jax_sizes)],
            timeout=3 * jax_cap + 20,
        )
        for n in jax_sizes:
            jr = next((r for r in jrows if r.get("workload") == f"rosen{n}"), None)
            if jr is None:
                jr = dict(status="failed", reason="killed: over the sweep cap" if timed_out else "no result")
            jr.update(system="jax_scalar", n=n)
            rows.append(jr)
            if jr.get("first_s") and jr.get("ops", 0) >= 500:
                jax_slope = jr["first_s"] / jr["ops"]
        for n in sizes:
            if n not in jax_sizes:
                rows.append(dict(system="jax_scalar", n=n, status="skipped", reason="not tried above n=1000"))
    except A.Unavailable as e:
        rows += [dict(system="jax_scalar", n=n, status="unavailable", reason=str(e)) for n in sizes]
    for n in sizes:
        w = W.make_rosenbrock(n)
        w.meta["ref_ops"] = ref_ops(w)
        # A fresh Numba dispatcher per size, so its compile time is in every first call.
        hand = numba.njit(cache=False, error_model="numpy")(W.rosenbrock_hand.py_func)
        t = time.perf_counter()
        _, g_ref = hand(w.x0)
        rows.append(dict(system="numba", n=n, ops=w.meta["ref_ops"], first_s=time.perf_counter() - t, status="ok"))
        for a in systems:
            row = dict(system=a.key, n=n, ops=w.meta["ref_ops"], status="ok")
            try:
                a.check()
            except A.Unavailable as e:
                row.update(status="unavailable", reason=str(e))
                rows.append(row)
                continue
            reason = a.skip(w)
            if reason:
                row.update(status="skipped", reason=reason)
                rows.append(row)
                continue
            try:
                with time_limit(120):
                    t = time.perf_counter()
                    p = a.prepare(w)
                    _, g = p.grad(w.x0)
                    row["first_s"] = time.perf_counter() - t
                    row["compile_s"] = p.compile_s
                    row["jit_s"] = getattr(p, "jit_s", None)
                    row["note"] = p.note
                    row["rel_err"] = rel_error(g, g_ref)
                if a.key == "casadi_jit":
                    A.CasadiJit.learn(p.jit_s, w.meta["ref_ops"], f"measured on the Rosenbrock n={n} sweep")
                del p
            except Exception as e:  # noqa: BLE001
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:150]}")
            rows.append(row)
        log(
            f"  first call n={n}: "
            + ", ".join(f"{r['system']} {fmt_t(r.get('first_s'))}" for r in rows if r.get("n") == n)
        )
    if jax_slope is not None:
        A.JaxScalar.seconds_per_op = jax_slope
        A.JaxScalar.slope_source = "measured on the Rosenbrock sweep"
    A.CasadiJit.cap_s = main_cap
    return rows


# --- section 4: call latency on the seed graph ---------------------------------------------------


def seed_latency():
    w = W.make_seed()
    x = np.array([1.3, 0.6])
    out = {}
    out["numba"] = timeit_loop(lambda: w.hand(x))
    try:
        import jitad

        M = A.jitad_namespace()
        F = jitad.trace(lambda v: W.seed(v, M), w.x0, compile=False)
        out["jitad F.grad, interpreter"] = timeit_loop(lambda: F.grad(x))
        out["jitad F.value_and_grad, interpreter"] = timeit_loop(lambda: F.value_and_grad(x))
        out["jitad F(x), interpreter"] = timeit_loop(lambda: F(x))
        C = jitad.trace(lambda v: W.seed(v, M), w.x0).compile()
        out["jitad F.grad, compiled tier"] = timeit_loop(lambda: C.grad(x))
        out["jitad F.value_and_grad, compiled tier"] = timeit_loop(lambda: C.value_and_grad(x))
        out["jitad F(x), compiled tier"] = timeit_loop(lambda: C(x))
    except (ImportError, AttributeError) as e:
        out["jitad"] = str(e)
    for adapter, name in ((A.CasadiSX(), "casadi"), (A.CasadiJit(), "casadi jit")):
        try:
            adapter.check()
            p = adapter.prepare(w)
        except (A.Unavailable, RuntimeError) as e:
            out[name] = str(e)
            continue
        xin, fout, gout, trigger, _ = p.buffer

        def casadi_buffer(xin=xin, trigger=trigger, gout=gout):
            xin[:] = x
            trigger()
            return gout.copy()

        out[f"{name} buffer() (copy in, trigger, copy out)"] = timeit_loop(casadi_buffer)
        out[f"{name} buffer() trigger only"] = timeit_loop(trigger)
        if name == "casadi":
            out["casadi F(x) (DM call)"] = timeit_loop(lambda: p.F(x))
    try:
        p = A.JaxScalar().prepare(w)
        out["jax jit(value_and_grad) call"] = timeit_loop(lambda: p.grad(x))
    except A.Unavailable as e:
        out["jax"] = str(e)
    return out


# --- section 6: batches ------------------------------------------------------------------------


def _hand_loops(hand):
    """Two @njit loops calling the hand-written gradient for each row: serial and prange."""

    @numba.njit(cache=False)
    def serial(X, out, *data):
        for k in range(X.shape[0]):
            _, g = hand(X[k], *data)
            out[k] = g

    @numba.njit(cache=False, parallel=True)
    def parallel(X, out, *data):
        for k in numba.prange(X.shape[0]):
            _, g = hand(X[k], *data)
            out[k] = g

    return serial, parallel


def _timed(fn, X, repeat, budget_s=1.0):
    """Median seconds of fn(X) after one untimed call: ``repeat`` calls, or fewer (at least
    3) once they have taken ``budget_s``."""
    fn(X)
    ts = []
    start = time.perf_counter()
    while len(ts) < repeat and (len(ts) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn(X)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _one_thread(fn):
    def run(X):
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn(X)
        finally:
            numba.set_num_threads(saved)

    return run


def batch_workloads(quick):
    """(workload, batch sizes K) of section 6."""
    if quick:
        return [
            (W.make_rosenbrock(1000, "rosen1k"), [1, 8, 64, 512]),
            (W.make_mlp(100), [1, 8, 64]),
            (W.make_gmm(2, 5, 20, "gmm_xs"), [1, 8, 64]),
        ]
    return [
        (W.make_rosenbrock(1000, "rosen1k"), [1, 8, 64, 512, 2048]),
        (W.make_mlp(100), [1, 8, 64, 512]),
        (W.make_gmm(10, 25, 100, "gmm_l"), [1, 8, 64]),
    ]


def batch_one(w, Ks, quick):
    """Section 6 for one workload: one row (dict) per batch size K."""
    rng_seed = 5
    res = dict(name=w.name, label=w.label, n=w.n, rows=[], notes=[])
    repeat = 3 if quick else 7
    serial, parallel = _hand_loops(w.hand)
    data = w.hand_data
    C = F = None
    try:
        import jitad

        M = A.jitad_namespace()
        F = jitad.trace(lambda x: w.f(x, M), w.x0, compile=False)
        res["ops"] = len(F.tape)
        if not hasattr(F, "grad_batch"):
            res["notes"].append("jitad grad_batch not available yet")
            F = None
        elif hasattr(F, "compile"):
            t = time.perf_counter()
            C = jitad.trace(lambda x: w.f(x, M), w.x0).compile()
            res["compile_s"] = time.perf_counter() - t  # trace + compile (or load: cached by the main table)
            state = A.compiled_state(C)
            if state is not None and state[0] < state[1]:
                res["notes"].append("the compiled tier left a branch on the interpreter")
    except (ImportError, AttributeError) as e:
        res["notes"].append(f"jitad: {e}")
    jax_fn = None
    if w.vec is not None:
        try:
            jax, jnp = A._jax()
            vdata = tuple(jnp.asarray(d) if isinstance(d, np.ndarray) else d for d in w.vec_data)
            jax_fn = jax.jit(jax.vmap(jax.grad(lambda x: w.vec(x, jnp, *vdata))))
        except A.Unavailable as e:
            res["notes"].append(f"jax: {e}")
    for K in Ks:
        X = w.points(K, seed=rng_seed + K)
        G = np.empty((K, w.n))
        ref = np.array([w.hand(X[k], *data)[1] for k in range(K)])
        row = dict(K=K)
        row["numba loop"] = _timed(lambda X: serial(X, G, *data), X, repeat)
        row["numba prange"] = _timed(lambda X: parallel(X, G, *data), X, repeat)
        if C is not None:
            row["compiled grad_batch"] = _timed(C.grad_batch, X, repeat)
            row["compiled grad_batch, 1 thread"] = _timed(_one_thread(C.grad_batch), X, repeat)
            row["compiled err"] = rel_error(C.grad_batch(X), ref)
        if F is not None:
            row["interpreter grad_batch"] = _timed(F.grad_batch, X, repeat)
            row["interpreter grad_batch, 1 thread"] = _timed(_one_thread(F.grad_batch), X, repeat)
            row["interpreter err"] = rel_error(F.grad_batch(X), ref)
        if C is not None:
            row["compiled F.grad loop"] = _timed(lambda X: [C.grad(x) for x in X], X, repeat) if K <= 512 else None
        if jax_fn is not None:
            t = time.perf_counter()
            compiled = jax_fn.lower(jnp.asarray(X)).compile()
            row["jax compile"] = time.perf_counter() - t
            row["jax jit(vmap(grad))"] = _timed(lambda X: np.asarray(compiled(X)), X, repeat)
            row["jax err"] = rel_error(np.asarray(compiled(X)), ref)
        res["rows"].append(row)
        log(
            f"  batch {w.name} K={K}: "
            + ", ".join(f"{k} {fmt_t(v)}" for k, v in row.items() if k != "K" and "err" not in k)
        )
    res["F"] = F
    return res


def batches(quick):
    res = dict(workloads=[], blocks=[], notes=[])
    for w, Ks in batch_workloads(quick):
        res["workloads"].append(batch_one(w, Ks, quick))
    # The interpreter's block size (points decoded together), Rosenbrock n=1000, K=512; the
    # compiled tier's lanes always take 8 points side by side.
    first = res["workloads"][0]
    F = first.pop("F", None)
    for wl in res["workloads"]:
        wl.pop("F", None)
    if F is not None:
        K = 512
        X = W.make_rosenbrock(1000).points(K, seed=11)
        repeat = 3 if quick else 7
        threads = sorted({1, numba.config.NUMBA_NUM_THREADS})
        blocks = [1, 4, 16, 64] if quick else [1, 2, 4, 8, 16, 32, 64, 128]
        saved = numba.get_num_threads()
        try:
            for th in threads:
                numba.set_num_threads(th)
                for b in blocks + [None]:
                    try:
                        t = _timed(lambda X: F.grad_batch(X, block=b), X, repeat)
                    except TypeError:
                        res["notes"].append("grad_batch has no block argument")
                        break
                    res["blocks"].append(dict(threads=th, block=b, seconds=t))
        finally:
            numba.set_num_threads(saved)
        res["blocks_workload"] = first["label"]
    return res


# --- section 7: second order --------------------------------------------------------------------


def second_order(quick):
    out = dict(rows=[], hessian=[], notes=[])
    try:
        import jitad
    except ImportError:
        out["notes"].append("jitad not installed")
        return out
    M = A.jitad_namespace()
    ws = [W.make_rosenbrock(1000, "rosen1k")]
    ws += [W.make_gmm(2, 5, 20, "gmm_xs")] if quick else [W.make_mlp(100), W.make_gmm(10, 25, 100, "gmm_l")]
    for w in ws:
        F = jitad.trace(lambda x, f=w.f: f(x, M), w.x0, compile=False)
        if not hasattr(F, "hvp"):
            out["notes"].append("F.hvp not available yet")
            break
        x = w.points(1, seed=3)[0]
        v = np.random.default_rng(4).normal(size=w.n)
        # check H v against central differences of the hand-written gradient
        eps = 1e-6
        fd = (w.hand(x + eps * v, *w.hand_data)[1] - w.hand(x - eps * v, *w.hand_data)[1]) / (2 * eps)
        row = dict(workload=w.label, ops=len(F.tape))
        tiers = [("", F)]
        if hasattr(F, "compile"):
            tiers.append(("compiled_", jitad.trace(lambda x, f=w.f: f(x, M), w.x0).compile()))
        for prefix, G in tiers:
            tg = timeit_loop(lambda: G.grad(x), min_time=0.2, repeat=5)[0]
            th = timeit_loop(lambda: G.hvp(x, v), min_time=0.2, repeat=5)[0]
            row.update({f"{prefix}grad_s": tg, f"{prefix}hvp_s": th, f"{prefix}ratio": th / tg})
            row[f"{prefix}fd_err"] = rel_error(G.hvp(x, v), fd)
        if len(tiers) == 2:
            row["same_bits"] = bool(np.array_equal(tiers[0][1].hvp(x, v), tiers[1][1].hvp(x, v)))
        out["rows"].append(row)
    n = 100
    w = W.make_rosenbrock(n)
    x = w.points(1, seed=5)[0]
    H_ref = _rosen_hessian(x)
    F = jitad.trace(lambda x: W.rosenbrock(x, M), w.x0, compile=False)
    if hasattr(F, "hessian"):
        t = timeit_loop(lambda: F.hessian(x), min_time=0.2, repeat=3)[0]
        out["hessian"].append(
            dict(system="jitad F.hessian, interpreter", seconds=t, err=rel_error(F.hessian(x), H_ref))
        )
        tg = timeit_loop(lambda: F.grad(x), min_time=0.1, repeat=3)[0]
        out["hessian_grad_s"] = tg
        if hasattr(F, "compile"):
            C = jitad.trace(lambda x: W.rosenbrock(x, M), w.x0).compile()
            t = timeit_loop(lambda: C.hessian(x), min_time=0.2, repeat=3)[0]
            out["hessian"].append(
                dict(system="jitad F.hessian, compiled tier", seconds=t, err=rel_error(C.hessian(x), H_ref))
            )
            out["hessian_compiled_grad_s"] = timeit_loop(lambda: C.grad(x), min_time=0.1, repeat=3)[0]
    try:
        jax, jnp = A._jax()
        t0 = time.perf_counter()
        hj = jax.jit(jax.hessian(lambda x: W.rosenbrock_vec(x, jnp))).lower(jnp.asarray(x)).compile()
        compile_s = time.perf_counter() - t0
        t = timeit_loop(lambda: np.asarray(hj(x)), min_time=0.2, repeat=3)[0]
        out["hessian"].append(
            dict(
                system="JAX jit(hessian), vectorized",
                seconds=t,
                compile_s=compile_s,
                err=rel_error(np.asarray(hj(x)), H_ref),
            )
        )
    except A.Unavailable:
        pass
    try:
        ca = A._casadi()
        xs = ca.SX.sym("x", n)
        y = W.rosenbrock([xs[i] for i in range(n)], None)
        H, _ = ca.hessian(y, xs)
        Fh = ca.Function("h", [xs], [ca.densify(H)])  # the buffer holds dense column-major n x n
        hin = np.empty(n)
        hout = np.empty((n, n))
        buf, trigger = Fh.buffer()
        buf.set_arg(0, memoryview(hin))
        buf.set_res(0, memoryview(hout.reshape(-1)))

        def casadi_h():
            hin[:] = x
            trigger()
            return hout.T.copy()  # CasADi is column-major; the Hessian is symmetric anyway

        t = timeit_loop(casadi_h, min_time=0.2, repeat=3)[0]
        out["hessian"].append(dict(system="CasADi SX hessian, buffer()", seconds=t, err=rel_error(casadi_h(), H_ref)))
    except A.Unavailable:
        pass
    return out


def _rosen_hessian(x):
    n = x.size
    H = np.zeros((n, n))
    for i in range(n - 1):
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i + 1, i + 1] += 200
        H[i, i + 1] += -400 * x[i]
        H[i + 1, i] += -400 * x[i]
    return H


# --- sections 2 and 3: fresh processes -------------------------------------------------------------


def _probe(args, env=None, timeout=300):
    cmd = [sys.executable, "-m", "benchmarks.probes", *args]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
        return dict(error=f"exit {p.returncode}: {tail[0][:200]}", wall_s=wall)
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return dict(error=f"unreadable output: {p.stdout[-200:]}", wall_s=wall)
    out["wall_s"] = wall
    return out


def _stream_probe(args, timeout):
    """Run a probe that prints one JSON line per result; kill it after ``timeout`` seconds.
    Returns (results so far, timed_out, wall seconds)."""
    cmd = [sys.executable, "-m", "benchmarks.probes", *args]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timed_out = False
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
        timed_out = True
    rows = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    if not rows and not timed_out and p.returncode:
        tail = stderr.strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
        rows.append(dict(status="failed", reason=f"child process failed: {tail[0][:200]}"))
    return rows, timed_out, time.perf_counter() - t


def jax_scalar_cell(w, cap_s):
    """The JAX scalar-code cell, in a child process killed when trace + compile runs past the cap."""
    from .measure import blank

    adapter = A.JaxScalar()
    r = blank(adapter, w)
    try:
        adapter.check()
    except A.Unavailable as e:
        r.update(status="unavailable", reason=str(e))
        return r
    reason = adapter.skip(w)
    if reason:
        r.update(status="skipped", reason=reason)
        return r
    allowance = 20.0  # JAX import and the timing loop, on top of trace + compile
    rows, timed_out, wall = _stream_probe(["jaxscalar", w.name], timeout=cap_s + allowance)
    if rows:
        r.update({k: v for k, v in rows[0].items() if k in r})
    elif timed_out:
        r.update(
            status="failed",
            reason=f"trace + XLA compile did not finish within the {cap_s:.0f} s cap: child process killed "
            f"after {wall:.0f} s (JAX import included)",
        )
    return r


def memory_probes(quick):
    n = 10_000 if quick else 100_000
    small = n // 10
    out = dict(n=n, small=small, rows=[], notes=[])
    # micrograd and torch take 1.5-2 minutes each to record + differentiate n = 10^5 here (and
    # tracemalloc slows micrograd ~10x more), so they are measured at n/10; jitad at both.
    plan = [
        ("jitad", n, [["tracemalloc", n], ["rss", n]]),
        ("jitad", small, [["tracemalloc", small], ["rss", small]]),
        ("micrograd", small, [["tracemalloc", small, "record-only"], ["rss", small]]),
        ("torch", small, [["rss", small]]),
    ]
    for system, size_, runs in plan:
        row = dict(system=system, n=size_)
        for mode, size, *extra in runs:
            try:
                r = _probe(["memory", system, str(size), mode, *extra], timeout=300)
            except subprocess.TimeoutExpired:
                r = dict(error="timed out after 300 s")
            row[mode] = r
        log(f"  memory {system}: {row}")
        out["rows"].append(row)
    out["notes"].append(
        f"micrograd and PyTorch are measured at n={small}: recording and differentiating n={n} took 85 s "
        "(micrograd) and 135 s (PyTorch) per process in a trial run while the suite was being written (with a "
        "second benchmark process sharing the 2 cores), too long for this suite; bytes per op hardly depend on n (compare jitad's two rows)."
    )
    out["notes"].append("PyTorch allocates tensors in C++, invisible to tracemalloc: only its RSS columns are shown.")
    return out


def import_probes(quick):
    out = dict(rows=[])
    env = dict(os.environ)
    warm = tempfile.mkdtemp(prefix="jitad-bench-warm-")
    try:
        env["NUMBA_CACHE_DIR"] = warm
        first = _probe(["import"], env=env)  # populates the cache
        out["rows"].append(dict(cache="empty (first run fills it)", **first))
        for k in range(1 if quick else 3):
            out["rows"].append(dict(cache="warm", **_probe(["import"], env=env)))
        if not quick:
            cold = tempfile.mkdtemp(prefix="jitad-bench-cold-")
            env["NUMBA_CACHE_DIR"] = cold
            out["rows"].append(dict(cache="empty (second fresh dir)", **_probe(["import"], env=env)))
            shutil.rmtree(cold, ignore_errors=True)
        env["NUMBA_CACHE_DIR"] = warm
        env["JITAD_CACHE"] = "0"
        out["rows"].append(dict(cache="off (JITAD_CACHE=0)", **_probe(["import"], env=env)))
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    for r in out["rows"]:
        log(f"  import: {r}")
    return out


# --- plots -----------------------------------------------------------------------------------------


def plots(rows, sweep, batch, out=HERE):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    markers = "osD^v<>ph*XP"
    colors = plt.get_cmap("tab20").colors
    styles = {}
    for k, key in enumerate(a.key for a in A.ADAPTERS):
        styles[key] = dict(
            marker=markers[k % len(markers)], color=colors[(2 * k) % 20 if k < 10 else (2 * k + 1) % 20]
        )

    def per_system(value, name, ylabel, title):
        fig, ax = plt.subplots(figsize=(12.5, 6))
        drawn = False
        for a in A.ADAPTERS:
            pts = sorted(
                (r["ref_ops"], value(r))
                for r in rows
                if r["system"] == a.key and r["status"] == "ok" and r["ref_ops"]
            )
            if pts:
                drawn = True
                width = 2.2 if a.key.startswith("jitad") else 1
                ax.loglog(*zip(*pts), label=a.label, linewidth=width, alpha=0.85, **styles[a.key])
        if not drawn:
            plt.close(fig)
            return
        ax.set_xlabel("tape size: jitad tape entries of the workload (one point per main-table workload)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    per_system(
        lambda r: r["median_s"],
        "time_vs_ops.png",
        "median seconds per gradient at a new point",
        "Time per gradient vs graph size (all workloads)",
    )
    per_system(
        lambda r: r["median_s"] / r["ref_ops"] * 1e9,
        "ns_per_entry.png",
        "ns per tape entry (median gradient time / jitad tape entries)",
        "Cost per tape entry vs tape size, one line per system (main table)",
    )

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for key in sorted({r["system"] for r in sweep}):
        pts = sorted((r["ops"], r["first_s"]) for r in sweep if r["system"] == key and r.get("first_s"))
        if pts:
            ax.loglog(*zip(*pts), marker="o", label=key)
    if sweep:
        ax.set_xlabel("ops (Rosenbrock, jitad tape entries)")
        ax.set_ylabel("seconds to the first gradient (trace/compile included)")
        ax.set_title("First-call latency vs size (Rosenbrock n = 10 … 10^4)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "first_call.png", dpi=110)
        files.append("first_call.png")
    plt.close(fig)

    wls = [wl for wl in (batch or {}).get("workloads", []) if wl.get("rows")]
    if wls:
        fig, axes = plt.subplots(1, len(wls), figsize=(5.5 * len(wls), 5), squeeze=False)
        for ax, wl in zip(axes[0], wls):
            keys = [k for k in wl["rows"][0] if k not in ("K", "jax compile") and "err" not in k]
            for key in keys:
                pts = [(r["K"], r["K"] / r[key]) for r in wl["rows"] if r.get(key)]
                if pts:
                    ax.loglog(*zip(*pts), marker="o", label=key)
            ax.set_xlabel("batch size K (points)")
            ax.set_ylabel("gradients per second")
            ax.set_title(wl["label"], fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Batched gradients")
        fig.tight_layout()
        fig.savefig(out / "batch_throughput.png", dpi=110)
        plt.close(fig)
        files.append("batch_throughput.png")
    return files


# --- the report ----------------------------------------------------------------------------------------


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "prepared"} for r in rows]


def smoke():
    """Every adapter once on the seed graph, or on Rosenbrock n=10 for the vectorized ones
    (1 sample, no files written); returns one row (dict) per adapter.

    Each row has ``system``, ``workload``, ``status`` ("ok", "unavailable" when a peer is
    not installed, "failed"), ``reason``, ``median_s`` and ``rel_err`` (max relative error
    against the hand-written gradient).
    """
    seed = W.make_seed()
    small = W.make_rosenbrock(10)
    for w in (seed, small):
        w.meta["ref_ops"] = ref_ops(w)
    rows = []
    for a in A.ADAPTERS:
        w = seed if a.skip(seed) is None else small
        rows.append(run_cell(a, w, budget_s=0.0, min_samples=1, max_samples=1, limit_s=120.0))
    return _strip(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smallest sizes, 1 sample per cell")
    ap.add_argument("--out", default=str(HERE), help="directory for RESULTS.md, results.json and the plots")
    ap.add_argument(
        "--skip", default="", help="comma-separated sections to skip: sweep,table,latency,batch,second,memory,import"
    )
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        A.JaxScalar.cap_s = 10.0
        A.CasadiJit.cap_s = 3.0  # the small workloads only (Rosenbrock n=1000 compiles in ~15 s)
    if "_CACHE" in globals():
        A.JitadCompiled.purge_root = _CACHE  # every compile in the sweep and the main table is cold
    t_start = time.perf_counter()
    info = machine()
    log(f"jitad benchmarks on {info['cpu']} ({info['nproc']} CPUs), {info['date']}")
    results = dict(machine=info, quick=args.quick, numba_cache=os.environ.get("NUMBA_CACHE_DIR"))
    log("== warm-up")
    results["warmup"] = warm_up()
    log(f"  {results['warmup']}")
    results["compiled_cache"] = compiled_cache()
    results["casadi_jit"] = dict(flags=list(A.CasadiJit.flags), cap_s=A.CasadiJit.cap_s)
    results["jax_scalar_cap_s"] = A.JaxScalar.cap_s
    log(f"  compiled tier's cache: {results['compiled_cache']}")
    if "sweep" not in skip:
        log("== first call vs size (Rosenbrock)")
        results["sweep"] = first_call_sweep(args.quick)
    workloads = W.suite(args.quick)
    for w in workloads:
        w.meta["ref_ops"] = ref_ops(w)
    rows = []
    if "table" not in skip:
        rows = main_table(workloads, args.quick)
    results["table"] = _strip(rows)
    results["workloads"] = [dict(name=w.name, label=w.label, n=w.n, ref_ops=w.meta.get("ref_ops")) for w in workloads]
    if "latency" not in skip:
        log("== seed-graph call latency")
        results["latency"] = seed_latency()
        log(f"  {results['latency']}")
    if "batch" not in skip:
        log("== batches")
        results["batch"] = batches(args.quick)
    if "second" not in skip:
        log("== second order")
        results["second"] = second_order(args.quick)
        log(f"  {results['second']}")
    if "memory" not in skip:
        log("== memory while recording (fresh processes)")
        results["memory"] = memory_probes(args.quick)
    if "import" not in skip:
        log("== import + first gradient (fresh processes)")
        results["import"] = import_probes(args.quick)
    results["total_s"] = time.perf_counter() - t_start
    try:
        with open("/proc/loadavg") as f:
            results["machine"]["load_end"] = f.read().split()[:3]
    except OSError:
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(rows, results.get("sweep", []), results.get("batch", {}), out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "RESULTS.md").write_text(write_report(results))
    log(f"wrote {out / 'RESULTS.md'} in {results['total_s']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(_CACHE, ignore_errors=True)
