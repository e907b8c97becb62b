"""Dask: batched evaluation over chunked arrays and many optimizations, on Dask's threads
and on a real two-process ``LocalCluster``, compared with the same work done in-process."""

import threading

import numpy as np
import pytest

import jitad

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")
jd = pytest.importorskip("jitad.dask")


def rosen(x, w):
    """Weighted Rosenbrock with a guarded branch: points with x[0] <= 0 need another tape."""
    s = 0.0
    for i in range(len(x) - 1):
        s = s + w[i] * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2
    if x[0] > 0:
        return s + jitad.sin(x[0])
    return s - x[0] ** 3


def spiral(x):
    """Two outputs, with a branch."""
    r = jitad.hypot(x[0], x[1])
    return [r * jitad.cos(x[2]), r * x[2] if x[2] > 0 else -r * x[2]]


N = 6
W = np.linspace(0.5, 2.0, N - 1)
RNG = np.random.default_rng(42)
X = RNG.normal(size=(500, N))  # both signs of x[0]: both branches


def traced(f=rosen, *args):
    args = args or ((W,) if f is rosen else ())
    return jitad.trace(f, np.full(N if f is rosen else 3, 0.5), *args)


def chunked(X, rows=64):
    return da.from_array(X, chunks=(rows, 4))  # columns split too: jitad.dask rechunks them


@pytest.fixture(scope="module")
def client():
    traced().grad_batch(X, W)  # compile into the shared cache first: workers load it
    traced().hvp(X[0], X[1], W)
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


# --- Dask's threads (no cluster) -------------------------------------------------------------


@pytest.fixture
def threads():
    with dask.config.set(scheduler="threads"):
        yield


def test_batches_on_threads_equal_in_process(threads):
    want_v, want_g = traced().value_and_grad_batch(X, W)
    F = traced()
    values, grads = jd.value_and_grad_batch(F, chunked(X), W)
    assert isinstance(values, da.Array) and values.shape == (500,) and grads.shape == (500, N)
    got_v, got_g = dask.compute(values, grads)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_g, want_g)
    np.testing.assert_array_equal(jd.grad_batch(F, chunked(X, 100), W).compute(), want_g)
    np.testing.assert_array_equal(jd.batch(F, chunked(X, 7), W).compute(), want_v)


def test_numpy_and_integer_points(threads):
    F = traced()
    Xi = np.arange(24).reshape(4, N) - 10
    np.testing.assert_array_equal(jd.batch(F, Xi, W).compute(), traced().batch(Xi.astype(float), W))


def test_vector_outputs(threads):
    F = traced(spiral)
    X3 = X[:, :3]
    got = jd.batch(F, chunked(X3, 50)).compute()
    assert got.shape == (500, 2)
    np.testing.assert_array_equal(got, traced(spiral).batch(X3))
    with pytest.raises(ValueError, match="one Value output"):
        jd.grad_batch(F, chunked(X3))


def test_parameters_per_point(threads):
    WK = RNG.uniform(0.5, 2.0, size=(500, N - 1))
    want = traced().grad_batch(X, WK)
    F = traced()
    np.testing.assert_array_equal(jd.grad_batch(F, chunked(X), WK).compute(), want)
    np.testing.assert_array_equal(jd.grad_batch(F, chunked(X), da.from_array(WK, chunks=(77, 2))).compute(), want)
    with pytest.raises(ValueError, match="parameter 0 has shape"):
        jd.grad_batch(F, chunked(X), np.ones(3))
    with pytest.raises(ValueError, match="parameter 0 has shape"):
        jd.grad_batch(F, chunked(X), da.ones((500, 4)))
    with pytest.raises(TypeError, match="real numbers"):
        jd.grad_batch(F, chunked(X), da.ones((500, 5), dtype=complex))
    with pytest.raises(ValueError, match="gives 499 points"):
        jd.grad_batch(F, chunked(X), WK[1:])
    with pytest.raises(TypeError, match="expected 1 extra"):
        jd.grad_batch(F, chunked(X))


