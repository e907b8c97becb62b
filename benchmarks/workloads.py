"""The workloads, each written once as scalar Python and reused by every system.

A scalar workload is ``f(x, M)``: ``x`` is a sequence of scalars (whatever the system
records: jitad Values, micrograd Values, 0-d tensors, JAX tracers, CasADi SX) and ``M`` a
namespace supplying ``exp log sin cos tanh maximum`` for that system. Only ``+ - * / **``
and ``M.*`` are used, so every system runs the very same code. Where a NumPy-style
formulation is natural, ``vec(x, xp, *data)`` gives it (``xp``: jax.numpy, autograd.numpy
or a torch shim). ``hand`` is an analytic gradient in Numba: ``hand(x, *hand_data) ->
(value, grad)``, the compiled-code limit and the correctness reference.
"""

import math
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

njit = numba.njit(cache=False, fastmath=False, error_model="numpy")


@dataclass
class Workload:
    name: str  # short key, e.g. "rosen1k"
    label: str  # for tables
    n: int  # number of inputs
    f: Callable  # f(x, M) -> scalar
    x0: np.ndarray
    hand: Callable  # numba: hand(x, *hand_data) -> (value, grad)
    hand_data: tuple = ()
    vec: Callable | None = None  # vec(x, xp, *vec_data) -> scalar
    vec_data: tuple = ()
    no_vec: str = ""  # why there is no vectorized formulation
    perturb: float = 0.1  # relative size of the random moves to "new points"
    meta: dict = field(default_factory=dict)

    def points(self, k, seed=0):
        """k new input points near x0 (a different point for every timed call)."""
        rng = np.random.default_rng(seed)
        scale = self.perturb * (np.abs(self.x0) + 0.1)
        return self.x0[None, :] + scale[None, :] * rng.uniform(-1.0, 1.0, size=(k, self.n))


# --- the seed graph: the DESIGN.md example plus a few ops (~23 ops) -------------------


def seed(x, M):
    x1 = x[0]
    x2 = x[1]
    a = (M.sin(x2) + 1) / (x2 + M.exp(x1)) + x1 * x2
    b = M.tanh(a * x1 - x2) ** 2
    c = M.log(1 + a * a) / (1 + b)
    return a * b + c - M.cos(x1 * b) + x2**3


@njit
def seed_hand(x):
    x1 = x[0]
    x2 = x[1]
    s2 = math.sin(x2)
    e1 = math.exp(x1)
    num = s2 + 1.0
    den = x2 + e1
    a = num / den + x1 * x2
    u = a * x1 - x2
    t = math.tanh(u)
    b = t * t
    aa = 1.0 + a * a
    la = math.log(aa)
    bb = 1.0 + b
    c = la / bb
    w = x1 * b
    f = a * b + c - math.cos(w) + x2**3
    # reverse sweep by hand
    ga = b + (2.0 * a / aa) / bb
    gb = a - la / (bb * bb) + math.sin(w) * x1
    gx1 = math.sin(w) * b
    gx2 = 3.0 * x2 * x2
    gu = gb * 2.0 * t * (1.0 - t * t)
    ga += gu * x1
    gx1 += gu * a
    gx2 -= gu
    # a = num / den + x1 * x2
    gx1 += ga * x2
    gx2 += ga * x1
    gnum = ga / den
    gden = -ga * num / (den * den)
    gx2 += gnum * math.cos(x2) + gden
    gx1 += gden * e1
    g = np.empty(2)
    g[0] = gx1
    g[1] = gx2
    return f, g


# --- Rosenbrock ------------------------------------------------------------------------


def rosenbrock(x, M):
    n = len(x)
    s = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    for i in range(1, n - 1):
        s = s + (100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2)
    return s


def rosenbrock_vec(x, xp):
    return xp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@njit
def rosenbrock_hand(x):
    n = x.shape[0]
    g = np.zeros(n)
    f = 0.0
    for i in range(n - 1):
        d = x[i + 1] - x[i] * x[i]
        e = 1.0 - x[i]
        f += 100.0 * d * d + e * e
        g[i] += -400.0 * d * x[i] - 2.0 * e
        g[i + 1] += 200.0 * d
    return f, g


