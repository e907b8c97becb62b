"""Special functions and stable compositions (erf, erfc, lgamma, sign, log_sigmoid,
logaddexp, logsumexp, clip) and NumPy's names on Values, against independent references:
mpmath and scipy.special for values and derivatives, PyTorch float64 for gradients and
Hessians of compositions. (tests/test_ops.py checks every op's row in the op table.)"""

import math

import numpy as np
import pytest
from scipy import special

import jitad
from jitad import Value, ops

torch = pytest.importorskip("torch")
mpmath = pytest.importorskip("mpmath")

LGAMMA = ops.OPS[ops.CODE["lgamma"]].formula

# Points on both sides of the poles, next to the roots of lgamma (1, 2, -2.457...) and of
# digamma (1.4616...), tiny and huge arguments.
LGAMMA_POINTS = [
    1e-300, 1e-8, 0.3, 0.9999, 1.0, 1.0000001, 1.4616321449683622, 1.9998, 2.0, 2.5, 3.7, 11.9, 12.1, 100.5, 1e6,
    1e15, -1e-8, -0.3, -0.9999999, -1.5, -2.4577, -5.5, -100.25, -12345.75,
]  # fmt: skip


@pytest.mark.parametrize("x", LGAMMA_POINTS)
def test_lgamma_and_its_partials_against_mpmath(x):
    mpmath.mp.dps = 50
    got = LGAMMA(x, 0.0)
    xm = mpmath.mpf(x)
    wants = (mpmath.re(mpmath.loggamma(xm)), mpmath.digamma(xm), mpmath.psi(1, xm))
    for k, g, want in zip("vdt", (got[0], got[1], got[3]), wants):
        w = float(want)
        # relative to the value, or absolutely next to a root; beyond double range: inf
        assert g == w if math.isinf(w) else abs(g - want) <= 1e-14 * max(abs(want), 1.0), (k, x, g, want)