def test_bad_points():
    F = traced()
    with pytest.raises(ValueError, match=r"shape \(K, 6\)"):
        jd.grad_batch(F, da.ones((10, 5)), W)
    with pytest.raises(ValueError, match=r"shape \(K, 6\)"):
        jd.grad_batch(F, da.ones(6), W)
    with pytest.raises(TypeError, match="real numbers"):
        jd.grad_batch(F, da.ones((10, 6), dtype=complex), W)


def test_minimize_many_on_threads(threads):
    from scipy.optimize import minimize

    X0 = RNG.uniform(0.1, 2.0, size=(4, N))
    results = jd.minimize_many(rosen, X0, args=(W,), options={"maxiter": 200})
    assert len(results) == 4
    for x0, res in zip(X0, results):
        want = minimize(
            jitad.value_and_grad(rosen), x0, jac=True, args=(W,), method="L-BFGS-B", options={"maxiter": 200}
        )
        np.testing.assert_array_equal(res.x, want.x)
        assert res.nfev == want.nfev


# --- a two-process LocalCluster -------------------------------------------------------------


def test_cluster_batches_equal_in_process(client):
    want_v, want_g = traced().value_and_grad_batch(X, W)
    F = traced()
    values, grads = jd.value_and_grad_batch(F, chunked(X), W)
    got_v, got_g = dask.compute(values, grads)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_g, want_g)
    assert F.retraces == 0  # the branches were recorded on the workers, not here
    F3 = traced(spiral)
    np.testing.assert_array_equal(jd.batch(F3, chunked(X[:, :3])).compute(), traced(spiral).batch(X[:, :3]))


def test_cluster_rerecords_closures_and_lambdas(client):
    scale = np.float64(3.0)

    def closure(x):
        return scale * x[0] * x[1] if x[0] > 0 else x[1] - x[0]

    lam = lambda x: jitad.where(x[0] > 0, x[0] ** 2, -x[0]) * x[1]
    for f in (closure, lam):
        F = jitad.trace(f, np.ones(2))
        want = jitad.trace(f, np.ones(2)).grad_batch(X[:, :2])
        np.testing.assert_array_equal(jd.grad_batch(F, chunked(X[:, :2])).compute(), want)


def test_cluster_unpicklable_function_raises_branch_changed(client):
    lock = threading.Lock()

    def locked(x):
        with lock:
            return x[0] * x[1] if x[0] > 0 else x[1] - x[0]

    F = jitad.trace(locked, np.ones(2))
    positive = np.abs(X[:, :2]) + 0.1
    np.testing.assert_array_equal(jd.batch(F, chunked(positive)).compute(), positive[:, 0] * positive[:, 1])
    with pytest.raises(jitad.BranchChanged, match="branch went the other way"):
        jd.batch(F, chunked(X[:, :2])).compute()


def test_cluster_loaded_tape(client, tmp_path):
    traced().save(tmp_path / "rosen.npz")
    G = jitad.io.load(tmp_path / "rosen.npz")
    positive = np.abs(X) + 0.1
    np.testing.assert_array_equal(jd.grad_batch(G, chunked(positive), W).compute(), traced().grad_batch(positive, W))
    with pytest.raises(jitad.BranchChanged, match="loaded from a file"):
        jd.grad_batch(G, chunked(X), W).compute()


def test_cluster_minimize_many(client):
    from scipy.optimize import minimize

    X0 = RNG.uniform(-1.0, 2.0, size=(6, N))
    results = jd.minimize_many(rosen, X0, args=(W,))
    for x0, res in zip(X0, results):
        want = minimize(jitad.value_and_grad(rosen), x0, jac=True, args=(W,), method="L-BFGS-B")
        np.testing.assert_array_equal(res.x, want.x)
        assert res.success == want.success
    newton = jd.minimize_many(rosen, X0[:2], method="trust-ncg", args=(W,), hessp=True)
    for x0, res in zip(X0, newton):
        want = minimize(
            jitad.value_and_grad(rosen), x0, jac=True, hessp=jitad.hvp(rosen), args=(W,), method="trust-ncg"
        )
        np.testing.assert_array_equal(res.x, want.x)