def rosenbrock_x0(n):
    return np.where(np.arange(n) % 2 == 0, -1.2, 1.0) + 0.01 * np.sin(np.arange(n))


# --- a micrograd-style MLP 2-16-16-1 (tanh), squared loss over fixed data -----------------

MLP_SIZES = (2, 16, 16, 1)


def mlp_layout(sizes=MLP_SIZES):
    """(offset of W, offset of b, fan_in, fan_out) per layer; W is (fan_out, fan_in) row-major."""
    layers = []
    k = 0
    for fin, fout in zip(sizes[:-1], sizes[1:]):
        layers.append((k, k + fin * fout, fin, fout))
        k += fin * fout + fout
    return layers, k


def make_mlp_f(X, Y):
    layers, _ = mlp_layout()
    X = [[float(v) for v in row] for row in X]
    Y = [float(v) for v in Y]

    def mlp(p, M):
        loss = None
        for s in range(len(X)):
            h = X[s]
            for li, (w0, b0, fin, fout) in enumerate(layers):
                nxt = []
                for j in range(fout):
                    act = p[b0 + j]
                    for i in range(fin):
                        act = act + p[w0 + j * fin + i] * h[i]
                    nxt.append(M.tanh(act) if li < len(layers) - 1 else act)
                h = nxt
            d = h[0] - Y[s]
            loss = d * d if loss is None else loss + d * d
        return loss

    return mlp


def mlp_vec(p, xp, X, Y):
    layers, _ = mlp_layout()
    h = X
    for li, (w0, b0, fin, fout) in enumerate(layers):
        W = xp.reshape(p[w0:b0], (fout, fin))
        a = h @ xp.transpose(W) + p[b0 : b0 + fout]
        h = xp.tanh(a) if li < len(layers) - 1 else a
    return xp.sum((h[:, 0] - Y) ** 2)


@njit
def mlp_hand(p, X, Y):
    # sizes fixed at 2-16-16-1; manual backprop per sample
    S = X.shape[0]
    g = np.zeros(p.shape[0])
    W1 = p[0:32].reshape(16, 2)
    b1 = p[32:48]
    W2 = p[48:304].reshape(16, 16)
    b2 = p[304:320]
    W3 = p[320:336]
    b3 = p[336]
    gW1 = g[0:32].reshape(16, 2)
    gb1 = g[32:48]
    gW2 = g[48:304].reshape(16, 16)
    gb2 = g[304:320]
    gW3 = g[320:336]
    h1 = np.empty(16)
    h2 = np.empty(16)
    d2 = np.empty(16)
    loss = 0.0
    for s in range(S):
        for j in range(16):
            a = b1[j] + W1[j, 0] * X[s, 0] + W1[j, 1] * X[s, 1]
            h1[j] = math.tanh(a)
        out = b3
        for j in range(16):
            a = b2[j]
            for i in range(16):
                a += W2[j, i] * h1[i]
            h2[j] = math.tanh(a)
            out += W3[j] * h2[j]
        d = out - Y[s]
        loss += d * d
        go = 2.0 * d
        g[336] += go
        for j in range(16):
            gW3[j] += go * h2[j]
            d2[j] = go * W3[j] * (1.0 - h2[j] * h2[j])
            gb2[j] += d2[j]
        for i in range(16):
            gh = 0.0
            for j in range(16):
                gW2[j, i] += d2[j] * h1[i]
                gh += d2[j] * W2[j, i]
            d1 = gh * (1.0 - h1[i] * h1[i])
            gb1[i] += d1
            gW1[i, 0] += d1 * X[s, 0]
            gW1[i, 1] += d1 * X[s, 1]
    return loss, g


