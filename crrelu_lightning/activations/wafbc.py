"""WAFBC: the worst activation function with boundary conditions (docs/eafo.md §3).

    WAFBC(x) = a + (b − a)·Φ((x − μ)/σ)

For X ~ N(μ, σ²) the output is uniform on (a, b): the maximum-entropy (log(b−a)) output among
functions with that range, hence the worst case by the paper's entropy argument.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from crrelu_lightning.activations.registry import register_activation


@register_activation("wafbc")
class WAFBC(nn.Module):
    """Scaled normal CDF. Args: bounds ``a < b``; input moments ``mu``, ``sigma > 0``."""

    def __init__(
        self, a: float = 0.0, b: float = 1.0, mu: float = 0.0, sigma: float = 1.0, inplace: bool = False
    ) -> None:
        super().__init__()
        a, b, mu, sigma = float(a), float(b), float(mu), float(sigma)
        if not all(math.isfinite(v) for v in (a, b, mu, sigma)):
            raise ValueError(f"WAFBC parameters must be finite, got a={a}, b={b}, mu={mu}, sigma={sigma}")
        if not b > a:
            raise ValueError(f"WAFBC needs bounds a < b, got a={a}, b={b}")
        if not sigma > 0:
            raise ValueError(f"WAFBC needs sigma > 0, got sigma={sigma}")
        self.a, self.b, self.mu, self.sigma = a, b, mu, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) * (1.0 / (self.sigma * math.sqrt(2.0)))
        return self.a + (self.b - self.a) * 0.5 * (1.0 + torch.erf(z))

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}, mu={self.mu:g}, sigma={self.sigma:g}"
