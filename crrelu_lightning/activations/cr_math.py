"""Elementwise math of the CR family (docs/kernels.md), shared by kernels, EAFO and tests.

    f(x) = g(x) + ε·k_σ(x),   k_σ(x) = x·exp(−x²/(2σ²)),   k_σ'(x) = (1 − x²/σ²)·exp(−x²/(2σ²))

``g`` is one of the bases below; every function here is plain torch so it can be compiled. ``cr_forward`` /
``cr_backward`` are the fused kernel bodies (written once; ``cr_kernels`` runs them eagerly, compiles them,
or lets a user's ``torch.compile`` trace them); ``cr_reference`` is the plain expression tests compare with.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_HALF = (torch.float16, torch.bfloat16)

CR_BASES = ("relu", "gelu", "silu", "mish")

# Left end of each base's invertible (increasing) branch: the argmin of g (docs/eafo.md §1).
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


# --------------------------------------------------------------------------- fused kernel bodies
def compute_dtype(x_dtype: torch.dtype, eps_dtype: torch.dtype) -> torch.dtype:
    """float32 for half inputs (and half ε), else the promotion of x's and ε's dtypes."""
    xd = torch.float32 if x_dtype in _HALF else x_dtype
    return torch.promote_types(xd, torch.float32 if eps_dtype in _HALF else eps_dtype)


def gauss_f32(x2: torch.Tensor, c: float) -> torch.Tensor:
    """exp(c·x2) for float32 ``x2 ≥ 0`` and a constant ``c < 0``, as plain ops a compiler fuses (~14 vector ops).

    Inductor's C++ backend would call Sleef's exp, which makes the fused kernel compute-bound at ~2× GELU;
    an exponent-bit 2ⁿ trick needs a bitcast Inductor emits as a scalar loop. Here u = c·x2/64 (clamped so
    the result stays ≥ e⁻⁸⁵, never a slow denormal), a degree-6 Taylor polynomial of eᵘ, then six squarings.
    Relative error < 1e-5 where c·x2 ≥ −12.5 (|x| ≤ 5 at σ = 1); beyond, the absolute error is < 5e-6.
    """
    u = torch.clamp_min(x2 * (c * 0.015625), -1.328125)
    p = u * 0.001388888888888889 + 0.008333333333333333
    p = p * u + 0.041666666666666664
    p = p * u + 0.16666666666666666
    p = p * u + 0.5
    p = p * u + 1.0
    p = p * u + 1.0
    for _ in range(6):
        p = p * p
    return p


# erfc(z) = t·exp(−z²)·Q(t), t = 1/(1 + z/2), z ≥ 0: Q is smooth and bounded on t ∈ (0, 1], so a polynomial
# fits it in *relative* terms (coefficients from a float64 least-squares fit of erfcx(z)/t, relative weights,
# on 4,000 Chebyshev points of t). Degree 7: max relative error 3.0e-6 in float64, below ``gauss_f32``'s 1e-5,
# so a higher degree buys nothing (degree 10 reached 1.2e-8 for three more multiply-adds per call). Used with
# ``gauss_f32`` for exp(−x²/2), it replaces Sleef's erf, which makes a fused GELU kernel ~2× slower.
_ERFC_Q = (0.2820954065561432, 0.2820116285319077, 0.24856388521339182, 0.16382168280549853,
           0.12039752862754727, -0.03388759960731063, -0.11532055127968964, 0.05232094283824646)


def normal_cdf_fused(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Φ(x) from x and ``g`` = exp(−x²/2), as plain ops a compiler fuses (no erf call).

    Relative error ≈ 3e-6 plus ``g``'s (``gauss_f32``: < 1e-5 for |x| ≤ 5), in both tails: Φ(x) for x < 0 is
    computed as ½·erfc(|x|/√2) directly, never as 1 − something.
    """
    t = 1.0 / (1.0 + (0.5 * _INV_SQRT2) * x.abs())
    q = t * _ERFC_Q[-1] + _ERFC_Q[-2]
    for c in _ERFC_Q[-3::-1]:
        q = q * t + c
    half = (0.5 * t) * q * g  # ½·erfc(|x|/√2) = Φ(−|x|)
    return torch.where(x < 0, half, 1.0 - half)


def gelu_fused(x: torch.Tensor, g: torch.Tensor, dy=None) -> torch.Tensor:
    """GELU x·Φ(x) (or dy·GELU'(x) when dy is given) from x and ``g`` = exp(−x²/2), without erf."""
    cdf = normal_cdf_fused(x, g)
    return x * cdf if dy is None else dy * (cdf + x * (g * _INV_SQRT2PI))


def gaussian(x2: torch.Tensor, c: float, fused: bool) -> torch.Tensor:
    """exp(c·x2); the polynomial only pays off inside a fused (compiled) kernel, eager ``torch.exp`` is one pass."""
    if fused and x2.dtype == torch.float32:
        return gauss_f32(x2, c)
    return torch.exp(x2 * c)


def _fused_base_backward(base: str, x: torch.Tensor, dy: torch.Tensor, x2: torch.Tensor, fused: bool) -> torch.Tensor:
    """dy·g'(x) with the Gaussian of GELU's derivative shared with ``gaussian``."""
    if base == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT2))
        return dy * (cdf + x * (gaussian(x2, -0.5, fused) * _INV_SQRT2PI))
    return base_backward(base, x, dy)


def cr_forward(base: str, x: torch.Tensor, eps: torch.Tensor, sigma: float, fused: bool = False) -> torch.Tensor:
    """y = g(x) + ε·x·exp(−x²/(2σ²)), computed in ``compute_dtype`` and returned in x's dtype."""
    cd = compute_dtype(x.dtype, eps.dtype)
    xf = x.to(cd)
    y = base_forward(base, xf) + eps.to(cd) * (xf * gaussian(xf * xf, -0.5 / (sigma * sigma), fused))
    return y.to(x.dtype)


def cr_backward(base: str, x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor, sigma: float, fused: bool = False):
    """(dx, dε) from x and dy alone, in one pass over them::

        dx = dy·g'(x) + ε·dy·(1 − x²/σ²)·exp(−x²/(2σ²)),   dε = Σ dy·x·exp(−x²/(2σ²))
    """
    cd = compute_dtype(x.dtype, eps.dtype)
    xf = x.to(cd)
    dyf = dy.to(cd)
    x2 = xf * xf
    dyg = dyf * gaussian(x2, -0.5 / (sigma * sigma), fused)
    dx = _fused_base_backward(base, xf, dyf, x2, fused) + eps.to(cd) * (dyg - dyg * x2 * (1.0 / (sigma * sigma)))
    return dx.to(x.dtype), (dyg * xf).sum()
