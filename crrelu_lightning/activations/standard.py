"""Standard activations, registered under their usual names.

Each subclasses torch's own module (so ``isinstance`` checks against ``torch.nn`` keep working)
and accepts, but ignores, ``inplace``: in-place activations would overwrite the tensors that the
entropy monitor and EAFO callback read, and save almost nothing in a transformer MLP.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from crrelu_lightning.activations.registry import register_activation


@register_activation("relu")
class ReLU(nn.ReLU):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=False)


@register_activation("leaky_relu", "leakyrelu")
class LeakyReLU(nn.LeakyReLU):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(negative_slope=negative_slope, inplace=False)


@register_activation("prelu")
class PReLU(nn.PReLU):
    """PReLU with one learnable slope (init 0.25), as in the paper's baselines."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, inplace: bool = False) -> None:
        super().__init__(num_parameters=num_parameters, init=init)


@register_activation("elu")
class ELU(nn.ELU):
    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(alpha=alpha, inplace=False)


@register_activation("celu")
class CELU(nn.CELU):
    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(alpha=alpha, inplace=False)


@register_activation("selu")
class SELU(nn.SELU):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=False)


@register_activation("gelu")
class GELU(nn.GELU):
    def __init__(self, approximate: str = "none", inplace: bool = False) -> None:
        super().__init__(approximate=approximate)


@register_activation("gelu_tanh")
class GELUTanh(nn.GELU):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(approximate="tanh")


@register_activation("silu", "swish")
class SiLU(nn.SiLU):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=False)


@register_activation("mish")
class Mish(nn.Mish):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=False)


@register_activation("softplus")
class Softplus(nn.Softplus):
    def __init__(self, beta: float = 1.0, threshold: float = 20.0, inplace: bool = False) -> None:
        super().__init__(beta=beta, threshold=threshold)


@register_activation("sigmoid")
class Sigmoid(nn.Sigmoid):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()


@register_activation("tanh")
class Tanh(nn.Tanh):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()


@register_activation("hardswish", "hard_swish")
class Hardswish(nn.Hardswish):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=False)


@register_activation("identity", "linear")
class Identity(nn.Identity):
    def __init__(self, inplace: bool = False, *args, **kwargs) -> None:
        super().__init__()


@register_activation("star_relu", "starrelu")
class StarReLU(nn.Module):
    """StarReLU(x) = s·ReLU(x)² + b with learnable scalars s and b (MetaFormer; s=0.8944, b=−0.4472)."""

    def __init__(
        self,
        scale_init: float = 0.8944,
        bias_init: float = -0.4472,
        learnable: bool = True,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale_init)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(bias_init)), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype) * F.relu(x).square() + self.bias.to(x.dtype)
