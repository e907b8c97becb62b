"""``python -m jitad``: the seed documents' examples, exactly, and micrograd's training loop
on jitad's Value, timed against a micrograd-style engine. The small MLP (micrograd's
``nn.py``) and the reference engine here are also what the tests train."""

import math
import random
import time

import numpy as np

from . import gradients, trace
from .value import Value

# --- micrograd's nn.py, for any Value class --------------------------------------------------


class Module:
    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0

    def parameters(self):
        return []


class Neuron(Module):
    def __init__(self, nin, nonlin=True, Value=Value):
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0)
        self.nonlin = nonlin

    def __call__(self, x):
        act = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        return act.relu() if self.nonlin else act

    def parameters(self):
        return self.w + [self.b]


class Layer(Module):
    def __init__(self, nin, nout, **kwargs):
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    def __call__(self, x):
        out = [n(x) for n in self.neurons]
        return out[0] if len(out) == 1 else out

    def parameters(self):
        return [p for n in self.neurons for p in n.parameters()]


class MLP(Module):
    def __init__(self, nin, nouts, Value=Value):
        sz = [nin] + nouts
        self.layers = [
            Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1, Value=Value) for i in range(len(nouts))
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]


def moons(n, seed=1):
    """Two interleaved half circles with noise, labels -1/1 (sklearn's make_moons, by hand)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, math.pi, n)
    upper = rng.random(n) < 0.5
    X = np.where(upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    return X + rng.normal(0, 0.1, X.shape), np.where(upper, 1, -1)


def loss(model, X, y, Value=Value):
    """micrograd's demo.ipynb: SVM max-margin loss + L2 regularization, and the accuracy."""
    inputs = [list(map(Value, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    alpha = 1e-4
    reg_loss = alpha * sum(p * p for p in model.parameters())
    total_loss = data_loss + reg_loss
    accuracy = [(yi > 0) == (scorei.data > 0) for yi, scorei in zip(y, scores)]
    return total_loss, sum(accuracy) / len(accuracy)


class Reference:
    """micrograd's engine (the seeds' dynamic graph) on plain floats, with an iterative
    topological sort: the reference that jitad's numbers and speed are compared with."""

    __slots__ = ("data", "grad", "_backward", "_prev")

    def __init__(self, data, _children=()):
        self.data = float(data)
        self.grad = 0.0
        self._backward = None
        self._prev = _children

    def __add__(self, other):
        other = other if isinstance(other, Reference) else Reference(other)
        out = Reference(self.data + other.data, (self, other))

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Reference) else Reference(other)
        out = Reference(self.data * other.data, (self, other))

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def relu(self):
        out = Reference(0.0 if self.data < 0 else self.data, (self,))

        def _backward():
            self.grad += (out.data > 0) * out.grad

        out._backward = _backward
        return out

    __radd__ = __add__
    __rmul__ = __mul__

    def __neg__(self):
        return self * -1

    def backward(self):
        topo, seen, stack = [], set(), [(self, False)]
        while stack:
            v, expanded = stack.pop()
            if expanded:
                topo.append(v)
            elif id(v) not in seen:
                seen.add(id(v))
                stack.append((v, True))
                stack.extend((c, False) for c in v._prev)
        self.grad = 1.0
        for v in reversed(topo):
            if v._backward is not None:
                v._backward()


# --- the seeds --------------------------------------------------------------------------------


def seed_graph(a, o):
    """The seed's computation graph: b = 5 - 3a, c = 2b + 3, d = 5b + 6, e = 7c + d^2,
    f = 2e, g = 3f - o; returns every node."""
    b = 5 - 3 * a
    c = 2 * b + 3
    d = 5 * b + 6
    e = 7 * c + d**2
    f = 2 * e
    g = 3 * f - o
    return b, c, d, e, f, g


def show_seed_graph():
    print("1. The seed graph: b = 5 - 3a, c = 2b + 3, d = 5b + 6, e = 7c + d^2, f = 2e, g = 3f - o")
    print("   dynamic graph (eager, recorded as it runs), at a = 2, o = 1:")
    a, o = Value(2.0), Value(1.0)
    b, c, d, e, f, g = seed_graph(a, o)
    g.backward()
    print(f"   g = {g.data}, dg/da = {a.grad} (-252 - 180 d = {-252 - 180 * d.data}), dg/do = {o.grad}")
    names = "b c d e f".split()
    grads = gradients(g, [b, c, d, e, f])
    print("   dg/d(" + ", ".join(names) + ") = " + ", ".join(f"{x:g}" for x in grads) + "  (84 + 60d, 42, 12, 6, 3)")

    print("   static graph (traced once, replayed in compiled code):")
    G = trace(lambda x: seed_graph(x[0], x[1])[-1], np.array([2.0, 1.0]))
    for point in ([2.0, 1.0], [1.0, 1.0]):
        value, grad = G.value_and_grad(np.array(point))
        d = 5 * (5 - 3 * point[0]) + 6
        print(f"   at a = {point[0]:g}, o = {point[1]:g}: g = {value:g}, (dg/da, dg/do) = ({grad[0]:g}, {grad[1]:g})"
              f"  (-252 - 180 d = {-252 - 180 * d:g})")  # fmt: skip


def show_adnumber():
    print("2. The ADNumber example: f = (sin(x2) + 1) / (x2 + exp(x1)) + x1 x2 at x1 = 1.5, x2 = 0.5")
    x1, x2 = Value(1.5), Value(0.5)
    s = x2.sin()
    num = s + 1
    den = x2 + x1.exp()
    q = num / den
    p = x1 * x2
    f = q + p
    f.backward()
    print(f"   f = {f.data!r}")
    print(f"   df/dx2 = {x2.grad!r} (the seed: 1.6165488003791766), df/dx1 = {x1.grad!r}")
    parts = {"sin(x2)": s, "sin(x2)+1": num, "x2+exp(x1)": den, "(sin(x2)+1)/(x2+exp(x1))": q, "x1*x2": p}
    for name, g in zip(parts, gradients(f, list(parts.values()))):
        print(f"   df/d[{name}] = {float(g)!r}")


def show_training(steps=100, reference_steps=2):
    print(f"3. micrograd's training loop on jitad.Value: MLP(2, [16, 16, 1]), 100 moons, {steps} steps")
    X, y = moons(100)
    random.seed(1337)
    model = MLP(2, [16, 16, 1])
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        total_loss, acc = loss(model, X, y)
        model.zero_grad()
        total_loss.backward()
        learning_rate = 1.0 - 0.9 * k / steps
        for p in model.parameters():
            p.data -= learning_rate * p.grad
        times.append(time.perf_counter() - t0)
        if k % 20 == 0 or k == steps - 1:
            print(f"   step {k} loss {total_loss.data:.6f}, accuracy {acc * 100:.0f}%")
    try:
        from micrograd.engine import Value as Micro

        engine = "micrograd"
    except ImportError:
        Micro = Reference
        engine = "a micrograd-style engine (micrograd not installed)"
    random.seed(1337)
    reference = MLP(2, [16, 16, 1], Value=Micro)
    ref_times = []
    for _ in range(reference_steps):
        t0 = time.perf_counter()
        total_loss, acc = loss(reference, X, y, Value=Micro)
        reference.zero_grad()
        total_loss.backward()
        ref_times.append(time.perf_counter() - t0)
    ours, theirs = float(np.median(times[1:] or times)), min(ref_times)
    print(f"   per step: jitad {ours * 1e3:.1f} ms, {engine} {theirs * 1e3:.0f} ms ({theirs / ours:.0f}x)")


def main():
    show_seed_graph()
    show_adnumber()
    show_training()
