"""Graph pictures: DOT source of the graph a Value depends on, its node limit, rendering."""

import re
import shutil
import sys
import time

import pytest

import jitad
from jitad import Value
from jitad.graph import draw, to_dot


def micrograd_example():
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
    return a, b, g


def seed():
    x1, x2 = Value(1.5), Value(0.5)
    f = (x2.sin() + 1) / (x2 + x1.exp()) + x1 * x2
    return x1, x2, f


def records(src):
    return dict(re.findall(r'(n\d+) \[shape=record, label="\{ (.*?) \}"', src))


def edges(src):
    return re.findall(r"^  (\w+) -> (\w+)", src, flags=re.MULTILINE)


def test_seed_graph_nodes_and_edges():
    with jitad.Tape():
        a, b, g = micrograd_example()
        g.backward()
        src = to_dot(g, labels={"a": a, "b": b, "g": g})
    assert src.startswith("digraph jitad {") and src.rstrip().endswith("}")
    nodes = records(src)
    assert nodes["n0"] == "a | data -4.0000 | grad 138.8338"
    assert nodes["n1"] == "b | data 2.0000 | grad 645.5773"
    assert nodes[f"n{g._i}"] == "g | data 24.7041 | grad 1.0000"
    assert len(nodes) == g._i + 1  # every entry of this tape feeds g
    e = edges(src)
    # d = a * b + b**3: mul and powc read the leaves, with the constant in the op label.
    assert ("n0", "op3") in e and ("n1", "op3") in e and ("op3", "n3") in e
    assert 'op4 [shape=ellipse, label="** 3"' in src
    assert 'label="10 /"' in src and 'label="/ 2"' in src
    # e = c - d is not commutative: the operands are named.
    assert re.search(r'n11 -> op22 \[label="a"', src) and re.search(r'n21 -> op22 \[label="b"', src)
    assert "more" not in src


def test_seed_function_graph(tape):
    x1, x2, f = seed()
    f.backward()
    src = to_dot(f, labels={"x1": x1, "x2": x2, "f": f})
    nodes = records(src)
    assert nodes["n0"] == "x1 | data 1.5000 | grad 0.2328"
    assert nodes["n1"] == "x2 | data 0.5000 | grad 1.6165"
    assert nodes["n8"] == "f | data 1.0470 | grad 1.0000"
    ops_drawn = dict(re.findall(r'(op\d+) \[shape=ellipse, label="(.*?)"', src))
    assert ops_drawn == {"op2": "sin", "op3": "+ 1", "op4": "exp", "op5": "+", "op6": "/", "op7": "*", "op8": "+"}
    expected = {("n1", "op2"), ("n2", "op3"), ("n0", "op4"), ("n1", "op5"), ("n4", "op5"), ("n3", "op6")}
    expected |= {("n5", "op6"), ("n0", "op7"), ("n1", "op7"), ("n6", "op8"), ("n7", "op8")}
    expected |= {(f"op{i}", f"n{i}") for i in range(2, 9)}
    assert set(edges(src)) == expected
    assert len(tape) == 9


def test_only_ancestors_are_drawn():
    with jitad.Tape():
        x = Value(1.0)
        unrelated = Value(5.0) * 3
        y = (x * x).exp()
        after = y + 1  # recorded after y: not part of y's graph
        src = to_dot(y)
    nodes = records(src)
    assert set(nodes) == {"n0", f"n{y._i - 1}", f"n{y._i}"}
    assert f"n{unrelated._i}" not in src and f"n{after._i}" not in src
    # x * x reads x twice: one edge, named as both operands only for non-commutative ops.
    assert edges(src).count(("n0", f"op{y._i - 1}")) == 1


def test_node_limit_on_a_long_chain_is_fast():
    n = 100_000
    with jitad.Tape():
        y = x = Value(0.5)
        for _ in range(n):
            y = y * 0.999999 + x
        start = time.perf_counter()
        src = to_dot(y, max_nodes=50)
        elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    nodes = records(src)
    assert len(nodes) == 50
    assert f"n{y._i}" in nodes and f"n{y._i - 49}" in nodes
    hidden = (y._i + 1) - 50
    assert f'label="… {hidden} more entries"' in src
    assert ("more", f"op{y._i - 49}") in edges(src)
    assert len(src) < 20_000


def test_deep_chain_has_no_recursion_limit():
    with jitad.Tape():
        y = Value(1.0)
        for _ in range(30_000):  # far past Python's default recursion limit (1000)
            y = y.sin()
        assert len(records(to_dot(y, max_nodes=10**5))) == y._i + 1


def test_constants_params_guards_and_named_ops_are_labelled():
    with jitad.Tape():
        x = Value(2.0)
        y = jitad.maximum(x, 0.0) + jitad.atan2(1.0, x) + 2.0**x
        if x > 1:
            y = y * 1.5
        src = to_dot(y)
    assert "maximum(·, 0)" in src
    assert "atan2(1, ·)" in src
    assert 'label="2 **"' in src
    assert "guard: true" not in src  # the guard does not feed y
    assert 'label="* 1.5"' in src


def test_errors():
    tape = jitad.Tape()
    with tape:
        y = Value(1.0) * 2
        tape.reset()
        with pytest.raises(jitad.StaleValueError, match="reset"):
            to_dot(y)
        z = Value(1.0)
        with pytest.raises(TypeError):
            to_dot(1.0)
        with pytest.raises(ValueError):
            to_dot(z, max_nodes=0)
        with pytest.raises(TypeError, match="labels"):
            to_dot(z, labels={"z": 1.0})


def test_special_characters_are_escaped():
    with jitad.Tape():
        x = Value(1.0)
        src = to_dot(x + 1, labels={'x{0}|"<q>"': x})
    assert r"x\{0\}\|\"\<q\>\"" in src


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
def test_draw_renders_svg():
    pytest.importorskip("graphviz")
    with jitad.Tape():
        a, _, g = micrograd_example()
        g.backward()
        picture = draw(g, labels={"a": a})
    svg = picture.pipe(format="svg").decode()
    assert "<svg" in svg and "24.7041" in svg


def test_draw_without_dot_says_what_to_install(monkeypatch):
    pytest.importorskip("graphviz")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with jitad.Tape():
        y = Value(1.0) + 1
        with pytest.raises(RuntimeError, match=r"apt-get install graphviz.*brew install graphviz"):
            draw(y)


def test_draw_without_the_python_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # makes `import graphviz` fail
    with jitad.Tape():
        y = Value(1.0) + 1
        with pytest.raises(ImportError, match="pip install graphviz"):
            draw(y)
