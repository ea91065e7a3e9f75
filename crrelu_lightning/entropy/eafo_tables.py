"""Static EAFO tables: entropy of CR-corrected activations on the invertible branch, by quadrature.

For f_ε = g + ε·k_σ, strictly increasing on the branch B = (b₀, ∞) (``cr_branch``), and an input X
with density p (``distributions``):

    H(Y | X∈B) = H(X | X∈B) + E[ log f_ε'(X) | X∈B ]                        (change of variables)
    ΔH(ε)      = E[ log f_ε'(X) − log g'(X) | X∈B ]
    ∂H/∂ε      = E[ k_σ'(X) / f_ε'(X) | X∈B ]                               (exact, no density estimate)
    δH/δf (x)  = − d/dx [ p(x) / f'(x) ]                                    (correction direction)

Sign fact: on N(0, 1) input ε < 0 DECREASES the branch entropy; the paper's ε₀ = +0.01 raises it
slightly (ΔH = +0.0035164). Derivations and reference values: docs/eafo.md §1–§2.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from crrelu_lightning.entropy.cr_branch import (
    DEFAULT_SLOPE_FLOOR,
    base_slope,
    branch_cut,
    correction_slope,
    cr_slope,
    min_slope_on_branch,
)
from crrelu_lightning.entropy.distributions import HistogramInput, InputDistribution, quadrature

__all__ = ["branch_record", "correction_direction", "eafo_table"]


def branch_record(
    base: str,
    dist: InputDistribution,
    eps: float,
    cr_sigma: float = 1.0,
    slope_floor: float = DEFAULT_SLOPE_FLOOR,
) -> Dict[str, Optional[float]]:
    """ΔH(ε), ∂H/∂ε, the branch entropy and the monotonicity of f_ε on B, all in nats.

    Keys: eps, delta_entropy, d_entropy_d_eps, monotone, min_slope, entropy (H(Y|B)), input_entropy
    (H(X|B)), branch_prob (P(X∈B)), branch_start (b0). Entropy fields are None where f_ε is not
    monotone on B (the change of variables, hence the theory, does not apply).
    """
    eps = float(eps)
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps!r}")
    if not (math.isfinite(cr_sigma) and cr_sigma > 0):
        raise ValueError(f"cr_sigma must be finite and > 0, got {cr_sigma!r}")
    b0 = branch_cut(base, slope_floor)
    x, w = quadrature(dist, b0, math.inf, width=min(0.05, cr_sigma / 16.0))
    mass = float(w.sum())
    if not mass > 0:
        raise ValueError(f"the input {dist.describe()} puts no mass on the branch x > {b0:g}")
    w = w / mass
    px = dist.pdf(x) / mass
    pos = px > 0
    input_entropy = float(-np.sum(w[pos] * np.log(px[pos])))
    min_slope = min_slope_on_branch(base, eps, cr_sigma, b0)
    rec: Dict[str, Optional[float]] = {
        "eps": eps,
        "delta_entropy": None,
        "d_entropy_d_eps": None,
        "monotone": bool(min_slope > 0),
        "min_slope": min_slope,
        "entropy": None,
        "input_entropy": input_entropy,
        "branch_prob": mass,
        "branch_start": b0,
    }
    if min_slope > 0:
        fs = cr_slope(base, x, eps, cr_sigma)
        gs = base_slope(base, x)
        kd = correction_slope(x, cr_sigma)
        # log1p keeps ΔH accurate for tiny ε (log f' − log g' = log(1 + ε k'/g')).
        delta = float(np.sum(w * np.log1p(eps * kd / gs)))
        rec["delta_entropy"] = delta
        rec["d_entropy_d_eps"] = float(np.sum(w * kd / fs))
        rec["entropy"] = input_entropy + float(np.sum(w * np.log(gs))) + delta
    return rec


def eafo_table(
    base: str,
    dist: InputDistribution,
    eps_values: Sequence[float],
    cr_sigma: float = 1.0,
    slope_floor: float = DEFAULT_SLOPE_FLOOR,
) -> List[Dict[str, Optional[float]]]:
    """``branch_record`` for every ε, in the order given."""
    return [branch_record(base, dist, e, cr_sigma, slope_floor) for e in eps_values]


def correction_direction(
    base: str,
    dist: InputDistribution,
    x: np.ndarray,
    eps: float = 0.0,
    cr_sigma: float = 1.0,
) -> np.ndarray:
    """d/dx [p(x)/f'(x)] = p'/f' − p·f''/f'² on a grid (steepest entropy descent: f ← f + η·this).

    f'' is a central difference of the closed-form f'. For a histogram input, p is the density
    interpolated through bin centres. Points where f' ≤ 0 (outside the invertible branch) give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    p = dist.smooth_pdf(x) if isinstance(dist, HistogramInput) else dist.pdf(x)
    dp = dist.dpdf(x)
    h = 1e-5
    fs = cr_slope(base, x, eps, cr_sigma)
    fss = (cr_slope(base, x + h, eps, cr_sigma) - cr_slope(base, x - h, eps, cr_sigma)) / (2 * h)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = dp / fs - p * fss / (fs * fs)
    out[fs <= 0] = np.nan
    return out
