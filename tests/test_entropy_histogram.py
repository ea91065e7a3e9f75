"""HistogramEstimator mechanics: binning, bookkeeping columns, merging, sampling, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crrelu_lightning.entropy import HistogramEstimator, entropy_from_counts


def test_bins_match_a_numpy_floor_reference():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(3)) * 4
    est = HistogramEstimator(-5, 7, bins=48)
    est.update(x)
    xs = x.double().numpy()
    inside = (xs >= -5) & (xs < 7) & (xs != 0)
    ref = np.bincount(np.floor((xs[inside] + 5) / 0.25).astype(int), minlength=48)
    counts = est.state_tensor().numpy()
    np.testing.assert_array_equal(counts[:48], ref)
    assert counts[48] == (xs < -5).sum() and counts[49] == (xs >= 7).sum()
    assert counts.sum() == x.numel()


def test_special_values_are_counted_not_dropped():
    v = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, -20.0, 20.0, 10.0, -10.0, 0.5])
    est = HistogramEstimator(-10, 10, bins=4)  # Δ = 5
    est.update(v)
    c = est.state_tensor().tolist()
    # bins: [-10,-5) gets -10; [0,5) gets 0.5; hi=10 itself is overflow ([lo, hi) convention).
    assert c == [1, 0, 1, 0, 1, 2, 2, 3]
    out = est.compute()
    assert float(out["nonfinite_count"]) == 3
    assert float(out["num_samples"]) == 7
    assert float(out["zero_fraction"]) == pytest.approx(2 / 7)
    assert float(out["out_of_range_fraction"]) == pytest.approx(3 / 7)


def test_bfloat16_and_multidim_input():
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0))
    a, b = HistogramEstimator(-4, 4, bins=32), HistogramEstimator(-4, 4, bins=32)
    a.update(x.to(torch.bfloat16))
    b.update(x.to(torch.bfloat16).float().reshape(-1))
    assert torch.equal(a.state_tensor(), b.state_tensor())


def test_merge_equals_single_update_and_counts_are_int64():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    whole = HistogramEstimator(-3, 3, bins=60)
    whole.update(x)
    parts = [HistogramEstimator(-3, 3, bins=60) for _ in range(3)]
    for p, chunk in zip(parts, x.chunk(3)):
        p.update(chunk)
    merged = parts[0].merge(parts[1]).merge(parts[2].state_tensor())
    assert merged.state_tensor().dtype == torch.int64
    assert torch.equal(merged.state_tensor(), whole.state_tensor())
    merged.reset()
    assert int(merged.state_tensor().sum()) == 0
    with pytest.raises(ValueError, match="different layouts"):
        whole.merge(HistogramEstimator(-3, 3, bins=30))


def test_rows_are_independent():
    est = HistogramEstimator(-1, 1, bins=10, num_estimators=3)
    est.update(torch.full((5,), 0.15), index=2)
    est.update(torch.full((2,), -0.95), index=0)
    c = est.state_tensor()
    assert c.shape == (3, 14)
    assert c[2, 5] == 5 and c[0, 0] == 2 and int(c[1].sum()) == 0
    out = est.compute()
    assert out["entropy"].shape == (3,)
    assert math.isnan(float(out["entropy"][1]))  # empty row: nothing to estimate
    with pytest.raises(IndexError, match="index must be in"):
        est.update(torch.ones(1), index=3)


def test_point_mass_at_zero_has_zero_entropy():
    est = HistogramEstimator(-1, 1, bins=10)
    est.update(torch.zeros(100))
    out = est.compute()
    assert float(out["entropy"]) == 0.0 and float(out["zero_fraction"]) == 1.0
    assert math.isnan(float(out["differential_entropy"]))


def test_same_seed_same_counts_and_global_rng_untouched():
    x = torch.randn(100000, generator=torch.Generator().manual_seed(5))
    runs = []
    for seed in (11, 11, 12):
        est = HistogramEstimator(-5, 5, bins=100, seed=seed)
        rng_before = torch.get_rng_state()
        for _ in range(3):
            est.update(x, max_samples=1000)
        assert torch.equal(torch.get_rng_state(), rng_before)
        assert int(est.state_tensor().sum()) == 3000
        runs.append(est.state_tensor().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_explicit_generator_is_used():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(5))
    a, b = HistogramEstimator(-5, 5, bins=100, seed=1), HistogramEstimator(-5, 5, bins=100, seed=2)
    a.update(x, max_samples=500, generator=torch.Generator().manual_seed(9))
    b.update(x, max_samples=500, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.state_tensor(), b.state_tensor())


def test_subsample_is_unbiased_for_bin_frequencies():
    # Sampling with replacement: each drawn value is a uniform pick, so sampled frequencies match
    # the full-tensor frequencies within multinomial noise (sd ≤ sqrt(0.25/n)).
    x = torch.randn(200000, generator=torch.Generator().manual_seed(6))
    full, sub = HistogramEstimator(-4, 4, bins=8), HistogramEstimator(-4, 4, bins=8)
    full.update(x)
    sub.update(x, max_samples=40000)
    pf = full.state_tensor()[:8].double() / x.numel()
    ps = sub.state_tensor()[:8].double() / 40000
    assert torch.all((pf - ps).abs() < 5 * math.sqrt(0.25 / 40000))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lo=1.0, hi=1.0, bins=10), r"lo=1\.0, hi=1\.0"),
        (dict(lo=2.0, hi=-1.0, bins=10), r"lo=2\.0, hi=-1\.0"),
        (dict(lo=0.0, hi=1.0, bins=1), r"bins=1"),
        (dict(lo=0.0, hi=1.0, bins=0), r"bins=0"),
        (dict(lo=0.0, hi=1.0, bins=2.5), r"bins=2\.5"),
        (dict(lo=0.0, hi=1.0), r"exactly one of bins and bin_width"),
        (dict(lo=0.0, hi=1.0, bin_width=0.3), r"bin_width=0\.3"),
        (dict(lo=0.0, hi=1.0, bin_width=-0.1), r"-0\.1"),
        (dict(lo=0.0, hi=math.inf, bins=4), r"hi=inf"),
    ],
)
def test_bad_configuration_names_the_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HistogramEstimator(**kwargs)


def test_bad_counts_are_rejected():
    with pytest.raises(TypeError, match="integer"):
        entropy_from_counts(torch.ones(10), 0.1)
    with pytest.raises(ValueError, match="bin_width"):
        entropy_from_counts(torch.ones(10, dtype=torch.int64), 0.0)
    with pytest.raises(ValueError, match="max_samples"):
        HistogramEstimator(0, 1, bins=4).update(torch.ones(3), max_samples=0)
