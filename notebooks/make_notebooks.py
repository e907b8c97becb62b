"""Write the example notebooks from the cell sources below and execute them in place.

``python notebooks/make_notebooks.py`` regenerates every ``.ipynb`` with its outputs;
``tests/test_notebooks.py`` executes the committed notebooks, so they never go stale.
"""

import sys
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from nbclient import NotebookClient

HERE = Path(__file__).parent


def md(text):
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text):
    return nbformat.v4.new_code_cell(text.strip())


TOUR = [
    md("""
# A tour of jitad

jitad records arithmetic on `Value` scalars into a tape (a Wengert list in flat NumPy
arrays) and differentiates it with compiled sweeps. This notebook builds small graphs,
runs `backward()`, takes gradients with respect to intermediate nodes, and looks at the
tape and the graph.
"""),
    code("""
import numpy as np
import jitad
from jitad import Value
"""),
    md("## micrograd's example\n\nThe same code as micrograd's README, and the same numbers."),
    code("""
with jitad.Tape() as tape:
    a = Value(-4.0)
    b = Value(2.0)
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + (b + a).relu()
    d += 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    g.backward()
print(f"g = {g.data:.4f}, dg/da = {a.grad:.4f}, dg/db = {b.grad:.4f}")
print(f"{len(tape)} tape entries")
assert (round(g.data, 4), round(a.grad, 4), round(b.grad, 4)) == (24.7041, 138.8338, 645.5773)  # micrograd's numbers
"""),
    md("""
## The seeds' graph: dynamic and static

$b = 5 - 3a$, $c = 2b + 3$, $d = 5b + 6$, $e = 7c + d^2$, $f = 2e$, $g = 3f - o$ at
$a = 2$, $o = 1$. By the chain rule $dg/da = (84 + 60d)(-3) = -252 - 180d$ and
$dg/do = -1$. Eagerly, the graph is recorded as the code runs (a *dynamic* graph):
"""),
    code("""
def graph(a, o):
    b = 5 - 3 * a
    c = 2 * b + 3
    d = 5 * b + 6
    e = 7 * c + d**2
    f = 2 * e
    g = 3 * f - o
    return b, c, d, e, f, g

a, o = Value(2.0), Value(1.0)
b, c, d, e, f, g = graph(a, o)
g.backward()
print(f"g = {g.data}, dg/da = {a.grad} (-252 - 180 d = {-252 - 180 * d.data}), dg/do = {o.grad}")
print("dg/d(b, c, d, e, f) =", jitad.gradients(g, [b, c, d, e, f]))
assert (g.data, a.grad, o.grad) == (47.0, -432.0, -1.0)
assert jitad.gradients(g, [b, c, d, e, f]).tolist() == [144.0, 42.0, 12.0, 6.0, 3.0]
"""),
    md("Traced once, the same code is a *static* graph, replayed in compiled code at any point:"),
    code("""
G = jitad.trace(lambda x: graph(x[0], x[1])[-1], np.array([2.0, 1.0]))
print(G.value_and_grad(np.array([2.0, 1.0])))
print(G.value_and_grad(np.array([1.0, 1.0])), "(d = 16: -252 - 180 d =", -252 - 180 * 16, ")")
"""),
    md("""
## micrograd's training loop, unchanged

micrograd's `nn.py` (here `jitad.demo.MLP`) and the loop of its demo notebook run on
jitad's `Value` as they are, on the default tape: `p.data -= learning_rate * p.grad`
updates the leaves, and entries that no Value can reach any more are freed, so the tape
stays the same size from step to step.
"""),
    code("""
import random
from jitad.demo import MLP, loss, moons

X, y = moons(100)
random.seed(1337)
model = MLP(2, [16, 16, 1])
for k in range(20):
    total_loss, acc = loss(model, X, y)
    model.zero_grad()
    total_loss.backward()
    learning_rate = 1.0 - 0.9 * k / 100
    for p in model.parameters():
        p.data -= learning_rate * p.grad
    if k % 5 == 0:
        print(f"step {k} loss {total_loss.data:.4f}, accuracy {acc * 100:.0f}%, tape entries {len(jitad.tape.active())}")
"""),
    md("""
## Gradients with respect to any node

`backward()` accumulates into `.grad` (PyTorch semantics). `jitad.gradients(y, wrt)`
returns d y / d w for any recorded Values, intermediate nodes included, without touching
`.grad`. For $f = (\\sin x_2 + 1) / (x_2 + e^{x_1}) + x_1 x_2$:
"""),
    code("""
with jitad.Tape() as tape:
    x1, x2 = Value(1.5), Value(0.5)
    s = x2.sin() + 1
    q = x2 + x1.exp()
    f = s / q + x1 * x2
    f.backward()
print("df/dx1 =", x1.grad, " df/dx2 =", x2.grad)
assert abs(x2.grad - 1.6165488003791766) < 1e-15
print("d f / d(x1, x2, s, q) =", jitad.gradients(f, [x1, x2, s, q]))
print("analytic d f / d(s, q):", 1 / q.data, -s.data / q.data**2)
"""),
    md("## The tape\n\nEvery entry: opcode, operands (-1: the entry's constant), constant, value and local partials."),
    code("print(tape.table())"),
    code("""
tape.names[:5], tape.a[:5], tape.value[:5]
"""),
    md("## The graph\n\n`jitad.to_dot(y)` gives Graphviz source; `jitad.draw(y)` renders it."),
    code("""
jitad.draw(f, labels={"x1": x1, "x2": x2, "s": s, "q": q, "f": f})
"""),
    md("""
Blue records are leaves; each record shows the entry's value and its `.grad`. The
picture is read off the tape backward from `f`, without recursion, and a large graph is
summarized: only the `max_nodes` entries nearest the output are drawn.
"""),
    code("""
with jitad.Tape():
    x = Value(0.5)
    y = x
    for _ in range(10_000):
        y = (y * 1.5).sin()
    y.backward()
jitad.draw(y, labels={"x": x, "y": y}, max_nodes=8)
"""),
    md("""
## Record once, replay many

`jitad.trace` records a function once; the returned `TapeFunction` replays the tape in
compiled code at new inputs. Comparisons are recorded as guards: when a branch would go
the other way, the function is recorded again at that point.
"""),
    code("""
def f(x):
    y = (jitad.sin(x[1]) + 1) / (x[1] + jitad.exp(x[0])) + x[0] * x[1]
    return y if x[0] > 0 else -y

F = jitad.trace(f, np.array([1.5, 0.5]))
print(F.value_and_grad(np.array([1.5, 0.5])))
print(F.value_and_grad(np.array([-1.0, 0.5])), "re-recordings:", F.retraces)
"""),
]

