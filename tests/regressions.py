"""Shrunk cases from the differential tests (test_differential.py), kept as explicit
regression tests: each is a program and the points it is checked at."""

from typing import NamedTuple

from programs import Node, ScalarProgram


class Case(NamedTuple):
    name: str
    program: ScalarProgram
    x0: list  # recorded at
    x1: list  # replayed at (grad, hvp, hessian)
    v: list  # direction for hvp
    X: list  # batch rows (grad_batch)
    references: tuple = ("differences", "torch")  # which references the case is fair for


REGRESSIONS = [
    # Fan-out through a tie of maximum, with the same node on both sides.
    Case(
        "maximum_tie_fan_out",
        ScalarProgram(
            2, [Node("mul", (0, 1), "tanh", 1.0), Node("maximum", (2, 2), "tanh", 1.0), Node("sin", (3,), "tanh", 1.0)]
        ),
        [0.5, -1.25],
        [1.5, 0.75],
        [1.0, -0.5],
        [[0.5, 0.5], [-2.0, 1.0]],
        references=("torch",),  # a tie: differences straddle the kink
    ),
    # Fan-out of inputs and nodes into a chain of every kind of arity and constant position.
    Case(
        "fan_out_chain",
        ScalarProgram(
            2,
            [
                Node("mul", (0, 1), "tanh", 1.0),
                Node("exp", (2,), "sin", 1.0),
                Node("div", (3, 0), "rational", 1.0),
                Node("powc", (4,), "atan", 2.5),
                Node("atan2", (5, 1), "cos", 1.0),
                Node("hypot", (6, 2), "tanh", 1.0),
                Node("sub", (-0.5, 7), "tanh", 1.0),
                Node("log", (8,), "sigmoid", 1.0),
                Node("mul", (9, 2), "tanh", 1.0),
            ],
        ),
        [0.4, -0.7],
        [1.1, 0.3],
        [0.5, -1.0],
        [[0.2, 0.2], [-1.0, 1.5]],
    ),
    # Found at JITAD_EXAMPLES_SCALE=10: pow with an exponent of exactly 0 (hvp). jitad was
    # right; PyTorch's double backward drops d2/db de there (see torch_pow_quirk), so the
    # torch reference skips the second-order check at such points.
    Case(
        "pow_with_a_zero_exponent",
        ScalarProgram(
            2,
            [
                Node("neg", (0,), "tanh", 0.0),
                Node("pow", (1, 0), "tanh", 0.0),
                Node("add", (0, 0), "tanh", 0.0),
                Node("add", (4, 2), "tanh", 0.0),
                Node("add", (5, 3), "tanh", 0.0),
            ],
        ),
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, 1.0],
        [[0.0, 0.0]],
    ),
]