def make_mlp(samples=100):
    rng = np.random.default_rng(1)
    X = rng.uniform(-2, 2, size=(samples, 2))
    Y = np.where(X[:, 0] ** 2 + X[:, 1] ** 2 < 1.5, 1.0, -1.0)  # a circle, like make_moons
    _, n = mlp_layout()
    p0 = rng.uniform(-1, 1, size=n) / 2
    return Workload(
        name="mlp",
        label=f"MLP 2-16-16-1 tanh, {samples} samples",
        n=n,
        f=make_mlp_f(X, Y),
        x0=p0,
        hand=mlp_hand,
        hand_data=(X, Y),
        vec=mlp_vec,
        vec_data=(X, Y),
        perturb=0.2,
    )


# --- a dependent chain: v <- v + sin(v) * 1e-4, three ops per step --------------------------
# (A contraction like sin(v) * 1.0001 + 0.1 drives the gradient to exactly 0 over 10^5 ops,
# which would make the correctness column meaningless; this one keeps it O(1).)


def make_chain_f(steps):
    def chain(x, M):
        v = x[0]
        for _ in range(steps):
            v = v + M.sin(v) * 1e-4
        return v

    return chain


@njit
def chain_hand(x, steps):
    xs = np.empty(steps)
    v = x[0]
    for k in range(steps):
        xs[k] = v
        v = v + math.sin(v) * 1e-4
    g = 1.0
    for k in range(steps - 1, -1, -1):
        g *= 1.0 + math.cos(xs[k]) * 1e-4
    out = np.empty(1)
    out[0] = g
    return v, out


def make_chain(ops=100_000):
    steps = ops // 3
    return Workload(
        name="chain",
        label=f"dependent chain, {steps} x (sin, *, +)",
        n=1,
        f=make_chain_f(steps),
        x0=np.array([0.3]),
        hand=chain_hand,
        hand_data=(steps,),
        no_vec="sequential: no vectorized form",
        perturb=0.5,
    )


# --- ADBench Gaussian mixture model log-likelihood ------------------------------------------
# Parameters: alphas (K), means (K, D), icf (K, D(D+1)/2): log of the diagonal of the
# inverse Cholesky factor Q, then its strict lower triangle column by column (ADBench order).


def _log_gamma_distrib(a, p):
    return 0.25 * p * (p - 1) * math.log(math.pi) + sum(math.lgamma(a + 0.5 * (1 - j)) for j in range(1, p + 1))


def gmm_constants(N, D, K, gamma, m):
    const = -N * D * 0.5 * math.log(2 * math.pi)
    n_ = D + m + 1
    C = n_ * D * (math.log(gamma) - 0.5 * math.log(2)) - _log_gamma_distrib(0.5 * n_, D)
    return const, K * C


def make_gmm_f(X, D, K, gamma, m):
    N = X.shape[0]
    isz = D * (D + 1) // 2
    X = [[float(v) for v in row] for row in X]
    const, kc = gmm_constants(N, D, K, gamma, m)

    def lse(v, M):
        mx = v[0]
        for t in v[1:]:
            mx = M.maximum(mx, t)
        s = M.exp(v[0] - mx)
        for t in v[1:]:
            s = s + M.exp(t - mx)
        return M.log(s) + mx

    def gmm(p, M):
        alphas = [p[k] for k in range(K)]
        means = [[p[K + k * D + d] for d in range(D)] for k in range(K)]
        icf = [[p[K + K * D + k * isz + j] for j in range(isz)] for k in range(K)]
        qdiag = [[M.exp(icf[k][d]) for d in range(D)] for k in range(K)]
        sum_qs = []
        for k in range(K):
            s = icf[k][0]
            for d in range(1, D):
                s = s + icf[k][d]
            sum_qs.append(s)
        base = [alphas[k] + sum_qs[k] for k in range(K)]
        slse = None
        for i in range(N):
            main = []
            for k in range(K):
                xc = [X[i][d] - means[k][d] for d in range(D)]
                y = [qdiag[k][d] * xc[d] for d in range(D)]
                idx = D
                for c in range(D):
                    for r in range(c + 1, D):
                        y[r] = y[r] + icf[k][idx] * xc[c]
                        idx += 1
                sq = y[0] * y[0]
                for d in range(1, D):
                    sq = sq + y[d] * y[d]
                main.append(base[k] - 0.5 * sq)
            t = lse(main, M)
            slse = t if slse is None else slse + t
        err = slse - N * lse(alphas, M) + const
        prior = None
        for k in range(K):
            fro = qdiag[k][0] * qdiag[k][0]
            for d in range(1, D):
                fro = fro + qdiag[k][d] * qdiag[k][d]
            for j in range(D, isz):
                fro = fro + icf[k][j] * icf[k][j]
            term = 0.5 * gamma * gamma * fro - m * sum_qs[k]
            prior = term if prior is None else prior + term
        return err + prior - kc

    return gmm


