"""Histogram entropy estimates against the closed-form values listed in docs/entropy.md.

Tolerance for each case (n samples, m occupied bins, bin width Δ):

    tol = 5·sd + (m − 1)/(2n) + Δ²·J/24

* sd: the estimate fluctuates like the Monte-Carlo mean of −ln p(Y), so sd ≈ sqrt(Var(−ln p(Y))/n)
  (measured on the same sample with the true density), plus the multinomial term sqrt((m−1)/2)/n.
* (m − 1)/(2n): the plug-in bias is −(m − 1)/(2n) to first order; Miller–Madow removes it, so the
  residual is bounded by the size of the correction itself.
* Δ²·J/24: binning a smooth density shifts the entropy by ≈ Δ²/24·∫p'²/p (J = Fisher information
  for location, estimated on the sample as E[(d ln p/dy)²]; edges sit on discontinuities).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from crrelu_lightning.entropy import HistogramEstimator

N = 10**6
HALF_NORMAL = 0.5 * math.log(math.pi * math.e / 2)
NORMAL = 0.5 * math.log(2 * math.pi * math.e)


def _gen(seed: int = 1234) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(n: int = N, seed: int = 1234) -> torch.Tensor:
    return torch.randn(n, generator=_gen(seed), dtype=torch.float64)


def _log_phi(x):
    return -0.5 * x**2 - 0.5 * math.log(2 * math.pi)


def _check(y, info, score, lo, hi, delta, reference, zero_atom=False):
    """Estimate H(y) and compare with ``reference`` at the tolerance in the module docstring.

    info: −ln p(Y_i) per sample (w.r.t. the mixed measure for an atom), score: d ln p/dy per
    continuous sample (for J).
    """
    est = HistogramEstimator(lo, hi, bin_width=delta)
    est.update(y)
    out = est.compute()
    n = float(out["num_samples"])
    m = float(out["occupied_bins"])
    assert float(out["out_of_range_fraction"]) < 1e-6
    sd = float(info.std()) / math.sqrt(n) + math.sqrt((m - 1) / 2) / n
    tol = 5 * sd + (m - 1) / (2 * n) + delta**2 * float((score**2).mean()) / 24
    err = float(out["entropy"]) - reference
    assert abs(err) <= tol, f"estimate {float(out['entropy']):.6f} vs {reference:.6f}: error {err:.2e} > tol {tol:.2e}"
    # The Monte-Carlo mean of −ln p(Y) is an independent estimate of the same number.
    assert abs(float(info.mean()) - reference) <= 5 * float(info.std()) / math.sqrt(n) + 1e-12
    if not zero_atom:
        assert float(out["zero_fraction"]) == 0.0
    return out


def test_normal_within_5_millinats_at_1e6():
    x = _normal()
    out = _check(x, -_log_phi(x), -x, -10, 10, 0.01, NORMAL)
    assert abs(float(out["entropy"]) - NORMAL) <= 0.005  # the acceptance bound
    assert torch.equal(out["entropy"], out["differential_entropy"])  # no atom


def test_miller_madow_sanity_values_from_design_doc():
    # Reference: Δ=0.01, n=1e5: plug-in ≈ 1.4145, Miller–Madow ≈ 1.4181 (one sample: ± 3 sd = 0.007).
    est = HistogramEstimator(-10, 10, bin_width=0.01)
    est.update(_normal(10**5, seed=7))
    plug, mm = est.compute(miller_madow=False), est.compute()
    corr = (float(mm["occupied_bins"]) - 1) / (2 * 10**5)
    assert float(mm["entropy"]) - float(plug["entropy"]) == pytest.approx(corr, rel=1e-9)
    assert abs(float(plug["entropy"]) - 1.4145) < 0.007 and abs(float(mm["entropy"]) - 1.4181) < 0.007


def test_uniform():
    u = torch.rand(N, generator=_gen(), dtype=torch.float64)
    _check(u, torch.zeros_like(u), torch.zeros_like(u), -1, 2, 0.01, 0.0)


def test_exponential():
    e = torch.empty(N, dtype=torch.float64).exponential_(1.0, generator=_gen())
    _check(e, e, -torch.ones_like(e), -1, 40, 0.01, 1.0)


def test_laplace():
    g = _gen()
    mag = torch.empty(N, dtype=torch.float64).exponential_(1.0, generator=g)
    sign = torch.randint(0, 2, (N,), generator=g).to(torch.float64) * 2 - 1
    y = sign * mag
    _check(y, mag + math.log(2), -sign, -40, 40, 0.01, 1 + math.log(2))


def test_half_normal():
    y = _normal().abs()
    _check(y, -_log_phi(y) - math.log(2), -y, -1, 10, 0.01, HALF_NORMAL)
    assert HALF_NORMAL == pytest.approx(0.725791, abs=1e-6)


def test_relu_of_normal_is_mixed():
    x = _normal()
    y = torch.relu(x)
    pos = x > 0
    # Atom: −ln π0 (π0 = 1/2); density part: −ln(½·p_half(y)) = −ln φ(y).
    info = torch.where(pos, -_log_phi(x), torch.full_like(x, math.log(2)))
    ref = math.log(2) + 0.5 * HALF_NORMAL
    assert ref == pytest.approx(1.056043, abs=1e-6)
    out = _check(y, info, -x[pos], -10, 10, 0.01, ref, zero_atom=True)
    assert float(out["zero_fraction"]) == pytest.approx(0.5, abs=5 * 0.5 / math.sqrt(N))
    assert float(out["differential_entropy"]) == pytest.approx(HALF_NORMAL, abs=0.005)


def test_leaky_relu():
    x = _normal()
    slope = 0.1
    y = torch.nn.functional.leaky_relu(x, slope)
    fprime = torch.where(x > 0, 1.0, slope)
    ref = NORMAL + 0.5 * math.log(slope)
    assert ref == pytest.approx(0.267646, abs=1e-6)
    _check(y, -_log_phi(x) + torch.log(fprime), -x / fprime, -10, 10, 0.01, ref)


def _transform_reference(logfprime) -> float:
    """H(f(X)) = H(X) + E[ln f'(X)], X ~ N(0,1), by quadrature (independent of the estimator)."""
    val, _ = integrate.quad(lambda x: stats.norm.pdf(x) * logfprime(x), -12, 12, limit=200)
    return NORMAL + val


def test_tanh():
    ref = _transform_reference(lambda x: math.log(1 - math.tanh(x) ** 2) if abs(x) < 18 else -2 * abs(x))
    assert ref == pytest.approx(0.669804, abs=1e-6)
    x = _normal()
    t = torch.tanh(x)
    logfp = torch.log1p(-t**2)
    # d ln p_Y/dy = (d/dx [ln φ(x) − ln f'(x)]) / f'(x) = (−x + 2 tanh x) / (1 − tanh² x)
    _check(t, -_log_phi(x) + logfp, (2 * t - x) / torch.exp(logfp), -1, 1, 0.001, ref)


def test_sigmoid():
    ref = _transform_reference(lambda x: math.log(stats.logistic.pdf(x)))
    assert ref == pytest.approx(-0.193180, abs=1e-6)
    x = _normal()
    s = torch.sigmoid(x)
    fp = s * (1 - s)
    _check(s, -_log_phi(x) + torch.log(fp), (-x - 1 + 2 * s) / fp, 0, 1, 0.0005, ref)


def test_affine_transform_statistically():
    # H(aY + c) = H(Y) + ln|a| on a fixed bin grid: both estimates carry their own tolerance.
    x = _normal()
    for a, c in ((3.0, -1.0), (-0.5, 2.0)):
        y = a * x + c
        _check(y, -_log_phi(x) + math.log(abs(a)), -x / a, -20, 20, 0.01, NORMAL + math.log(abs(a)))


def test_affine_transform_with_scaled_bins_is_exact():
    # With the grid mapped by the same dyadic affine map, every value lands in the corresponding
    # bin (all arithmetic exact in float64), so counts are identical and h shifts by exactly ln a.
    x = _normal().to(torch.float32).to(torch.float64)
    a, c, lo, hi, delta = 2.0, 0.5, -8.0, 8.0, 1 / 64
    e1 = HistogramEstimator(lo, hi, bin_width=delta)
    e2 = HistogramEstimator(a * lo + c, a * hi + c, bin_width=a * delta)
    e1.update(x)
    e2.update(a * x + c)
    assert torch.equal(e1.state_tensor()[:-2], e2.state_tensor()[:-2])  # bins, under/overflow
    h1, h2 = e1.compute()["differential_entropy"], e2.compute()["differential_entropy"]
    assert float(h2 - h1) == pytest.approx(math.log(a), abs=1e-12)


def test_numpy_reference_of_the_formula():
    # A second implementation of h and H_mix in numpy on random count rows.
    rng = np.random.default_rng(0)
    for _ in range(5):
        bins = rng.integers(0, 50, size=30) * (rng.random(30) < 0.7)
        zeros = int(rng.integers(0, 200))
        row = np.concatenate([bins, [3, 4, zeros, 5]])
        out = HistogramEstimator(0, 3, bins=30).merge(torch.as_tensor(row, dtype=torch.int64)).compute()
        n_c = bins.sum()
        q = bins[bins > 0] / n_c
        h = -(q * np.log(q)).sum() + math.log(0.1) + ((bins > 0).sum() - 1) / (2 * n_c)
        pi0 = zeros / (zeros + n_c)
        hb = -sum(p * math.log(p) for p in (pi0, 1 - pi0) if p > 0)
        assert float(out["differential_entropy"]) == pytest.approx(h, rel=1e-12)
        assert float(out["entropy"]) == pytest.approx(hb + (1 - pi0) * h, rel=1e-12)
        assert float(out["zero_fraction"]) == pytest.approx(zeros / (n_c + 7 + zeros))
        assert float(out["out_of_range_fraction"]) == pytest.approx(7 / (n_c + 7 + zeros))
        assert float(out["nonfinite_count"]) == 5
