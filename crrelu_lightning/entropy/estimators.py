"""Entropy from histogram counts: the pure functional core (docs/entropy.md).

A count row has the layout produced by ``HistogramEstimator``::

    [ c_0 … c_{B−1} | underflow | overflow | zeros | non-finite ]

with ``c_i`` the number of values in ``[lo + iΔ, lo + (i+1)Δ)`` (exact zeros excluded; they form the
atom). All entropies are in nats.

    h     = −Σ_i q_i ln q_i + ln Δ + (m − 1)/(2 n_c)       q_i = c_i / n_c, m = #{i: c_i > 0}
    H_mix = H_b(π0) + (1 − π0)·h                           π0 = zeros / (zeros + n_c)

Out-of-range values are excluded from both terms (the estimate is that of the distribution
conditioned on lying in the range or at zero) and reported as ``out_of_range_fraction``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

# Number of bookkeeping columns after the B bins, and their offsets from the end of the row.
EXTRA_COLUMNS = 4
UNDERFLOW, OVERFLOW, ZEROS, NONFINITE = 0, 1, 2, 3


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H_b(p) = −p ln p − (1−p) ln(1−p), with 0 ln 0 = 0."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def entropy_from_counts(counts: torch.Tensor, bin_width: float, miller_madow: bool = True) -> Dict[str, torch.Tensor]:
    """Entropy statistics of histogram count rows (last dim = bins + 4, see module docstring).

    Args:
        counts: integer counts, shape ``(..., B + 4)``.
        bin_width: Δ, the width of every bin (the ``+ ln Δ`` term).
        miller_madow: add the Miller–Madow bias correction (m − 1)/(2 n_c) to ``h``.

    Returns:
        float64 tensors of shape ``counts.shape[:-1]``: ``entropy`` (H_mix), ``differential_entropy``
        (h), ``zero_fraction`` (zeros / finite values), ``out_of_range_fraction`` (under+overflow /
        finite values), ``nonfinite_count``, ``num_samples`` (finite values), ``occupied_bins`` (m).
        Rows without in-range values have ``h = NaN``; their ``entropy`` is 0 if they hold zeros
        (a point mass) and NaN if they hold nothing at all.
    """
    if counts.dtype.is_floating_point or counts.dtype == torch.bool:
        raise TypeError(f"counts must be an integer tensor, got dtype {counts.dtype}")
    if counts.shape[-1] < EXTRA_COLUMNS + 2:
        raise ValueError(f"counts must have at least 2 bins + {EXTRA_COLUMNS} extra columns, got shape {tuple(counts.shape)}")
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be a finite positive number, got {bin_width!r}")
    c = counts.to(torch.float64)
    bins = c[..., :-EXTRA_COLUMNS]
    extra = c[..., -EXTRA_COLUMNS:]
    under, over, zeros, nonfinite = (extra[..., k] for k in range(EXTRA_COLUMNS))

    n_c = bins.sum(-1)
    q = bins / n_c.unsqueeze(-1)  # NaN rows where n_c == 0; masked below
    h = -torch.special.xlogy(q, q).sum(-1) + math.log(bin_width)
    occupied = (bins > 0).sum(-1).to(torch.float64)
    if miller_madow:
        h = h + (occupied - 1) / (2 * n_c)
    h = torch.where(n_c > 0, h, torch.full_like(h, math.nan))

    kept = zeros + n_c
    pi0 = zeros / kept
    # (1 − π0)·h is 0 for a pure atom, even though h itself is undefined there.
    cont = torch.where(n_c > 0, (1 - pi0) * h, torch.zeros_like(h))
    mixed = torch.where(kept > 0, _binary_entropy(pi0) + cont, torch.full_like(h, math.nan))

    finite = n_c + under + over + zeros
    return {
        "entropy": mixed,
        "differential_entropy": h,
        "zero_fraction": zeros / finite,
        "out_of_range_fraction": (under + over) / finite,
        "nonfinite_count": nonfinite,
        "num_samples": finite,
        "occupied_bins": occupied,
    }
