"""Measurements that need a fresh process; run as ``python -m benchmarks.probes KIND ...``
and print one JSON object.

``memory SYSTEM N MODE``: record (and then differentiate) Rosenbrock of N variables with
SYSTEM (jitad, micrograd, torch); MODE ``tracemalloc`` reports the Python-heap peak of the
recording and of the backward pass (not with a trailing ``record-only``), MODE ``rss`` the
growth of peak RSS over both.
``import``: seconds to ``import jitad``, then to the first eager gradient and the first
traced gradient of the seed graph (NUMBA_CACHE_DIR chooses the cache).
``jaxscalar [--first-only] [--cap S] NAME...``: JAX jit of the scalar-written workloads, one
JSON line each; in a child process so that an XLA compile that runs away can be killed
(a signal cannot interrupt it, and it keeps a core busy after a Python-level timeout).
"""

import json
import sys
import time


def _rss_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM; Linux >= 4.0). False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _recorder(system, n):
    """(record, backward, count) for Rosenbrock(n): record() -> graph, backward(graph)."""
    from . import adapters, workloads

    x0 = workloads.rosenbrock_x0(n).tolist()
    f = workloads.rosenbrock
    if system == "jitad":
        import jitad

        M = adapters.jitad_namespace()
        tape = jitad.Tape()

        def record():
            with tape:
                xs = [jitad.Value(v) for v in x0]
                return xs, f(xs, M)

        def backward(graph):
            graph[1].backward()

        def count(graph):
            return len(tape)

        return record, backward, count
    if system == "micrograd":
        from micrograd.engine import Value

        sys.setrecursionlimit(10_000_000)

        def record():
            xs = [Value(v) for v in x0]
            return xs, f(xs, None)

        def backward(graph):
            graph[1].backward()

        def count(graph):
            return adapters._count_micrograd(graph[1])[0]

        return record, backward, count
    if system == "torch":
        import torch

        M = adapters.torch_namespace()

        def record():
            xs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in x0]
            return xs, f(xs, M)

        def backward(graph):
            torch.autograd.grad(graph[1], graph[0])

        def count(graph):
            return adapters._count_torch(f, graph[0], M)  # on a separate recording (see there)

        return record, backward, count
    raise SystemExit(f"unknown system {system}")


def memory(system, n, mode, backward_traced=True):
    import gc
    import tracemalloc

    record, backward, count = _recorder(system, n)
    if system == "jitad":
        _jitad_warm()  # compile or load the backward kernel before anything is measured
    gc.collect()
    out = dict(system=system, n=n, mode=mode)
    if mode == "tracemalloc":
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        t = time.perf_counter()
        graph = record()
        out["record_s"] = time.perf_counter() - t
        cur, peak = tracemalloc.get_traced_memory()
        out["record_peak"] = peak - base
        out["record_held"] = cur - base
        if backward_traced:
            tracemalloc.reset_peak()
            t = time.perf_counter()
            backward(graph)
            out["backward_s"] = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            out["backward_peak"] = peak - base
        tracemalloc.stop()
    else:
        out["peak_reset"] = _reset_peak_rss()  # else the peak may be from imports
        before = _rss_now()
        t = time.perf_counter()
        graph = record()
        out["record_s"] = time.perf_counter() - t
        out["record_rss"] = _rss_now() - before
        t = time.perf_counter()
        backward(graph)
        out["backward_s"] = time.perf_counter() - t
        out["peak_rss_growth"] = _peak_rss() - before
    out["ops"] = count(graph)
    return out


def _jitad_warm():
    import jitad

    with jitad.Tape():
        x = jitad.Value(1.0)
        (x * x + 1).backward()


def first_gradient():
    t0 = time.perf_counter()
    import jitad
    import numpy as np

    t1 = time.perf_counter()
    from .workloads import seed

    M = jitad
    with jitad.Tape():
        xs = [jitad.Value(1.5), jitad.Value(0.5)]
        y = seed(xs, M)
        y.backward()
        g_eager = [xs[0].grad, xs[1].grad]
    t2 = time.perf_counter()
    out = dict(import_s=t1 - t0, first_eager_s=t2 - t1)
    if hasattr(jitad, "trace"):
        F = jitad.trace(lambda x: seed(x, M), np.array([1.5, 0.5]))
        g = F.grad(np.array([1.2, 0.7]))
        t3 = time.perf_counter()
        out["first_traced_s"] = t3 - t2
        out["traced_ok"] = bool(np.all(np.isfinite(g)))
    out["eager_ok"] = all(v == v for v in g_eager)
    return out


def jax_scalar(args):
    from . import adapters, measure, workloads

    first_only = "--first-only" in args
    cap = float(args[args.index("--cap") + 1]) if "--cap" in args else float("inf")
    names = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] != "--cap")]
    jax, jnp = adapters._jax()
    jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(x))))(jnp.ones(3)).block_until_ready()  # one-time costs
    slope = None
    for name in names:
        w = workloads.by_name(name)
        w.meta["ref_ops"] = _jitad_ops(w)
        a = adapters.JaxScalar()
        a.cap_s = float("inf")
        if slope is not None and slope * w.meta["ref_ops"] > cap:
            r = dict(system=a.key, workload=name, status="skipped", ops=w.meta["ref_ops"])
            r["reason"] = f"predicted {slope * w.meta['ref_ops']:.0f} s > {cap:.0f} s cap"
        elif first_only:
            t = time.perf_counter()
            p = a.prepare(w)
            _, g = p.grad(w.x0)
            first = time.perf_counter() - t
            _, ref = w.hand(w.x0, *w.hand_data)
            r = dict(system=a.key, workload=name, status="ok", first_s=first, compile_s=p.compile_s)
            r.update(ops=w.meta["ref_ops"], rel_err=measure.rel_error(g, ref))
            if w.meta["ref_ops"] >= 500:
                slope = first / w.meta["ref_ops"]
        else:
            r = measure.run_cell(a, w, limit_s=0)
            r.pop("prepared", None)
        print(json.dumps(r, default=float), flush=True)


def _jitad_ops(w):
    try:
        import jitad
    except ImportError:
        return 0
    from .adapters import jitad_namespace

    with jitad.Tape() as tape:
        w.f([jitad.Value(v) for v in w.x0.tolist()], jitad_namespace())
        return len(tape)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "jaxscalar":
        jax_scalar(sys.argv[2:])
        raise SystemExit(0)
    if kind == "memory":
        result = memory(sys.argv[2], int(sys.argv[3]), sys.argv[4], backward_traced=sys.argv[5:] != ["record-only"])
    elif kind == "import":
        result = first_gradient()
    else:
        raise SystemExit(f"unknown probe {kind}")
    print(json.dumps(result))
