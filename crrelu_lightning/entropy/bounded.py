"""WAFBC, the worst activation function with boundary conditions, and the bounded activations it beats.

Among functions with range (a, b) the output entropy is at most ln(b − a), reached exactly when the
output is uniform: f(x) = a + (b − a)·F_X(x), the scaled CDF of the input (any density on an interval
of length L has entropy ≤ ln L). For X ~ N(0, 1), WAFBC is a + (b − a)·Φ(x) ≈ a sigmoid of 1.702x,
the paper's explanation of why bounded squashing activations train worse. docs/eafo.md §3.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from crrelu_lightning.entropy.distributions import InputDistribution, NormalInput, quadrature

__all__ = ["activation_range", "bounded_activation_entropies", "output_entropy", "wafbc", "wafbc_entropy"]


def wafbc(x: np.ndarray, dist: InputDistribution, a: float = 0.0, b: float = 1.0) -> np.ndarray:
    """WAFBC(x) = a + (b − a)·F_X(x): the output is uniform on (a, b) (docs/eafo.md §3)."""
    _check_bounds(a, b)
    return a + (b - a) * dist.cdf(np.asarray(x, dtype=np.float64))


def wafbc_entropy(a: float, b: float) -> float:
    """H(WAFBC(X)) = ln(b − a), the maximum over all functions with range (a, b)."""
    _check_bounds(a, b)
    return math.log(b - a)


def _check_bounds(a: float, b: float) -> None:
    if not (math.isfinite(a) and math.isfinite(b) and b > a):
        raise ValueError(f"bounds must be finite with a < b, got a={a!r}, b={b!r}")


def output_entropy(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dist: InputDistribution,
    bounds: Optional[Tuple[float, float]] = None,
) -> float:
    """H(f(X)) = H(X) + E[log f'(X)] for a non-decreasing f, optionally rescaled to ``bounds``.

    f' comes from autograd in float64. If f' = 0 on a set of positive probability (flat pieces, e.g.
    hardtanh's clipped tails) the output has atoms and the differential entropy is −∞. Rescaling the
    range (lo, hi) = (f(−∞), f(+∞)) onto (a, b) adds ln((b − a)/(hi − lo)).
    """
    lo_s, hi_s = dist.support
    x, w = quadrature(dist, lo_s, hi_s)
    keep = w > 0
    x, w = x[keep], w[keep] / w[keep].sum()
    xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
    (slope,) = torch.autograd.grad(fn(xt).sum(), xt)
    slope = slope.detach().numpy()
    if np.any(slope < 0):
        raise ValueError("output_entropy needs a non-decreasing function; f' < 0 somewhere on the support")
    h_in = float(-np.sum(w * np.log(dist.pdf(x))))
    with np.errstate(divide="ignore"):
        h = h_in + float(np.sum(w * np.log(slope)))
    if bounds is not None:
        a, b = bounds
        _check_bounds(a, b)
        lo, hi = activation_range(fn)
        if lo is None:
            raise ValueError("cannot rescale an unbounded activation to bounds")
        h += math.log((b - a) / (hi - lo))
    return h


def activation_range(fn: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[Optional[float], Optional[float]]:
    """(f(−∞), f(+∞)) if f has finite, distinct limits in both tails (checked at ±100 and ±1000), else (None, None)."""
    with torch.no_grad():
        v = fn(torch.tensor([-1000.0, -100.0, 100.0, 1000.0], dtype=torch.float64)).double().numpy()
    if not np.all(np.isfinite(v)):
        return (None, None)
    if abs(v[0] - v[1]) > 1e-9 or abs(v[3] - v[2]) > 1e-9 or not v[3] > v[0]:
        return (None, None)
    return (float(v[0]), float(v[3]))


def bounded_activation_entropies(
    dist: InputDistribution, a: float = 0.0, b: float = 1.0
) -> Dict[str, float]:
    """Output entropy, rescaled to (a, b), of every registered activation that is bounded and increasing.

    Keyed by the first registered name of each class; WAFBC is fitted to ``dist`` when it is normal.
    """
    from crrelu_lightning.activations import CRActivation, activation_class, available_activations

    out: Dict[str, float] = {}
    seen = set()
    for name in available_activations():
        cls = activation_class(name)
        if cls in seen:
            continue
        seen.add(cls)
        kwargs = {}
        if name == "wafbc" and isinstance(dist, NormalInput):
            kwargs = {"mu": dist.mu, "sigma": dist.sigma}
        if issubclass(cls, CRActivation):
            kwargs = {"impl": "eager"}  # a probe of a few points must not wait for torch.compile
        module = cls(**kwargs).double()
        if activation_range(module)[0] is None:
            continue
        try:
            out[name] = output_entropy(module, dist, (a, b))
        except ValueError:  # bounded but not monotone: no change-of-variables entropy
            continue
    return out
