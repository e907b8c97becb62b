"""NumPy on Values as NumPy users write it: a corpus of test functions in the style of
SciPy's global-optimization benchmarks (written once for float arrays, run unchanged on
object arrays of Values), differentiated eagerly and traced (replayed at a second point)
against central differences of the float version."""

import numpy as np
import pytest
from conftest import central_gradient
from scipy.optimize import rosen

import jitad
from jitad import Value

PI = np.pi


def idx(x):
    return np.arange(1, len(x) + 1)


CORPUS = {
    "ackley": lambda x: -20 * np.exp(-0.2 * np.sqrt(np.mean(x**2))) - np.exp(np.mean(np.cos(2 * PI * x))) + 20 + np.e,
    "rastrigin": lambda x: 10 * len(x) + np.sum(x**2 - 10 * np.cos(2 * PI * x)),
    "griewank": lambda x: np.sum(x**2) / 4000 - np.prod(np.cos(x / np.sqrt(idx(x)))) + 1,
    "schwefel26": lambda x: 418.9829 * len(x) - np.sum(x * np.sin(np.sqrt(np.abs(x)))),
    "pinter": lambda x: (
        np.sum(idx(x) * x**2)
        + np.sum(20 * idx(x) * np.sin(np.roll(x, 1) * np.sin(x) - x + np.sin(np.roll(x, -1))) ** 2)
        + np.sum(idx(x) * np.log(1 + idx(x) * (np.roll(x, 1) ** 2 - 2 * x + 3 * np.roll(x, -1) - np.cos(x) + 1) ** 2))
        / np.log(10)
    ),
    "levy": lambda x: (
        np.sin(PI * (1 + (x[0] - 1) / 4)) ** 2
        + np.sum(((x[:-1] - 1) / 4) ** 2 * (1 + 10 * np.sin(PI * (1 + (x[:-1] - 1) / 4) + 1) ** 2))
        + ((x[-1] - 1) / 4) ** 2 * (1 + np.sin(2 * PI * (1 + (x[-1] - 1) / 4)) ** 2)
    ),
    "michalewicz": lambda x: -np.sum(np.sin(x) * np.sin(idx(x) * x**2 / PI) ** 20),
    "zakharov": lambda x: np.sum(x**2) + np.sum(0.5 * idx(x) * x) ** 2 + np.sum(0.5 * idx(x) * x) ** 4,
    "alpine01": lambda x: np.sum(np.abs(x * np.sin(x) + 0.1 * x)),
    "alpine02": lambda x: np.prod(np.sqrt(x) * np.sin(x)),
    "salomon": lambda x: 1 - np.cos(2 * PI * np.sqrt(np.sum(x**2))) + 0.1 * np.sqrt(np.sum(x**2)),
    "sphere": lambda x: np.sum(x**2),
    "rosenbrock": rosen,
    "styblinski_tang": lambda x: np.sum(x**4 - 16 * x**2 + 5 * x) / 2,
    "qing": lambda x: np.sum((x**2 - idx(x)) ** 2),
    "trid": lambda x: np.sum((x - 1) ** 2) - np.sum(x[1:] * x[:-1]),
    "schwefel22": lambda x: np.sum(np.abs(x)) + np.prod(np.abs(x)),
    "schwefel21": lambda x: np.max(np.abs(x)),
    "sum_squares": lambda x: np.sum(idx(x) * x**2),
    "dixon_price": lambda x: (x[0] - 1) ** 2 + np.sum(idx(x)[1:] * (2 * x[1:] ** 2 - x[:-1]) ** 2),
    "csendes": lambda x: np.sum(x**6 * (2 + np.sin(1 / x))),
    "exponential": lambda x: -np.exp(-0.5 * np.sum(x**2)),
    "cosine_mixture": lambda x: -0.1 * np.sum(np.cos(5 * PI * x)) + np.sum(x**2),
    "deb01": lambda x: -np.sum(np.sin(5 * PI * x) ** 6) / len(x),
    "mishra11": lambda x: (np.mean(np.abs(x)) - np.prod(np.abs(x)) ** (1.0 / len(x))) ** 2,
    "xin_she_yang02": lambda x: np.sum(np.abs(x)) * np.exp(-np.sum(np.sin(x**2))),
    "signed_squares": lambda x: np.sum(np.sign(x) * x**2) + np.max(x) * np.min(x),
    "weierstrass": lambda x: np.sum(
        sum(0.5**k * np.cos(2 * PI * 3**k * (x + 0.5)) for k in range(4))
    ),  # fmt: skip
    "vincent": lambda x: -np.sum(np.sin(10 * np.log(x))),
    "wavy": lambda x: 1 - np.mean(np.cos(10 * x) * np.exp(-(x**2) / 2)),
    "quintic": lambda x: np.sum(np.abs(x**5 - 3 * x**4 + 4 * x**3 + 2 * x**2 - 10 * x - 4)),
    "happy_cat": lambda x: (
        np.abs(np.sum(x**2) - len(x)) ** 0.25 + (0.5 * np.sum(x**2) + np.sum(x)) / len(x) + 0.5
    ),
    "clipped_quadratic": lambda x: np.sum(np.clip(x, -0.5, 0.5) ** 2 + np.maximum(x, 0.1) * x),
    "reductions_of_one": lambda x: np.sum(x[0]) * np.prod(x[1]) + np.max(x[2]) - np.min(x[3]) + np.mean(x[4]),
}

# Functions defined for positive x only; the others are sampled on [-2, 2].
POSITIVE = {"alpine02", "vincent"}


def _point(name, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.3, 3.0, 5) if name in POSITIVE else rng.uniform(-2.0, 2.0, 5)


def _reference(f, x):
    return central_gradient(lambda *z: f(np.array(z)), x, h=1e-7)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_eager_gradient_matches_central_differences(name):
    f = CORPUS[name]
    x = _point(name, 0)
    with jitad.Tape():
        xs = np.array([Value(float(t)) for t in x], dtype=object)
        y = f(xs)
        assert y.data == pytest.approx(f(x), rel=1e-13, abs=1e-13)
        g = jitad.gradients(y, xs)
    np.testing.assert_allclose(g, _reference(f, x), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_traced_gradient_matches_central_differences_at_a_new_point(name):
    f = CORPUS[name]
    F = jitad.trace(f, _point(name, 0))
    for seed in (1, 2):
        x = _point(name, seed)
        value, g = F.value_and_grad(x)
        assert value == pytest.approx(f(x), rel=1e-13, abs=1e-13)
        np.testing.assert_allclose(g, _reference(f, x), rtol=2e-6, atol=1e-6)