def test_lgamma_against_scipy_on_a_grid():
    x = np.concatenate([np.linspace(-20.3, -0.1, 401), np.linspace(0.01, 60.0, 1201)])
    x = x[np.abs(x - np.round(x)) > 1e-3]
    got = np.array([LGAMMA(float(t), 0.0) for t in x])
    np.testing.assert_allclose(got[:, 0], special.gammaln(x), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(got[:, 1], special.digamma(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[:, 3], special.polygamma(1, x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("x", [0.0, -1.0, -7.0, -(2.0**60), -math.inf])
def test_lgamma_poles_are_inf_with_nan_derivatives(x):
    v, d1, _, d2, _, _ = LGAMMA(x, 0.0)
    assert v == math.inf and math.isnan(d1) and math.isnan(d2)


def test_second_partials_of_erf_erfc_log_sigmoid_are_analytic():
    for x in np.linspace(-5, 5, 41):
        g = 2 / math.sqrt(math.pi) * math.exp(-x * x)
        assert ops.OPS[ops.CODE["erf"]].formula(x, 0.0)[3] == pytest.approx(-2 * x * g, rel=1e-14, abs=1e-300)
        assert ops.OPS[ops.CODE["erfc"]].formula(x, 0.0)[3] == pytest.approx(2 * x * g, rel=1e-14, abs=1e-300)
        s = special.expit(x)
        assert ops.OPS[ops.CODE["log_sigmoid"]].formula(x, 0.0)[3] == pytest.approx(-s * (1 - s), rel=1e-13)
    for x in (math.inf, -math.inf, 40.0):
        assert ops.OPS[ops.CODE["erf"]].formula(x, 0.0)[3] == 0.0


def _torch_hessian(f, x):
    return torch.func.hessian(f)(torch.tensor(x, dtype=torch.float64)).numpy()


def _torch_grad(f, x):
    return torch.func.grad(f)(torch.tensor(x, dtype=torch.float64)).numpy()


def test_logsumexp_value_gradient_and_hessian_against_torch():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 16):
        x = rng.normal(size=n) * 3

        def f(x):
            return jitad.logsumexp(x)

        want = torch.logsumexp(torch.tensor(x), 0).item()
        assert jitad.trace(f, x)(x) == pytest.approx(want, rel=1e-15)
        np.testing.assert_allclose(jitad.grad(f)(x), _torch_grad(lambda t: torch.logsumexp(t, 0), x), rtol=1e-14)
        np.testing.assert_allclose(
            jitad.hessian(f)(x), _torch_hessian(lambda t: torch.logsumexp(t, 0), x), rtol=1e-13, atol=1e-16
        )


def test_logsumexp_does_not_overflow_and_gives_softmax():
    x = np.array([1000.0, 1000.0, 999.0, -1e300])
    value, g = jitad.value_and_grad(jitad.logsumexp)(x)
    assert value == pytest.approx(special.logsumexp(x), rel=1e-15)
    # each weight is exp(x_i - partial sum): the partial sums are rounded to ulp(1000) ~ 1e-13
    np.testing.assert_allclose(g, special.softmax(x), rtol=1e-12)
    assert jitad.logsumexp([-np.inf, -np.inf]) == -np.inf
    assert jitad.logsumexp([]) == -np.inf
    assert jitad.logsumexp([2.0, 3.0]) == pytest.approx(np.logaddexp(2.0, 3.0), rel=1e-15)


def test_logaddexp_and_log_sigmoid_gradients_against_torch():
    def f(x):
        return jitad.logaddexp(x[0], x[1]) * jitad.log_sigmoid(x[2]) + jitad.logaddexp(x[2], 3.0)

    def ft(t):
        return torch.logaddexp(t[0], t[1]) * torch.nn.functional.logsigmoid(t[2]) + torch.logaddexp(
            t[2], torch.tensor(3.0, dtype=torch.float64)
        )

    for x in ([0.3, -1.2, 2.0], [50.0, -40.0, -30.0], [-30.0, 30.0, 20.0]):  # torch gives nan further out
        x = np.array(x)
        np.testing.assert_allclose(jitad.grad(f)(x), _torch_grad(ft, x), rtol=1e-13, atol=1e-300)
        # torch's logsigmoid'' loses digits where sigmoid is tiny: exact value below
        np.testing.assert_allclose(jitad.hessian(f)(x), _torch_hessian(ft, x), rtol=1e-6, atol=1e-300)
    mpmath.mp.dps = 40
    s = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
    want = mpmath.log(mpmath.exp(-30) + mpmath.exp(30)) * -s(20) * s(-20) + s(17) * s(-17)
    assert jitad.hessian(f)(np.array([-30.0, 30.0, 20.0]))[2, 2] == pytest.approx(float(want), rel=1e-14)


def test_erf_erfc_lgamma_gradients_against_torch():
    def f(x):
        return jitad.erf(x[0] * x[1]) + jitad.erfc(x[1]) * jitad.lgamma(x[2])

    def ft(t):
        return torch.erf(t[0] * t[1]) + torch.erfc(t[1]) * torch.lgamma(t[2])

    for x in ([0.3, -1.2, 2.5], [1.1, 0.4, -0.5], [-0.2, 2.0, 30.0]):
        x = np.array(x)
        np.testing.assert_allclose(jitad.grad(f)(x), _torch_grad(ft, x), rtol=1e-13)
        # torch's trigamma is accurate to ~1e-10 only (jitad's is checked against mpmath above)
        np.testing.assert_allclose(jitad.hessian(f)(x), _torch_hessian(ft, x), rtol=1e-9, atol=1e-15)


def test_sign_is_recorded_with_zero_derivative():
    def f(x):
        return jitad.sign(x[0]) * x[1] + np.sign(x[1]) * x[0]

    F = jitad.trace(f, np.array([2.0, -3.0]))
    assert F(np.array([2.0, -3.0])) == -3.0 - 2.0
    assert F(np.array([-2.0, 3.0])) == -3.0 - 2.0  # replayed, not frozen
    np.testing.assert_array_equal(F.grad(np.array([-2.0, 3.0])), [1.0, -1.0])
    assert math.isnan(jitad.sign(math.nan)) and jitad.sign(-0.0) == 0.0


def test_clip_is_maximum_then_minimum():
    g = jitad.grad(lambda x: jitad.clip(x[0], -1.0, 1.0) + np.clip(x[1], x[2], 2.0) * 2)
    np.testing.assert_array_equal(g(np.array([0.5, 3.0, 0.0])), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(g(np.array([-3.0, -1.0, 0.0])), [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(g(np.array([1.0, 1.0, 0.0])), [0.5, 2.0, 0.0])  # a tie splits, as jnp.clip
    assert jitad.clip(5.0, 0.0, 1.0) == 1.0


def test_numpy_reductions_of_a_single_value(tape):
    x = Value(0.75)
    for reduce in (np.sum, np.prod, np.max, np.min, np.mean, np.amax, np.amin):
        assert reduce(x) is x
    assert np.sum(x, initial=1.0).data == 1.75
    assert np.max(x, initial=2.0).data == 2.0
    with pytest.raises(np.exceptions.AxisError):
        np.sum(x, axis=0)
    assert np.conj(np.array([x], dtype=object))[0] is x


def test_numpy_ufuncs_and_scipy_special_dispatch_to_jitad(tape):
    x, y = Value(0.3), Value(-1.2)
    assert np.sign(y).data == -1.0
    assert np.logaddexp(x, y).data == pytest.approx(np.logaddexp(0.3, -1.2), rel=1e-15)
    assert special.erf(x).data == pytest.approx(special.erf(0.3), rel=1e-15)
    assert special.erfc(x).data == pytest.approx(special.erfc(0.3), rel=1e-15)
    assert special.gammaln(x).data == pytest.approx(special.gammaln(0.3), rel=1e-14)
    assert special.log_expit(y).data == pytest.approx(special.log_expit(-1.2), rel=1e-15)
    assert special.expit(y).data == pytest.approx(special.expit(-1.2), rel=1e-15)


def test_module_functions_take_plain_numbers():
    assert jitad.erf(0.5) == math.erf(0.5)
    assert jitad.lgamma(4.0) == pytest.approx(math.log(6.0), rel=1e-15)
    assert jitad.log_sigmoid(-800.0) == -800.0
    assert jitad.logaddexp(-np.inf, 0.0) == 0.0
    np.testing.assert_allclose(jitad.erf(np.array([0.1, 0.2])).astype(float), special.erf([0.1, 0.2]), rtol=1e-15)
