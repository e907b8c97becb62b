"""The eager tape's lifecycle fuzzed against a reference engine: random interleavings of
leaves, ops, long chains, dropped references, backward calls, leaf updates and zeroed
gradients, on a tape whose chunks are tiny (so chunks close, chain and are pruned all the
time). Every value must equal the reference's bit for bit and every leaf's gradient the
reference's sum of adjoints; a graph older than a leaf update must raise, never answer."""

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from programs import property_settings

import jitad
from jitad import tape as tape_module


class Node:
    """A reference Value: its float, its operands with their local partials, and the
    versions of the leaves it was computed from (to know when jitad must refuse it)."""

    def __init__(self, data, parents=(), leaf=False):
        self.data = data
        self.parents = parents  # ((node, partial), ...)
        self.leaf = leaf
        self.grad = 0.0
        self.version = 0  # leaves: bumped by each .data update
        self.seen = {id(self): (self, 0)} if leaf else {}
        for parent, _ in parents:
            for key, (leaf, version) in parent.seen.items():
                if key not in self.seen or version < self.seen[key][1]:
                    self.seen[key] = (leaf, version)  # the oldest value of a leaf it read

    def stale(self):
        return any(leaf.version != version for leaf, version in self.seen.values())

    def adjoints(self):
        """{id(node): d self / d node} for every node of self's graph."""
        order, done, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif id(node) not in done:
                done.add(id(node))
                stack.append((node, True))
                stack.extend((parent, False) for parent, _ in node.parents)
        adjoint = {id(self): 1.0}
        for node in reversed(order):
            g = adjoint.get(id(node), 0.0)
            for parent, partial in node.parents:
                if partial != 0.0 and g != 0.0:
                    adjoint[id(parent)] = adjoint.get(id(parent), 0.0) + partial * g
        return adjoint, order

    def backward(self):
        adjoint, order = self.adjoints()
        for node in order:
            if node.leaf:
                node.grad += adjoint.get(id(node), 0.0)


def _binary(name, x, y):
    if name == "add":
        return x.data + y.data, 1.0, 1.0
    if name == "sub":
        return x.data - y.data, 1.0, -1.0
    return x.data * y.data, y.data, x.data


def _unary(name, x):
    if name == "tanh":
        t = math.tanh(x.data)
        return t, 1.0 - t * t
    if name == "sin":
        return math.sin(x.data), math.cos(x.data)
    if name == "relu":
        return (x.data if x.data > 0 else 0.0), (1.0 if x.data > 0 else 0.0)
    return x.data * x.data, 2.0 * x.data  # square, recorded as x ** 2


floats = st.floats(-2.0, 2.0, allow_nan=False).map(lambda v: round(v, 3))


class EagerLifecycle(RuleBasedStateMachine):
    @initialize()
    def small_chunks(self):
        self.saved = (tape_module.CHUNK, tape_module.SPLIT, tape_module.LEAVES)
        tape_module.CHUNK, tape_module.SPLIT, tape_module.LEAVES = 48, 12, 3
        self.tape = jitad.Tape()
        self.tape.__enter__()
        self.pool = []  # (jitad Value, Node)
        self.leaves = []

    def teardown(self):
        if hasattr(self, "tape"):
            self.tape.__exit__(None, None, None)
            tape_module.CHUNK, tape_module.SPLIT, tape_module.LEAVES = self.saved

    def _pick(self, data, pool=None):
        pool = self.pool if pool is None else pool
        return pool[data.draw(st.integers(0, len(pool) - 1))]

    @rule(x=floats)
    def leaf(self, x):
        pair = (jitad.Value(x), Node(x, leaf=True))
        self.pool.append(pair)
        self.leaves.append(pair)

    @precondition(lambda self: self.pool)
    @rule(data=st.data(), name=st.sampled_from(["add", "sub", "mul"]))
    def binary(self, data, name):
        (u, x), (v, y) = self._pick(data), self._pick(data)
        value, dx, dy = _binary(name, x, y)
        w = {"add": u + v, "sub": u - v, "mul": u * v}[name]
        self.pool.append((w, Node(value, ((x, dx), (y, dy)))))

    @precondition(lambda self: self.pool)
    @rule(data=st.data(), name=st.sampled_from(["tanh", "sin", "relu", "square"]), c=floats)
    def unary_then_constant(self, data, name, c):
        u, x = self._pick(data)
        value, d = _unary(name, x)
        w = u**2 if name == "square" else getattr(u, name)()
        node = Node(value, ((x, d),))
        self.pool.append((w * c + c, Node(value * c + c, ((node, c),))))

    @precondition(lambda self: self.pool)
    @rule(data=st.data(), n=st.integers(1, 120))
    def chain(self, data, n):
        # A loop without leaves or backward: chunks chain one to the next and get pruned.
        u, x = self._pick(data)
        for _ in range(n):
            value, d = _unary("tanh", x)
            u, x = u.tanh(), Node(value, ((x, d),))
        self.pool.append((u, x))

    @precondition(lambda self: len(self.pool) > 1)
    @rule(data=st.data())
    def drop(self, data):
        self.pool.remove(self._pick(data))

    @precondition(lambda self: self.pool)
    @rule(data=st.data())
    def backward(self, data):
        y, node = self._pick(data)
        if node.stale():
            with pytest.raises(tape_module.StaleValueError):
                y.backward()
            return
        y.backward()
        node.backward()
        for v, leaf in self.leaves:
            assert v.grad == pytest.approx(leaf.grad, rel=1e-12, abs=1e-12)

    @precondition(lambda self: self.pool)
    @rule(data=st.data(), k=st.integers(1, 4), create_graph=st.booleans())
    def gradients_wrt_any_node(self, data, k, create_graph):
        y, node = self._pick(data)
        wrt = [self._pick(data) for _ in range(k)]
        if node.stale():
            with pytest.raises(tape_module.StaleValueError):
                jitad.gradients(y, [v for v, _ in wrt])
            return
        adjoint, _ = node.adjoints()
        expected = [adjoint.get(id(w), 0.0) for _, w in wrt]
        got = jitad.gradients(y, [v for v, _ in wrt], create_graph=create_graph)
        if create_graph:  # recorded Values, whose numbers are the same derivatives
            got = [g.data for g in got]
        assert list(got) == pytest.approx(expected, rel=1e-12, abs=1e-12)

    @precondition(lambda self: self.leaves)
    @rule(data=st.data(), x=floats)
    def update_leaf(self, data, x):
        v, leaf = self._pick(data, self.leaves)
        v.data = x
        leaf.data = x
        leaf.version += 1
        leaf.seen = {id(leaf): (leaf, leaf.version)}

    @rule()
    def zero_grad(self):
        for v, leaf in self.leaves:
            v.grad = 0.0
            leaf.grad = 0.0

    @invariant()
    def values_are_the_references(self):
        for v, node in getattr(self, "pool", ()):
            assert v.data == node.data


EagerLifecycle.TestCase.settings = settings(parent=property_settings(25), stateful_step_count=30)
test_eager_lifecycle = EagerLifecycle.TestCase
