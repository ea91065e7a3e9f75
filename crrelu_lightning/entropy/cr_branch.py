"""The invertible branch of a CR activation: where it starts and for which ε it stays increasing.

    f_ε(x) = g(x) + ε·k_σ(x),   k_σ(x) = x·exp(−x²/(2σ²)),   f_ε'(x) = g'(x) + ε·k_σ'(x)

The branch is B = (b₀, ∞). For ReLU b₀ = 0. For the smooth bases (GELU, SiLU, Mish) g' vanishes at
the base's minimum, where ∂H_B/∂ε = E[k_σ'/f_ε' | B] would diverge logarithmically; b₀ is therefore
the point right of the minimum where g'(b₀) = ``slope_floor``. b₀ does not depend on ε, so ∂H_B/∂ε
stays the exact derivative of H_B. docs/eafo.md §1–§2.

Float64 numpy wrappers around ``crrelu_lightning.activations.cr_math`` (the one place the CR formulas
are written), used by the static tables, the dynamic estimator and the CLI.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

from crrelu_lightning.activations import cr_math

__all__ = [
    "DEFAULT_SLOPE_FLOOR",
    "base_forward",
    "base_slope",
    "branch_cut",
    "correction",
    "correction_slope",
    "cr_forward",
    "cr_slope",
    "min_slope_on_branch",
    "monotone_eps_interval",
]

DEFAULT_SLOPE_FLOOR = 0.1


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def base_forward(base: str, x: np.ndarray) -> np.ndarray:
    """g(x)."""
    return cr_math.base_forward(base, _t(x)).numpy()


def base_slope(base: str, x: np.ndarray) -> np.ndarray:
    """g'(x)."""
    return cr_math.base_derivative(base, _t(x)).numpy()


def correction(x: np.ndarray, cr_sigma: float = 1.0) -> np.ndarray:
    """k_σ(x) = x·exp(−x²/(2σ²))."""
    return cr_math.correction(_t(x), cr_sigma).numpy()


def correction_slope(x: np.ndarray, cr_sigma: float = 1.0) -> np.ndarray:
    """k_σ'(x) = (1 − x²/σ²)·exp(−x²/(2σ²))."""
    return cr_math.correction_derivative(_t(x), cr_sigma).numpy()


def cr_forward(base: str, x: np.ndarray, eps: float, cr_sigma: float = 1.0) -> np.ndarray:
    """f_ε(x) = g(x) + ε·x·exp(−x²/(2σ²))."""
    return base_forward(base, x) + eps * correction(x, cr_sigma)


def cr_slope(base: str, x: np.ndarray, eps: float, cr_sigma: float = 1.0) -> np.ndarray:
    """f_ε'(x) = g'(x) + ε·k_σ'(x)."""
    return base_slope(base, x) + eps * correction_slope(x, cr_sigma)


def branch_cut(base: str, slope_floor: float = DEFAULT_SLOPE_FLOOR) -> float:
    """Left end b₀ of the branch B = (b₀, ∞): 0 for ReLU, else the x right of g's minimum with g'(x) = floor."""
    start = cr_math.BRANCH_START.get(base)
    if start is None:
        raise ValueError(f"unknown CR base {base!r}; expected one of {sorted(cr_math.BRANCH_START)}")
    if base == "relu":
        return 0.0
    if not 0.0 < slope_floor < 1.0:
        raise ValueError(f"slope_floor must lie in (0, 1), got {slope_floor!r}")
    lo, hi = start, start + 10.0  # g' rises from 0 at the minimum towards 1: bisect
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if base_slope(base, np.array([mid]))[0] < slope_floor:
            lo = mid
        else:
            hi = mid
    return hi


def _branch_grid(b0: float, cr_sigma: float, n: int) -> np.ndarray:
    # Beyond b0 + 12σ + 12 the correction's slope is below e^{-72}: nothing changes sign there.
    x = np.linspace(b0, b0 + 12.0 * cr_sigma + 12.0, n)
    x[0] = np.nextafter(b0, math.inf)  # the one-sided limit: ε = −1 gives f'(0⁺) = 0 for ReLU
    return x


def min_slope_on_branch(base: str, eps: float, cr_sigma: float, b0: float) -> float:
    """inf f_ε' on (b₀, ∞), including the limit at b₀⁺."""
    return float(np.min(cr_slope(base, _branch_grid(b0, cr_sigma, 20001), eps, cr_sigma)))


def monotone_eps_interval(
    base: str = "relu", cr_sigma: float = 1.0, slope_floor: float = DEFAULT_SLOPE_FLOOR
) -> Tuple[float, float]:
    """Open ε interval on which f_ε' = g' + ε·k_σ' > 0 on the whole branch (b₀, ∞).

    f_ε' > 0 needs ε > −g'/k_σ' where k_σ' > 0 and ε < −g'/k_σ' where k_σ' < 0. For ReLU (g' = 1)
    k_σ' ranges over [−2e^{−3/2}, 1] for every σ, so the interval is exactly (−1, e^{3/2}/2) ≈
    (−1, 2.2408), returned in closed form. Other bases: the same bound on a fine grid of B.
    """
    if not (math.isfinite(cr_sigma) and cr_sigma > 0):
        raise ValueError(f"cr_sigma must be finite and > 0, got {cr_sigma!r}")
    b0 = branch_cut(base, slope_floor)
    if base == "relu":
        return (-1.0, math.exp(1.5) / 2.0)
    x = _branch_grid(b0, cr_sigma, 200001)
    g = base_slope(base, x)
    k = correction_slope(x, cr_sigma)
    with np.errstate(divide="ignore"):
        ratio = -g / k
    lo = float(np.max(ratio[k > 0])) if np.any(k > 0) else -math.inf
    hi = float(np.min(ratio[k < 0])) if np.any(k < 0) else math.inf
    return lo, hi