OPTIMIZATION = [
    md("""
# An optimization loop with SciPy

The Rosenbrock function in 200 dimensions, written as scalar Python, minimized with
SciPy using jitad's transforms as they are: `value_and_grad` for L-BFGS-B, `hvp` for
trust-ncg.
"""),
    code("""
import time
import numpy as np
import matplotlib.pyplot as plt
from scipy.optimize import minimize, rosen, rosen_der
import jitad

def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))

n = 200
x0 = np.tile([-1.2, 1.0], n // 2)
"""),
    code("""
history = []
t0 = time.perf_counter()
res = minimize(jitad.value_and_grad(rosenbrock), x0, jac=True, method="L-BFGS-B",
               callback=lambda xk: history.append(rosen(xk)), options={"maxiter": 5000})
t_lbfgs = time.perf_counter() - t0
print(res.message, res.nit, "iterations,", res.nfev, "evaluations,", f"{t_lbfgs:.3f} s")
print("max |x - 1| =", np.abs(res.x - 1).max())
"""),
    code("""
history_ncg = []
t0 = time.perf_counter()
res_ncg = minimize(rosenbrock, x0, jac=jitad.grad(rosenbrock), hessp=jitad.hvp(rosenbrock), method="trust-ncg",
                   callback=lambda xk: history_ncg.append(rosen(xk)), options={"maxiter": 1000})
t_ncg = time.perf_counter() - t0
print(res_ncg.message, res_ncg.nit, "iterations,", f"{t_ncg:.3f} s; max |x - 1| =", np.abs(res_ncg.x - 1).max())
"""),
    code("""
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(history, label="L-BFGS-B, value_and_grad")
ax.semilogy(history_ncg, label="trust-ncg, hvp")
ax.set_xlabel("iteration"); ax.set_ylabel("f(x)"); ax.legend(); ax.set_title("Rosenbrock, n = 200")
plt.show()
"""),
    md("""
## What the tape buys

The same gradient three ways at one point: jitad's replay, jitad recording from scratch
each call (eager), and SciPy's finite differences (n + 1 function evaluations).
"""),
    code("""
from scipy.optimize import approx_fprime

F = jitad.trace(rosenbrock, x0)
x = x0 + 0.1

def best(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

def eager(x):
    with jitad.Tape():
        xs = [jitad.Value(v) for v in x]
        y = rosenbrock(xs)
        return jitad.gradients(y, xs)

t_replay = best(lambda: F.grad(x))
t_eager = best(lambda: eager(x))
t_fd = best(lambda: approx_fprime(x, rosen), repeat=3)
print(f"replay {t_replay * 1e6:.0f} µs, eager {t_eager * 1e3:.2f} ms, finite differences {t_fd * 1e3:.2f} ms")
print("errors vs the analytic gradient:",
      np.abs(F.grad(x) - rosen_der(x)).max(), np.abs(eager(x) - rosen_der(x)).max(),
      np.abs(approx_fprime(x, rosen) - rosen_der(x)).max())
"""),
]

