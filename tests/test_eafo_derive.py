"""General EAFO derivation against references computed here (complex-step derivatives, scipy quadrature)."""
import math

import numpy as np
import pytest
from scipy import integrate, optimize, special

from crrelu_lightning.entropy.derive import SmoothedHistogram, derive_correction
from crrelu_lightning.entropy.eafo import HistogramInput, NormalInput

_STEP = 1e-30  # complex step: exact first derivatives, no cancellation


# Closed-form f' of the bases, valid for complex x (independent of the module's autograd).
def _slope(base, x):
    if base == "gelu":
        return 0.5 * (1.0 + special.erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    if base == "silu":
        s = 1.0 / (1.0 + np.exp(-x))
        return s * (1.0 + x * (1.0 - s))
    if base == "mish":
        sp = np.log1p(np.exp(x))
        t = np.tanh(sp)
        return t + x * (1.0 - t * t) / (1.0 + np.exp(-x))
    if base == "relu":
        return np.ones_like(x)
    raise ValueError(base)


def _pdf(x, mu, sigma):
    z = (x - mu) / sigma
    return np.exp(-0.5 * z * z) / (sigma * math.sqrt(2.0 * math.pi))


def _minimum(base):
    return optimize.brentq(lambda t: _slope(base, t).real, -3.0, -0.3, xtol=1e-15)


class _Reference:
    """c = (p/f')' by complex step; w = (1 − exp(−((x − b)/L)²))²; h' by a central difference."""

    def __init__(self, base, mu, sigma, taper_width=1.0):
        self.base, self.mu, self.sigma = base, mu, sigma
        self.b = _minimum(base) if base != "relu" else 0.0
        self.length = taper_width * sigma
        self.prob = 0.5 * special.erfc((self.b - mu) / (sigma * math.sqrt(2.0)))
        self.hi = mu + 12.0 * sigma

    def c(self, x):
        z = x + 1j * _STEP
        return (_pdf(z, self.mu, self.sigma) / _slope(self.base, z)).imag / _STEP

    def w(self, x):
        return (-math.expm1(-(((x - self.b) / self.length) ** 2))) ** 2

    def h(self, x):
        return self.w(x) * self.c(x)

    def dh(self, x, step=1e-4):
        return (self.h(x + step) - self.h(x - step)) / (2 * step)

    def integration_by_parts(self):
        val, _ = integrate.quad(lambda x: self.w(x) * self.c(x) ** 2, self.b, self.hi, limit=400, epsabs=1e-13, epsrel=1e-12)
        return -val / self.prob

    def delta_entropy(self, eps):
        lo = self.b + 1e-9 * self.sigma  # h'/f' is 0/0 at b itself (h is analytic across b, so the difference is fine)
        f = lambda x: _pdf(x, self.mu, self.sigma) * math.log1p(eps * self.dh(x) / _slope(self.base, x).real)
        val, _ = integrate.quad(f, lo, self.hi, limit=400, epsabs=1e-12, epsrel=1e-10)
        return val / self.prob


INPUTS = [(0.0, 1.0), (0.3, 1.5)]


@pytest.mark.parametrize("base", ["gelu", "silu", "mish"])
@pytest.mark.parametrize("mu,sigma", INPUTS)
def test_integration_by_parts_identity(base, mu, sigma):
    d = derive_correction(base, NormalInput(mu, sigma))
    ref = _Reference(base, mu, sigma)
    assert d.branch[0] == pytest.approx(ref.b, abs=1e-9)
    assert d.tapered_ends == pytest.approx((ref.b,), abs=1e-9)
    expected = ref.integration_by_parts()
    assert expected < 0
    # dH_B/dε at 0 from the corrected derivative, E[h'/f' | B], against −∫ w c² / P(X∈B) computed here.
    assert d.d_entropy_d_eps(0.0) == pytest.approx(expected, abs=1e-6)
    assert d.integration_by_parts() == pytest.approx(expected, abs=1e-6)


def test_gelu_check_values():
    d = derive_correction("gelu", NormalInput(0.0, 1.0), taper_width=1.0)
    assert d.d_entropy_d_eps(0.0) == pytest.approx(-0.659, abs=5e-4)
    lo, hi = d.eps_interval
    assert lo == pytest.approx(-6.66, abs=5e-3) and hi == pytest.approx(0.310, abs=5e-4)
    assert d.delta_entropy(0.155) == pytest.approx(-0.125, abs=5e-4)
    assert d.delta_entropy(0.31) is None and d.delta_entropy(0.305) is not None


@pytest.mark.parametrize("base,mu,sigma", [("gelu", 0.0, 1.0), ("silu", 0.3, 1.5), ("mish", 0.0, 1.0)])
def test_delta_entropy_against_quadrature(base, mu, sigma):
    d = derive_correction(base, NormalInput(mu, sigma))
    ref = _Reference(base, mu, sigma)
    lo, hi = d.eps_interval
    for frac in (-0.5, -0.1, 0.2, 0.6, 0.9):
        eps = frac * (hi if frac > 0 else -lo)
        assert d.delta_entropy(eps) == pytest.approx(ref.delta_entropy(eps), abs=2e-6), eps


def test_monotone_interval_is_where_the_slope_stays_positive():
    d = derive_correction("silu", NormalInput(0.0, 1.0))
    ref = _Reference("silu", 0.0, 1.0)
    x = np.linspace(ref.b + 1e-3, 8.0, 20001)
    slope = _slope("silu", x).real
    dh = np.array([ref.dh(v) for v in x])
    lo, hi = d.eps_interval
    for eps, ok in ((0.99 * hi, True), (1.02 * hi, False), (0.99 * lo, True), (1.05 * lo, False)):
        assert (np.min(slope + eps * dh) > 0) == ok, eps


def test_relu_correction_is_crrelu_shape():
    d = derive_correction("relu", NormalInput(0.0, 1.0))
    assert d.branch == pytest.approx((0.0, math.inf), abs=1e-14) and d.tapered_ends == ()
    x, h, dh = d.table(normalized=True)
    k = x * np.exp(-0.5 * x * x)
    assert np.corrcoef(h, k)[0, 1] < -0.9999
    np.testing.assert_allclose(h, -k, atol=1e-12)  # normalised: ĥ = −x·e^{−x²/2} exactly
    assert d.d_entropy_d_eps(0.0) == pytest.approx(-1.0 / (2.0 * math.sqrt(2.0)) / math.sqrt(2.0 * math.pi), rel=1e-9)


def test_relu_off_centre_gets_a_taper_and_the_identity_holds():
    d = derive_correction("relu", NormalInput(0.3, 1.5))
    assert d.tapered_ends == pytest.approx((0.0,), abs=1e-14)  # c(0) = p'(0) ≠ 0: the boundary term would not vanish untapered
    ref = _Reference("relu", 0.3, 1.5)
    assert d.d_entropy_d_eps(0.0) == pytest.approx(ref.integration_by_parts(), abs=1e-6)


def test_table_values_and_slopes_match_the_reference():
    d = derive_correction("gelu", NormalInput(0.0, 1.0))
    ref = _Reference("gelu", 0.0, 1.0)
    x, h, dh = d.table(normalized=False)
    inner = slice(5, -5)
    np.testing.assert_allclose(h[inner], [ref.h(v) for v in x[inner]], atol=1e-9)
    np.testing.assert_allclose(dh[inner], [ref.dh(v) for v in x[inner]], atol=1e-6)
    assert h[0] == 0.0 and dh[0] == 0.0 and x[0] == pytest.approx(ref.b, abs=1e-9)


def test_smoothed_histogram_matches_the_widened_normal():
    rng = np.random.default_rng(0)
    counts, edges = np.histogram(rng.standard_normal(2_000_000), bins=400, range=(-8, 8))
    smooth = SmoothedHistogram.from_counts(counts, edges)
    d = derive_correction("gelu", HistogramInput.from_arrays(counts, edges))
    # The kernel-smoothed histogram of N(0, 1) is N(0, 1 + b² + Δ²/12) up to sampling noise.
    width = math.sqrt(1.0 + smooth.bandwidth**2 + (edges[1] - edges[0]) ** 2 / 12.0)
    d_ref = derive_correction("gelu", NormalInput(0.0, width))
    assert d.d_entropy_d_eps(0.0) == pytest.approx(d_ref.d_entropy_d_eps(0.0), rel=0.02)
    assert d.eps_interval[1] == pytest.approx(d_ref.eps_interval[1], rel=0.03)


def test_any_registered_base_and_bad_inputs():
    d = derive_correction("softplus", NormalInput(0.0, 1.0))  # whole-line branch, no taper
    assert d.branch == (-math.inf, math.inf) and d.tapered_ends == ()
    assert d.d_entropy_d_eps(0.0) == pytest.approx(d.integration_by_parts(), abs=1e-9) and d.d_entropy_d_eps(0.0) < 0
    with pytest.raises(KeyError, match="Registered: .*eafo_gelu"):
        derive_correction("no_such_activation", NormalInput())
    with pytest.raises(ValueError, match="no increasing branch"):
        derive_correction(lambda x: -x, NormalInput())
    with pytest.raises(ValueError, match="taper"):
        derive_correction("gelu", NormalInput(), taper="sometimes")