def make_gmm_vec(D, K, gamma, m, N):
    isz = D * (D + 1) // 2
    ntri = isz - D
    # Scatter matrix from the triangle parameters to a (D*D) row-major lower triangle.
    E = np.zeros((ntri, D * D))
    idx = 0
    for c in range(D):
        for r in range(c + 1, D):
            E[idx, r * D + c] = 1.0
            idx += 1
    const, kc = gmm_constants(N, D, K, gamma, m)

    def gmm_vec(p, xp, X, E, eyeD):
        alphas = p[:K]
        means = xp.reshape(p[K : K + K * D], (K, D))
        icf = xp.reshape(p[K + K * D :], (K, isz))
        q = icf[:, :D]
        lt = icf[:, D:]
        qd = xp.exp(q)
        sum_qs = xp.sum(q, axis=1)
        Q = xp.reshape(lt @ E, (K, D, D)) + qd[:, :, None] * eyeD  # (K, D, D)
        xc = X[:, None, :] - means[None, :, :]  # (N, K, D)
        y = xp.sum(Q[None, :, :, :] * xc[:, :, None, :], axis=3)  # (N, K, D)
        main = alphas + sum_qs - 0.5 * xp.sum(y * y, axis=2)  # (N, K)
        mx = xp.max(main, axis=1)
        slse = xp.sum(xp.log(xp.sum(xp.exp(main - mx[:, None]), axis=1)) + mx)
        ma = xp.max(alphas)
        lse_a = xp.log(xp.sum(xp.exp(alphas - ma))) + ma
        fro = xp.sum(qd * qd) + xp.sum(lt * lt)
        prior = 0.5 * gamma * gamma * fro - m * xp.sum(sum_qs)
        return slse - N * lse_a + const + prior - kc

    return gmm_vec, E