NETWORK = [
    md("""
# Training a tiny network

micrograd's demo: a 2-16-16-1 MLP classifying the two-moons data set, trained with a
max-margin loss by minibatch SGD. The loss is traced **once**, on one minibatch: the
weights are the inputs, and the minibatch is passed as extra arguments, which jitad
records as *parameters*. Every step replays the same tape in compiled code with another
minibatch; nothing is recorded again.
"""),
    code("""
import time
import numpy as np
import matplotlib.pyplot as plt
import jitad

rng = np.random.default_rng(1337)

def two_moons(n, noise=0.1):
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    X = np.stack([x, y], axis=1) + rng.normal(0, noise, (n, 2))
    return X, np.where(upper, 1.0, -1.0)

X, Y = two_moons(200)
sizes = [2, 16, 16, 1]
shapes = [(sizes[k + 1], sizes[k] + 1) for k in range(3)]  # weights and a bias per neuron
n_weights = sum(a * b for a, b in shapes)
w0 = rng.uniform(-1, 1, n_weights)
print(n_weights, "weights,", len(Y), "points")
"""),
    code("""
def mlp(w, x):
    \"\"\"The network on one input point x (two numbers), weights w flat.\"\"\"
    k = 0
    layer = list(x)
    for depth, (out, inp) in enumerate(shapes):
        nxt = []
        for _ in range(out):
            act = w[k + inp - 1]
            for j in range(inp - 1):
                act = act + w[k + j] * layer[j]
            k += inp
            nxt.append(act.tanh() if depth < len(shapes) - 1 else act)
        layer = nxt
    return layer[0]

def loss(w, Xb, Yb, alpha=1e-4):
    hinge = sum(jitad.relu(1 - Yb[i] * mlp(w, Xb[i])) for i in range(len(Yb))) / len(Yb)
    return hinge + alpha * sum(wi * wi for wi in w)

batch = 20
t0 = time.perf_counter()
F = jitad.trace(loss, w0, X[:batch], Y[:batch])  # the minibatch: parameters, not variables
print(f"traced {len(F.tape)} entries in {time.perf_counter() - t0:.3f} s")
"""),
    code("""
w = w0.copy()
epochs = 40
losses, epoch_times = [], []
for epoch in range(epochs):
    t0 = time.perf_counter()
    order = rng.permutation(len(Y))
    total = 0.0
    lr = 0.5 * (1.0 - 0.9 * epoch / epochs)
    for start in range(0, len(Y), batch):
        idx = order[start:start + batch]
        value, grad = F.value_and_grad(w, X[idx], Y[idx])  # replay with this minibatch
        w -= lr * grad
        total += value
    epoch_times.append(time.perf_counter() - t0)
    losses.append(total / (len(Y) // batch))

def predict(w, P):
    out = P
    k = 0
    for depth, (o, i) in enumerate(shapes):
        W = w[k:k + o * i].reshape(o, i); k += o * i
        out = out @ W[:, :-1].T + W[:, -1]
        if depth < len(shapes) - 1:
            out = np.tanh(out)
    return out[:, 0]

print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {np.mean(np.sign(predict(w, X)) == Y):.0%},",
      "re-recordings:", F.retraces)
print(f"first epoch (compiles the replay kernels): {epoch_times[0] * 1e3:.1f} ms;",
      f"a replayed epoch: {np.median(epoch_times[1:]) * 1e3:.2f} ms")
"""),
    md("""
The same epoch recorded eagerly, as micrograd or PyTorch would: build the graph of each
minibatch's loss from scratch and sweep it backward.
"""),
    code("""
def eager_epoch(w):
    order = rng.permutation(len(Y))
    for start in range(0, len(Y), batch):
        idx = order[start:start + batch]
        with jitad.Tape():
            ws = np.array([jitad.Value(v) for v in w], dtype=object)
            g = jitad.gradients(loss(ws, X[idx], Y[idx]), ws)
    return g

eager_epoch(w)  # compiles the backward sweep
t0 = time.perf_counter(); eager_epoch(w); eager = time.perf_counter() - t0
replayed = np.median(epoch_times[1:])
with jitad.Tape():
    ws = np.array([jitad.Value(v) for v in w], dtype=object)
    assert np.allclose(jitad.gradients(loss(ws, X[:batch], Y[:batch]), ws), F.grad(w, X[:batch], Y[:batch]))
print(f"eager epoch: {eager * 1e3:.1f} ms, replayed epoch: {replayed * 1e3:.2f} ms ({eager / replayed:.0f}x faster)")
"""),
    code("""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
ax1.plot(losses); ax1.set_xlabel("epoch"); ax1.set_ylabel("mean minibatch loss"); ax1.set_title("training loss")
gx, gy = np.meshgrid(np.linspace(-1.5, 2.5, 150), np.linspace(-1.0, 1.5, 150))
Z = predict(w, np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gx.shape)
ax2.contourf(gx, gy, Z > 0, cmap="Spectral", alpha=0.8)
ax2.scatter(X[:, 0], X[:, 1], c=Y, s=20, cmap="jet", edgecolors="k")
ax2.set_title("decision boundary")
plt.show()
"""),
]

