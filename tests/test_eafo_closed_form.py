"""The gather-free closed form of EAFO tables and the erf-free GELU it runs with (float32 kernels).

References are independent of the kernel: ``math.erfc`` in float64, a finer derivation (8192 intervals),
the float64 table path, finite differences through gradcheck.
"""
import math

import numpy as np
import pytest
import torch

from crrelu_lightning.activations import build_activation, cr_math, eafo_fit
from crrelu_lightning.activations.eafo_activation import EAFOFitFunction
from crrelu_lightning.entropy.derive import derive_correction
from crrelu_lightning.entropy.distributions import HistogramInput
from crrelu_lightning.entropy.eafo import NormalInput

NAMES = ["eafo_relu", "eafo_gelu", "eafo_silu", "eafo_mish"]


def test_fused_normal_cdf_matches_erfc_in_both_tails():
    x = torch.linspace(-8.0, 8.0, 32001)
    phi = cr_math.normal_cdf_fused(x, cr_math.gauss_f32(x * x, -0.5)).double()
    ref = torch.tensor([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.double().tolist()], dtype=torch.float64)
    rel = (phi - ref).abs() / ref
    assert rel[x.abs() <= 5].max() < 1e-5  # gauss_f32's bound there
    assert rel.max() < 1e-3  # Φ(−8) ≈ 6e-16: still relative, not absolute, accuracy


@pytest.mark.parametrize("name", NAMES)
def test_static_tables_have_a_closed_form_within_tolerance_of_a_finer_derivation(name):
    m = build_activation(name, impl="compiled")
    assert m.uses_closed_form and "closed form" in repr(m)
    d = derive_correction(m.base, NormalInput(0.0, 1.0), grid_size=8192)  # independent, finer grid
    x, h, dh = d.table(normalized=True)
    xt = torch.tensor(x, dtype=torch.float32)
    got = m.correction(xt).double().numpy()
    assert np.abs(got - h).max() <= 1.5 * eafo_fit.VALUE_TOL * np.abs(h).max()
    # slope: the backward's dx for ε = 1 minus the base's derivative
    xg = xt.clone().requires_grad_(True)
    with torch.no_grad():
        m.eps.fill_(1.0)
    (g,) = torch.autograd.grad(m(xg).sum(), xg)
    base = cr_math.base_derivative(m.base, torch.tensor(x)).numpy()
    inner = slice(1, -1)  # end nodes hold one-sided limits
    assert np.abs((g.double().numpy() - base - dh)[inner]).max() <= 1.5 * eafo_fit.SLOPE_TOL * np.abs(dh).max()


@pytest.mark.parametrize("name", NAMES)
def test_closed_form_gradcheck_and_matches_its_plain_expression_in_float64(name):
    m = build_activation(name, impl="eager", form="fit").double()
    assert m.uses_closed_form
    torch.manual_seed(0)
    xs = (torch.randn(50, dtype=torch.float64) * 2.0).requires_grad_(True)
    eps = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, e: EAFOFitFunction.apply(a, e, m.base, m._fit_form, False), (xs, eps))
    y = m(xs)
    dy = torch.randn_like(y)
    gx, ge = torch.autograd.grad(y, (xs, m.eps), dy)
    rx, re = torch.autograd.grad(m.reference(xs), (xs, m.eps), dy)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ge, re, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_float32_kernel_vs_float64_table(name):
    fast = build_activation(name, impl="compiled")
    table = build_activation(name, impl="eager", form="table").double()
    torch.manual_seed(1)
    x = torch.randn(3, 2000) * 2.0
    xf = x.clone().requires_grad_(True)
    y = fast(xf)
    dy = torch.randn_like(y)
    y.backward(dy)
    xd = x.double().requires_grad_(True)
    yd = table.reference(xd)
    yd.backward(dy.double())
    assert (y.double() - yd).abs().max() < 5e-6
    assert (xf.grad.double() - xd.grad).abs().max() < 2e-3 * dy.abs().max()
    assert float(fast.eps.grad) == pytest.approx(float(table.eps.grad), rel=2e-3, abs=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_closed_form_stays_monotone_on_the_branch_for_eps_near_the_bounds(name):
    m = build_activation(name, impl="eager", form="fit")
    assert all(type(v) is float for v in m._fit_form[3])  # float64 evaluation sees the fitted parameters exactly
    start = cr_math.BRANCH_START[m.base]
    x = torch.cat([start + torch.logspace(-6, -1, 2000, dtype=torch.float64),
                   torch.linspace(start + 0.1, 9.0, 200001, dtype=torch.float64)])
    h, dh = eafo_fit.correction_and_slope(x, m._fit_form[3], *m._fit_form[:2])
    f1 = cr_math.base_derivative(m.base, x)
    for eps in (-0.999, 0.999):
        assert (f1 + eps * dh > 0).all()


def test_histogram_tables_fall_back_to_the_table_kernel():
    rng = np.random.default_rng(0)
    counts, edges = np.histogram(rng.standard_t(5, 100_000) * 0.4 + 0.2, bins=256, range=(-2.2, 2.6))
    d = derive_correction("gelu", HistogramInput.from_arrays(counts, edges), grid_size=1024)
    m = build_activation("eafo_gelu", impl="compiled")
    x, h, dh = d.table(normalized=True)
    lo, hi = (v * d.scale for v in d.eps_interval)
    m.set_table(x, h, dh, (lo, hi), envelope=(0.2, 0.4 * math.sqrt(5 / 3)))
    assert not m.uses_closed_form  # the histogram's bumps miss the tolerance: the table is kept
    xs = torch.randn(500)
    ref = build_activation("eafo_gelu", impl="eager", form="table")
    ref.set_table(x, h, dh, (lo, hi))
    torch.testing.assert_close(m(xs), ref(xs), rtol=1e-6, atol=1e-6)


def test_loading_another_table_drops_the_closed_form_and_the_same_one_keeps_it():
    dyn = build_activation("eafo_silu", impl="eager")
    d = derive_correction("silu", NormalInput(0.4, 0.3))
    x, h, dh = d.table(normalized=True)
    dyn.set_table(x, h, dh, (d.eps_interval[0] * d.scale, d.eps_interval[1] * d.scale))  # no envelope: table
    assert not dyn.uses_closed_form
    fresh = build_activation("eafo_silu", impl="eager")
    assert fresh.uses_closed_form
    fresh.load_state_dict(dyn.state_dict())
    assert not fresh.uses_closed_form
    again = build_activation("eafo_silu", impl="eager")
    again.load_state_dict(build_activation("eafo_silu").state_dict())
    assert again.uses_closed_form


def test_bad_form_is_refused():
    with pytest.raises(ValueError, match="form must be one of"):
        build_activation("eafo_gelu", form="poly")
