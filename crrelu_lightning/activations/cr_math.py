"""Elementwise math of the CR family (EAFO.md §4), shared by kernels, EAFO and tests.

    f(x) = g(x) + ε·k_σ(x),   k_σ(x) = x·exp(−x²/(2σ²)),   k_σ'(x) = (1 − x²/σ²)·exp(−x²/(2σ²))

``g`` is one of the bases below; every function here is plain torch so it can be compiled.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

CR_BASES = ("relu", "gelu", "silu", "mish")

# Left end of each base's invertible (increasing) branch: the argmin of g (EAFO.md §5).
BRANCH_START = {
    "relu": 0.0,
    "gelu": -0.7517916243,
    "silu": -1.2784645428,
    "mish": -1.1923465,
}

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def base_forward(base: str, x: torch.Tensor) -> torch.Tensor:
    if base == "relu":
        return torch.relu(x)
    if base == "gelu":
        return F.gelu(x)
    if base == "silu":
        return F.silu(x)
    if base == "mish":
        return F.mish(x)
    raise ValueError(f"Unknown CR base {base!r}; expected one of {CR_BASES}")


def base_derivative(base: str, x: torch.Tensor) -> torch.Tensor:
    """g'(x) in closed form."""
    if base == "relu":
        return (x > 0).to(x.dtype)
    if base == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT2))
        pdf = torch.exp(-0.5 * x * x) * _INV_SQRT2PI
        return cdf + x * pdf
    if base == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if base == "mish":
        t = torch.tanh(F.softplus(x))
        return t + x * (1.0 - t * t) * torch.sigmoid(x)
    raise ValueError(f"Unknown CR base {base!r}; expected one of {CR_BASES}")


def base_backward(base: str, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dy·g'(x), written so that compilers fuse it into one pass (ReLU: a select, no multiply)."""
    if base == "relu":
        return torch.where(x > 0, dy, torch.zeros_like(dy))
    return dy * base_derivative(base, x)


def correction(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """k_σ(x) = x·exp(−x²/(2σ²)) = ∂f/∂ε."""
    return x * torch.exp(x * x * (-0.5 / (sigma * sigma)))


def correction_derivative(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """k_σ'(x) = (1 − x²/σ²)·exp(−x²/(2σ²))."""
    inv_s2 = 1.0 / (sigma * sigma)
    x2 = x * x
    return (1.0 - x2 * inv_s2) * torch.exp(x2 * (-0.5 * inv_s2))


def cr_reference(base: str, x: torch.Tensor, eps: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """The plain expression (the paper's, for base relu): autograd differentiates it. Tests compare against it."""
    return base_forward(base, x) + eps * x * torch.exp(-(x**2) / (2.0 * sigma * sigma))


def monotone_eps_interval(sigma: float = 1.0) -> tuple:
    """ε range for which ReLU's positive branch stays increasing: (−1, e^{3/2}/2) (EAFO.md §4).

    k_σ'(x) ranges over [−2e^{−3/2}, 1] for any σ, so the interval does not depend on σ.
    """
    return (-1.0, math.exp(1.5) / 2.0)
