"""Graph pictures: DOT source of the graph a Value depends on, its node limit, rendering."""

import shutil

import numpy as np
import pytest

import jitad
from jitad import Value


def seed():
    x1, x2 = Value(1.5), Value(0.5)
    f = (x2.sin() + 1) / (x2 + x1.exp()) + x1 * x2
    return x1, x2, f


def test_dot_of_the_seed_graph_has_every_entry_and_edge(tape):
    x1, x2, f = seed()
    f.backward()
    dot = jitad.to_dot(f, labels={"x1": x1, "x2": x2, "f": f})
    assert dot.startswith("digraph")
    for name in ("sin", "exp", "div", "mul", "add"):
        assert name in dot or {"div": "/", "mul": "*", "add": "+"}.get(name, name) in dot
    assert "x1" in dot and "x2" in dot
    assert f"{f.data:.4f}"[:5] in dot  # values are shown
    assert f"{x2.grad:.4f}"[:5] in dot  # and gradients
    assert dot.count("->") >= len(tape) - 2  # every operand is an edge


def test_only_the_ancestors_of_y_are_drawn(tape):
    x = Value(2.0)
    unrelated = Value(5.0).exp()
    y = x * x
    dot = jitad.to_dot(y)
    assert "exp" not in dot
    del unrelated


def test_large_graphs_are_summarized_quickly(tape):
    v = Value(0.5)
    for _ in range(100_000):
        v = v * 1.0000001 + 1e-9
    dot = jitad.to_dot(v, max_nodes=50)
    assert "more entries" in dot
    assert dot.count("->") < 300


def test_a_reset_tape_has_no_graph(tape):
    y = Value(1.0) * 2
    tape.reset()
    with pytest.raises(jitad.StaleValueError):
        jitad.to_dot(y)


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot program")
def test_draw_renders_svg(tape):
    pytest.importorskip("graphviz")
    _, _, f = seed()
    svg = jitad.draw(f).pipe(format="svg").decode()
    assert "<svg" in svg


def test_draw_says_what_to_install_without_dot(tape, monkeypatch):
    _, _, f = seed()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises((ImportError, RuntimeError), match="apt-get install graphviz"):
        jitad.draw(f)


def test_to_dot_is_plain_text_without_graphviz(tape):
    _, _, f = seed()
    assert isinstance(jitad.to_dot(f), str)
    assert np.isfinite(f.data)
