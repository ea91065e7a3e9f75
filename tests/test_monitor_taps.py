"""find_activation_modules / ActivationTaps: which modules are found, and hooks that only fire when enabled."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crrelu_lightning.callbacks._activation_taps import ActivationTaps, find_activation_modules
from crrelu_lightning.activations import build_activation


def _model():
    return nn.Sequential(
        nn.Linear(4, 8),                 # 0
        build_activation("crrelu"),      # 1 registry (CR family)
        nn.Identity(),                   # 2 not an activation
        nn.MultiheadAttention(8, 2),     # 3 lives in torch.nn.modules.activation, but is not one
        nn.Sequential(nn.GELU(), nn.Softmax(-1)),  # 4.0, 4.1 torch's own
        build_activation("identity"),    # 5 registry "identity" is an activation choice
    )


def test_finds_registry_and_torch_activations_only():
    assert list(find_activation_modules(_model())) == ["1", "4.0", "4.1", "5"]


def test_include_exclude_patterns():
    m = _model()
    assert list(find_activation_modules(m, include=["4.*"])) == ["4.0", "4.1"]
    assert list(find_activation_modules(m, exclude=["4.*", "5"])) == ["1"]
    with pytest.raises(ValueError, match=r"\['7\*'\] match no activation module; activation modules are: \['1', '4.0', '4.1', '5'\]"):
        find_activation_modules(m, include=["7*"])
    with pytest.raises(TypeError, match="lists of patterns"):
        find_activation_modules(m, include="4.*")


def test_shared_module_is_listed_once_and_extra_types():
    act = nn.ReLU()
    m = nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 2), act, nn.Linear(2, 2))
    assert list(find_activation_modules(m)) == ["1"]
    assert list(find_activation_modules(m, extra_types=[nn.Linear])) == ["0", "1", "2", "4"]


def test_taps_fire_only_when_enabled_with_detached_tensors():
    m = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.Tanh())
    seen = []

    def fn(index, name, module, x, y):
        seen.append((index, name, x.requires_grad, y.requires_grad, torch.equal(y, module.forward(x))))  # forward() skips hooks

    taps = ActivationTaps(find_activation_modules(m), fn)
    inp = torch.randn(2, 3)
    m(inp)
    assert seen == []
    taps.enabled = True
    m(inp).sum().backward()  # the graph is unaffected by the taps
    assert seen == [(0, "1", False, False, True), (1, "3", False, False, True)]
    taps.enabled = False
    n = len(seen)
    m(inp)
    assert len(seen) == n
    taps.remove()
    taps.enabled = True
    m(inp)
    assert len(seen) == n
