"""The CR family: CRReLU and CR-corrected GELU, SiLU and Mish (docs/eafo.md §1).

    f(x) = g(x) + ε·x·exp(−x²/(2σ²))     one learnable scalar ε per module, fixed width σ

Sign fact (docs/eafo.md §2): on the invertible branch, ε < 0 DECREASES output entropy; the paper's
default ε₀ = +0.01 slightly increases it. The branch stays monotone iff −1 < ε < e^{3/2}/2.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from crrelu_lightning.activations import cr_math
from crrelu_lightning.activations.cr_kernels import IMPLS, cr_activation
from crrelu_lightning.activations.registry import register_activation


class CRActivation(nn.Module):
    """Base class of the CR family; subclasses set ``base``.

    Args:
        eps_init: initial ε (the paper's 0.01). Must be finite.
        sigma: width σ of the correction x·exp(−x²/(2σ²)); σ = 1 is the paper's CRReLU.
        learnable: whether ε is trained.
        impl: ``"auto"`` (compiled where possible), ``"compiled"``, ``"eager"`` or ``"reference"``.
        inplace: accepted for timm compatibility and ignored.
    """

    base: str = "relu"

    def __init__(
        self,
        eps_init: float = 0.01,
        sigma: float = 1.0,
        learnable: bool = True,
        impl: str = "auto",
        inplace: bool = False,
    ) -> None:
        super().__init__()
        eps_init = float(eps_init)
        if not math.isfinite(eps_init):
            raise ValueError(f"eps_init must be finite, got {eps_init!r}")
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite positive number, got {sigma!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.eps = nn.Parameter(torch.tensor(eps_init, dtype=torch.float32), requires_grad=learnable)
        self.sigma = sigma
        self.impl = impl

    @property
    def branch_start(self) -> float:
        """Left end of the base's invertible branch (docs/eafo.md §1)."""
        return cr_math.BRANCH_START[self.base]

    def base_derivative(self, x: torch.Tensor) -> torch.Tensor:
        return cr_math.base_derivative(self.base, x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """∂f/∂x = g'(x) + ε·k_σ'(x)."""
        eps = self.eps.detach().to(x.dtype)
        return self.base_derivative(x) + eps * cr_math.correction_derivative(x, self.sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cr_activation(x, self.eps, self.base, self.sigma, self.impl)

    def extra_repr(self) -> str:
        return f"base={self.base}, eps={self.eps.item():.4g}, sigma={self.sigma:g}, impl={self.impl}"


@register_activation("crrelu", "cr_relu")
class CRReLU(CRActivation):
    """CRReLU(x) = ReLU(x) + ε·x·exp(−x²/(2σ²)) (Sun et al., arXiv 2405.12954)."""

    base = "relu"


@register_activation("crgelu", "cr_gelu")
class CRGELU(CRActivation):
    """GELU(x) + ε·x·exp(−x²/(2σ²))."""

    base = "gelu"


@register_activation("crsilu", "cr_silu", "crswish", "cr_swish")
class CRSiLU(CRActivation):
    """SiLU(x) + ε·x·exp(−x²/(2σ²))."""

    base = "silu"


@register_activation("crmish", "cr_mish")
class CRMish(CRActivation):
    """Mish(x) + ε·x·exp(−x²/(2σ²))."""

    base = "mish"
