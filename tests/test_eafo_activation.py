"""EAFOActivation: fused forward/backward vs the plain expression, gradcheck, CRReLU shape, compile, state."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from crrelu_lightning.activations import EAFOActivation, activation_class, build_activation
from crrelu_lightning.activations.eafo_activation import EAFOFunction
from crrelu_lightning.entropy.derive import derive_correction
from crrelu_lightning.entropy.eafo import NormalInput

NAMES = ["eafo_relu", "eafo_gelu", "eafo_silu", "eafo_mish"]


def _f64(name, **kw):
    m = build_activation(name, impl="eager", **kw).double()
    d = derive_correction(m.base, NormalInput(0.0, 1.0))
    x, h, dh = d.table(normalized=True)
    lo, hi = d.eps_interval
    m.set_table(x, h, dh, (lo * d.scale, hi * d.scale))  # float64 table (construction rounds to float32)
    return m


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_constructible_without_arguments(name):
    m = build_activation(name, inplace=True)
    assert isinstance(m, EAFOActivation) and m.eps.item() == 0.5
    assert m.eps_interval[0] < -1.0 + 1e-6 and m.eps_interval[1] >= 1.0 - 1e-6  # normalised: (−1, 1) is monotone


@pytest.mark.parametrize("name", NAMES)
def test_fused_matches_plain_expression_and_gradcheck(name):
    m = _f64(name)
    torch.manual_seed(0)
    x = (torch.randn(3, 257, dtype=torch.float64) * 2.0).requires_grad_(True)
    y = m(x)
    dy = torch.randn_like(y)
    gx, ge = torch.autograd.grad(y, (x, m.eps), dy)
    yr = m.reference(x)
    rx, re = torch.autograd.grad(yr, (x, m.eps), dy)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ge, re, rtol=1e-10, atol=1e-10)
    eps = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    xs = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, e: EAFOFunction.apply(a, e, m._coef, m._grid, m.base, False), (xs, eps))


def test_generic_base_gradcheck():
    m = EAFOActivation(base="softplus", impl="eager").double()
    eps = m.eps
    xs = torch.randn(30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: m(a), (xs,))
    y = m(xs)
    torch.testing.assert_close(y, m.reference(xs))
    (g,) = torch.autograd.grad(y.sum(), eps)
    torch.testing.assert_close(g, m.correction(xs.detach()).sum())


def test_table_interpolates_the_derivation_and_is_c1():
    m = _f64("eafo_gelu")
    d = derive_correction("gelu", NormalInput(0.0, 1.0), grid_size=8192)  # a finer, independent grid
    x, h, dh = d.table(normalized=True)
    got = m.correction(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, h, atol=2e-7)
    # C¹: the slope from the backward on either side of a node agrees.
    nodes = torch.linspace(float(m.grid[0]), float(m.grid[1]), m.grid_size + 1, dtype=torch.float64)[100:900:50]
    for off in (-1e-9, 1e-9):
        xs = (nodes + off).requires_grad_(True)
        with torch.no_grad():
            m.eps.fill_(1.0)
        (g,) = torch.autograd.grad(m(xs).sum() - torch.nn.functional.gelu(xs).sum(), xs)
        if off < 0:
            left = g
    torch.testing.assert_close(g, left, rtol=1e-6, atol=1e-8)


def test_eafo_relu_is_crrelu_with_opposite_eps():
    m = _f64("eafo_relu")
    x = torch.linspace(0.0, 6.0, 2001, dtype=torch.float64)
    k = x * torch.exp(-x * x / 2)
    h = m.correction(x)
    assert torch.corrcoef(torch.stack([h, k]))[0, 1] < -0.9999
    cr = build_activation("crrelu", eps_init=-0.5, impl="reference").double()
    with torch.no_grad():
        m.eps.fill_(0.5)
    torch.testing.assert_close(m(x), cr(x), atol=1e-9, rtol=0)


def _forward_saving(fn, min_numel: int):
    """fn()'s output and the tensors of at least ``min_numel`` elements autograd saved while computing it."""
    big = []

    def pack(t):
        if t.numel() >= min_numel:
            big.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, big


def test_backward_saves_only_x():
    m = build_activation("eafo_gelu", impl="eager")
    x = torch.randn(64, 128, requires_grad=True)
    y, big = _forward_saving(lambda: m(x * 1.0), x.numel())
    assert len(big) == 1 and big[0].shape == x.shape
    y.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_zero_graph_breaks(name):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 16), build_activation(name), nn.Linear(16, 4))
    explain = torch._dynamo.explain(model)(torch.randn(5, 3, 8))
    assert explain.graph_break_count == 0 and explain.graph_count == 1


@pytest.mark.slow
def test_compiled_model_matches_eager():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 16), build_activation("eafo_gelu"), nn.Linear(16, 4))
    x = torch.randn(5, 3, 8)
    y = torch.compile(model, fullgraph=True)(x)
    y.sum().backward()
    g = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model[1].impl = "reference"
    model(x).sum().backward()
    for a, p in zip(g, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["fit", "table"])
def test_outer_compile_saves_only_x_and_the_next_layers_input(form):
    """Under a user's torch.compile the bodies are opaque custom ops: AOTAutograd keeps x (EAFO's backward) and
    y (the next Linear's weight gradient), not the forward's ĥ or masks that a traced body let it share."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), build_activation("eafo_gelu", form=form, impl="compiled"), nn.Linear(64, 4))
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(32, 8)
    compiled(x).sum().backward()  # compile once outside the hooks
    model.zero_grad()
    out, saved = _forward_saving(lambda: compiled(x), 32 * 64)
    out.sum().backward()
    big = [t for t in saved if t.numel() == 32 * 64]  # activation-sized (the table's coefficients are larger)
    assert len(big) == 2
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model[1].impl = "reference"
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_and_set_table():
    a = build_activation("eafo_silu", impl="eager")
    d = derive_correction("silu", NormalInput(0.4, 0.3))
    x, h, dh = d.table()
    a.set_table(x, h, dh, (d.eps_interval[0] * d.scale, d.eps_interval[1] * d.scale))
    with torch.no_grad():
        a.eps.fill_(0.25)
    b = build_activation("eafo_silu", impl="eager")
    b.load_state_dict(a.state_dict())
    xs = torch.randn(1000) * 0.5
    torch.testing.assert_close(a(xs), b(xs), rtol=0, atol=0)
    assert float(b.grid[0]) == pytest.approx(d.x[0], abs=1e-6)
    with pytest.raises(ValueError, match="grid nodes"):
        b.set_table(x[:10], h[:10], dh[:10], (-1, 1))


def test_half_precision_and_nan():
    m = build_activation("eafo_gelu", impl="eager")
    x = torch.tensor([float("nan"), -100.0, 0.0, 1.0, 100.0])
    y = m(x).detach()
    assert math.isnan(y[0]) and torch.isfinite(y[1:]).all()
    assert y[-1] == pytest.approx(100.0) and y[1] == pytest.approx(0.0, abs=1e-6)
    xb = torch.randn(100).to(torch.bfloat16).requires_grad_(True)
    yb = m(xb)
    assert yb.dtype == torch.bfloat16
    yb.sum().backward()
    assert xb.grad.dtype == torch.bfloat16


def test_unknown_base_lists_names():
    with pytest.raises(KeyError, match="Registered: .*eafo_gelu"):
        EAFOActivation(base="nope")
    assert activation_class("eafo").base == "gelu"