THROUGHPUT = [
    md("""
# High-throughput gradients

`F.grad_batch(X)` evaluates the gradient at every row of `X`: blocks of points share one
pass over the tape, and blocks are spread over Numba's threads.
"""),
    code("""
import time
import numpy as np
import matplotlib.pyplot as plt
from scipy.optimize import rosen_der
import jitad

def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))

n = 100
F = jitad.trace(rosenbrock, np.zeros(n))
rng = np.random.default_rng(0)
X = rng.normal(size=(4096, n))
G = F.grad_batch(X)
print("max error vs the analytic gradient:", np.abs(G - np.array([rosen_der(x) for x in X])).max())
"""),
    code("""
def best(fn, seconds=0.1):
    # the fastest of repeated calls, repeated for about `seconds` (at least 3 calls)
    times = []
    while len(times) < 3 or sum(times) < seconds:
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

sizes = [1, 4, 16, 64, 256, 1024, 4096]
batched = [K / best(lambda: F.grad_batch(X[:K])) for K in sizes]
looped = [K / best(lambda: [F.grad(x) for x in X[:K]]) for K in sizes[:5]]
for K, b in zip(sizes, batched):
    print(f"K = {K:5d}: {b:10,.0f} gradients/s")
"""),
    code("""
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(sizes, batched, "o-", label="F.grad_batch(X[:K])")
ax.loglog(sizes[:5], looped, "s--", label="loop of F.grad(x)")
ax.set_xlabel("batch size K"); ax.set_ylabel("gradients per second")
ax.set_title(f"Rosenbrock n = {n}, {len(F.tape)} tape entries"); ax.legend()
plt.show()
"""),
    md("""
One `grad_batch` call has a fixed cost (checking inputs, allocating outputs, launching
the kernel), so below a handful of points a loop of `F.grad` is faster; from a few
dozen points on, the batched sweep wins, and large batches are split over Numba's
threads (the numbers above come from whatever machine last ran this notebook).
"""),
]

NOTEBOOKS = {
    "01_tour.ipynb": TOUR,
    "02_optimization.ipynb": OPTIMIZATION,
    "03_tiny_network.ipynb": NETWORK,
    "04_throughput.ipynb": THROUGHPUT,
}


def build(name):
    nb = nbformat.v4.new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


class ThisInterpreter(KernelSpecManager):
    """Every kernel name means this interpreter: no installed kernel spec is needed, and
    none of the user's (which may point at another Python) is picked up."""

    def get_kernel_spec(self, kernel_name):
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return KernelSpec(argv=argv, display_name="Python 3", language="python")


def execute(nb, timeout=600):
    """Run every cell of nb in a fresh kernel of this interpreter (the kernel inherits the
    environment, NUMBA_CACHE_DIR included); raises CellExecutionError on a failing cell."""
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())
    NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        nb = execute(build(name))
        nbformat.write(nb, HERE / name)
        print("wrote", name)
