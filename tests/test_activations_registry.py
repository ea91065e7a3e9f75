"""Activation registry, every entry inside a timm ViT, WAFBC, and the benchmark / GPU-check scripts' CPU paths."""
import functools
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from crrelu_lightning.activations import (
    WAFBC,
    CRReLU,
    StarReLU,
    activation_class,
    available_activations,
    build_activation,
    get_activation,
    register_activation,
)
from crrelu_lightning.activations import registry as registry_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = (
    "relu leaky_relu prelu elu celu selu gelu gelu_tanh silu swish mish softplus sigmoid tanh hardswish identity "
    "star_relu wafbc crrelu crgelu crsilu crmish"
).split()


def _unique_names():
    seen, out = set(), []
    for name in available_activations():
        cls = activation_class(name)
        if cls not in seen:
            seen.add(cls)
            out.append(name)
    return out


@pytest.fixture
def restore_registry():
    saved = dict(registry_mod._REGISTRY)
    yield
    registry_mod._REGISTRY.clear()
    registry_mod._REGISTRY.update(saved)


def test_required_names_registered():
    names = available_activations()
    assert names == sorted(names)
    for name in REQUIRED:
        assert name in names, name
    assert activation_class("swish") is activation_class("silu")


def test_names_case_insensitive():
    assert get_activation("CRReLU") is get_activation("crrelu") is CRReLU
    assert get_activation("  GeLU_Tanh ") is get_activation("gelu-tanh")


def test_classes_and_partials_pass_through():
    assert get_activation(nn.GELU) is nn.GELU
    p = get_activation("crrelu", eps_init=-0.5)
    assert isinstance(p, functools.partial) and p().eps.item() == pytest.approx(-0.5)
    p2 = get_activation(p, sigma=2.0)
    m = p2()
    assert m.eps.item() == pytest.approx(-0.5) and m.sigma == 2.0
    with pytest.raises(TypeError):
        get_activation(42)


def test_unknown_name_lists_every_registered_name():
    with pytest.raises(KeyError) as info:
        get_activation("no_such_activation")
    msg = str(info.value)
    assert "no_such_activation" in msg
    for name in available_activations():
        assert name in msg


def test_register_overwrite_warns(restore_registry):
    @register_activation("my_test_act", "my_alias")
    class MyAct(nn.Module):
        def __init__(self, inplace=False):
            super().__init__()

        def forward(self, x):
            return x * 2

    assert get_activation("MY_ALIAS") is MyAct
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_activation("my_test_act")(MyAct)  # same class again: silent

    with pytest.warns(UserWarning, match="my_test_act"):

        @register_activation("my_test_act")
        class Other(nn.Module):
            def forward(self, x):
                return x

    assert get_activation("my_test_act") is Other
    with pytest.raises(TypeError):
        register_activation("not_a_module")(lambda x: x)


@pytest.mark.parametrize("name", _unique_names())
def test_every_entry_constructible(name):
    x = torch.randn(3, 5)
    for kwargs in ({}, {"inplace": True}):
        m = build_activation(name, **kwargs)
        assert isinstance(m, nn.Module)
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    x2 = x.clone()
    build_activation(name, inplace=True)(x2)
    torch.testing.assert_close(x2, x)  # inplace is accepted but ignored


def test_star_relu_defaults():
    m = StarReLU()
    assert m.scale.item() == pytest.approx(0.8944) and m.bias.item() == pytest.approx(-0.4472)
    x = torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(m(x), 0.8944 * torch.relu(x) ** 2 - 0.4472)


def test_timm_vit_with_every_entry():
    timm = pytest.importorskip("timm")
    for name in _unique_names():
        torch.manual_seed(0)
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            act_layer=get_activation(name),
            img_size=32,
            patch_size=8,
            depth=1,
            embed_dim=32,
            num_heads=2,
            num_classes=3,
        )
        mlp_acts = [m for n, m in model.named_modules() if n.endswith("mlp.act")]
        assert mlp_acts and all(isinstance(a, activation_class(name)) for a in mlp_acts), name
        x = torch.randn(2, 3, 32, 32)
        loss = model(x).logsumexp(-1).sum()
        loss.backward()
        assert torch.isfinite(loss), name
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        if name.startswith("cr"):
            assert mlp_acts[0].eps.grad is not None and mlp_acts[0].eps.grad.abs() > 0


# --------------------------------------------------------------------------- WAFBC
@pytest.mark.parametrize("a,b", [(0.0, 0.0), (1.0, -1.0), (2.5, 2.5)])
def test_wafbc_bad_bounds(a, b):
    with pytest.raises(ValueError, match=f"a={a}, b={b}"):
        WAFBC(a=a, b=b)


def test_wafbc_bad_params():
    with pytest.raises(ValueError, match="nan"):
        WAFBC(a=float("nan"))
    with pytest.raises(ValueError, match="sigma=0"):
        WAFBC(sigma=0.0)


def test_wafbc_maps_gaussian_to_uniform():
    stats = pytest.importorskip("scipy.stats")
    a, b, mu, sigma = -2.0, 3.0, 0.5, 1.7
    m = WAFBC(a=a, b=b, mu=mu, sigma=sigma)
    x = torch.randn(20000, dtype=torch.float64) * sigma + mu
    y = m(x).numpy()
    assert y.min() > a and y.max() < b
    res = stats.kstest(y, stats.uniform(loc=a, scale=b - a).cdf)
    assert res.pvalue > 1e-3, res
    # and the standard N(0,1) case with the default bounds
    y0 = WAFBC()(torch.randn(20000, dtype=torch.float64)).numpy()
    assert stats.kstest(y0, "uniform").pvalue > 1e-3
    assert math.log(b - a) == pytest.approx(math.log(5.0))


# --------------------------------------------------------------------------- scripts
def test_benchmark_script_runs_on_cpu():
    cmd = [
        sys.executable, os.path.join(REPO, "benchmarks", "activations.py"),
        "--activations", "relu", "crrelu", "--numel", "4096", "--repeats", "2", "--warmup", "1", "--impl", "eager",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, CRRELU_DISABLE_COMPILE="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for label in ("| gelu |", "| relu |", "| crrelu (eager) |", "crrelu (paper expression)"):
        assert label in out, out
    row = next(line for line in out.splitlines() if line.startswith("| crrelu (paper expression)"))
    assert float(row.split("|")[5]) >= 3.0  # the paper's expression keeps ≥ 3 input-sized tensors
    row = next(line for line in out.splitlines() if line.startswith("| crrelu (eager) |"))
    assert float(row.split("|")[5]) == pytest.approx(1.0, abs=0.01)


def test_gpu_checks_exits_cleanly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the script would run for minutes")
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "gpu_checks.py")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "CUDA is not available" in res.stdout