@njit
def gmm_hand(p, X, D, K, gamma, m, const, kc):
    N = X.shape[0]
    isz = D * (D + 1) // 2
    g = np.zeros(p.shape[0])
    alphas = p[:K]
    means = p[K : K + K * D].reshape(K, D)
    icf = p[K + K * D :].reshape(K, isz)
    gA = g[:K]
    gM = g[K : K + K * D].reshape(K, D)
    gI = g[K + K * D :].reshape(K, isz)
    Qd = np.exp(icf[:, :D])
    sumq = np.zeros(K)
    for k in range(K):
        for d in range(D):
            sumq[k] += icf[k, d]
    main = np.empty(K)
    XC = np.empty((K, D))
    Y = np.empty((K, D))
    dy = np.empty(D)
    dxc = np.empty(D)
    slse = 0.0
    for i in range(N):
        for k in range(K):
            for d in range(D):
                XC[k, d] = X[i, d] - means[k, d]
                Y[k, d] = Qd[k, d] * XC[k, d]
            idx = D
            for c in range(D):
                for r in range(c + 1, D):
                    Y[k, r] += icf[k, idx] * XC[k, c]
                    idx += 1
            sq = 0.0
            for d in range(D):
                sq += Y[k, d] * Y[k, d]
            main[k] = alphas[k] + sumq[k] - 0.5 * sq
        mx = main.max()
        se = 0.0
        for k in range(K):
            se += math.exp(main[k] - mx)
        lse = math.log(se) + mx
        slse += lse
        for k in range(K):
            rk = math.exp(main[k] - lse)
            gA[k] += rk
            for d in range(D):
                gI[k, d] += rk
                dy[d] = -rk * Y[k, d]
                dxc[d] = Qd[k, d] * dy[d]
                gI[k, d] += dy[d] * XC[k, d] * Qd[k, d]
            idx = D
            for c in range(D):
                for r in range(c + 1, D):
                    dxc[c] += icf[k, idx] * dy[r]
                    gI[k, idx] += dy[r] * XC[k, c]
                    idx += 1
            for d in range(D):
                gM[k, d] -= dxc[d]
    ma = alphas.max()
    sa = 0.0
    for k in range(K):
        sa += math.exp(alphas[k] - ma)
    lse_a = math.log(sa) + ma
    for k in range(K):
        gA[k] -= N * math.exp(alphas[k] - lse_a)
    prior = 0.0
    for k in range(K):
        fro = 0.0
        for d in range(D):
            fro += Qd[k, d] * Qd[k, d]
            gI[k, d] += gamma * gamma * Qd[k, d] * Qd[k, d] - m
        for j in range(D, isz):
            fro += icf[k, j] * icf[k, j]
            gI[k, j] += gamma * gamma * icf[k, j]
        prior += 0.5 * gamma * gamma * fro - m * sumq[k]
    return slse - N * lse_a + const + prior - kc, g


def make_gmm(D, K, N, name):
    rng = np.random.default_rng(7 + D * K)
    gamma, m = 1.0, 0
    isz = D * (D + 1) // 2
    alphas = rng.normal(size=K)
    means = rng.uniform(size=(K, D))
    icf = rng.normal(scale=0.3, size=(K, isz))
    X = rng.uniform(size=(N, D))
    p0 = np.concatenate([alphas, means.ravel(), icf.ravel()])
    const, kc = gmm_constants(N, D, K, gamma, m)
    vec, E = make_gmm_vec(D, K, gamma, m, N)
    return Workload(
        name=name,
        label=f"ADBench GMM d={D} K={K} N={N}",
        n=p0.size,
        f=make_gmm_f(X, D, K, gamma, m),
        x0=p0,
        hand=gmm_hand,
        hand_data=(X, D, K, gamma, float(m), const, kc),
        vec=vec,
        vec_data=(X, E, np.eye(D)),
        meta=dict(D=D, K=K, N=N),
    )


# --- the suite ----------------------------------------------------------------------------


def make_rosenbrock(n, name=None):
    return Workload(
        name=name or f"rosen{n}",
        label=f"Rosenbrock n={n}",
        n=n,
        f=rosenbrock,
        x0=rosenbrock_x0(n),
        hand=rosenbrock_hand,
        vec=rosenbrock_vec,
    )


def make_seed():
    return Workload(
        name="seed",
        label="seed graph (2 inputs, 23 ops)",
        n=2,
        f=seed,
        x0=np.array([1.5, 0.5]),
        hand=seed_hand,
        no_vec="two scalars: no vectorized form",
    )


def suite(quick=False):
    """The workloads of the main table, smallest first."""
    if quick:
        return [make_seed(), make_rosenbrock(1000, "rosen1k"), make_gmm(2, 5, 20, "gmm_xs")]
    return [
        make_seed(),
        make_rosenbrock(1000, "rosen1k"),
        make_gmm(2, 5, 100, "gmm_s"),
        make_mlp(100),
        make_chain(100_000),
        make_gmm(10, 25, 100, "gmm_l"),
        make_rosenbrock(100_000, "rosen100k"),
    ]


def by_name(name):
    """A workload of the suite by its name, or ``rosenN`` for Rosenbrock with N variables."""
    if name.startswith("rosen") and name[5:].isdigit():
        return make_rosenbrock(int(name[5:]))
    for quick in (False, True):
        for w in suite(quick):
            if w.name == name:
                return w
    raise KeyError(name)
