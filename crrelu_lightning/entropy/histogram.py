"""Fixed-range, fixed-width histogram with sum-mergeable integer counts (docs/entropy.md, "the fixed-width plug-in").

One ``HistogramEstimator`` holds ``num_estimators`` independent count rows (one per layer, say) in a
single int64 tensor, so a whole model reduces across processes with one ``all_reduce``. Pure torch:
no Lightning, no host synchronisation in ``update``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Union

import torch

from crrelu_lightning.entropy.estimators import (
    EXTRA_COLUMNS,
    NONFINITE,
    OVERFLOW,
    UNDERFLOW,
    ZEROS,
    entropy_from_counts,
)


class HistogramEstimator:
    """Histogram of values on ``[lo, hi)`` in bins of width Δ, plus under/overflow, zero and non-finite counts.

    Args:
        lo, hi: range of the bins, ``lo < hi``.
        bins: number of bins (≥ 2). Give exactly one of ``bins`` and ``bin_width``.
        bin_width: Δ; ``(hi − lo)/Δ`` must be an integer (≥ 2).
        num_estimators: ``None`` for one row (``compute()`` returns 0-d tensors) or ``K`` rows
            addressed by ``update(..., index=k)`` (``compute()`` returns shape ``(K,)``).
        device: where the counts live (the device of the tensors passed to ``update``).
        seed: seed of the estimator's own generator, used for subsampling when ``update`` gets no
            generator. The global RNG is never touched.

    Bin i holds ``lo + iΔ ≤ x < lo + (i+1)Δ`` computed in float64, exact zeros excepted: they are
    the atom (``zeros`` column) wherever 0 lies. NaN and ±Inf go to ``non-finite``.
    """

    def __init__(
        self,
        lo: float,
        hi: float,
        bins: Optional[int] = None,
        bin_width: Optional[float] = None,
        num_estimators: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        seed: int = 0,
    ) -> None:
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ValueError(f"need finite lo < hi, got lo={lo!r}, hi={hi!r}")
        if (bins is None) == (bin_width is None):
            raise ValueError(f"give exactly one of bins and bin_width, got bins={bins!r}, bin_width={bin_width!r}")
        if bin_width is not None:
            bin_width = float(bin_width)
            if not (math.isfinite(bin_width) and bin_width > 0):
                raise ValueError(f"bin_width must be a finite positive number, got {bin_width!r}")
            ratio = (hi - lo) / bin_width
            bins = int(round(ratio))
            if abs(ratio - bins) > 1e-6 * max(1.0, ratio):
                raise ValueError(
                    f"(hi - lo) / bin_width must be an integer, got lo={lo!r}, hi={hi!r}, bin_width={bin_width!r} "
                    f"(ratio {ratio!r})"
                )
        if isinstance(bins, bool) or int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got bins={bins!r}")
        if num_estimators is not None and (int(num_estimators) != num_estimators or num_estimators < 1):
            raise ValueError(f"num_estimators must be None or a positive integer, got {num_estimators!r}")
        self.lo, self.hi, self.bins = lo, hi, int(bins)
        self.bin_width = (hi - lo) / self.bins
        self.num_estimators = None if num_estimators is None else int(num_estimators)
        self.seed = int(seed)
        shape = (self.bins + EXTRA_COLUMNS,) if num_estimators is None else (self.num_estimators, self.bins + EXTRA_COLUMNS)
        self._counts = torch.zeros(shape, dtype=torch.int64, device=device)
        self._generators: Dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self._counts.device

    def to(self, device: Union[str, torch.device]) -> "HistogramEstimator":
        self._counts = self._counts.to(device)
        return self

    def state_tensor(self) -> torch.Tensor:
        """The live int64 count tensor (sum-reducible; reduce it in place across processes)."""
        return self._counts

    def load_state_tensor(self, counts: torch.Tensor) -> None:
        if counts.shape != self._counts.shape or counts.dtype.is_floating_point:
            raise ValueError(
                f"expected integer counts of shape {tuple(self._counts.shape)}, got {counts.dtype} {tuple(counts.shape)}"
            )
        self._counts.copy_(counts)

    def merge(self, other: Union["HistogramEstimator", torch.Tensor]) -> "HistogramEstimator":
        """Add another estimator's counts (same range, bins and rows) or a count tensor in place."""
        if isinstance(other, HistogramEstimator):
            if (other.lo, other.hi, other.bins, other.num_estimators) != (self.lo, self.hi, self.bins, self.num_estimators):
                raise ValueError(
                    "cannot merge histograms with different layouts: "
                    f"(lo, hi, bins, num_estimators) = {(self.lo, self.hi, self.bins, self.num_estimators)} vs "
                    f"{(other.lo, other.hi, other.bins, other.num_estimators)}"
                )
            other = other._counts
        if other.shape != self._counts.shape or other.dtype.is_floating_point:
            raise ValueError(f"expected integer counts of shape {tuple(self._counts.shape)}, got {other.dtype} {tuple(other.shape)}")
        self._counts += other.to(self._counts.device)
        return self

    def reset(self) -> None:
        self._counts.zero_()

    def bin_edges(self) -> torch.Tensor:
        """The B + 1 bin edges lo + iΔ (float64)."""
        return self.lo + self.bin_width * torch.arange(self.bins + 1, dtype=torch.float64)

    def generator(self, device: Union[str, torch.device]) -> torch.Generator:
        """The estimator's own generator on ``device`` (created on first use, seeded with ``seed``)."""
        device = torch.device(device)
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[device] = gen
        return self._generators[device]

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(
        self,
        values: torch.Tensor,
        index: int = 0,
        max_samples: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        """Count ``values`` (any shape) into row ``index``.

        With ``max_samples`` set and more values than that, counts ``max_samples`` values drawn
        uniformly with replacement (cheap, unbiased for every bin frequency) using ``generator`` or
        the estimator's own one. Tensor ops only: safe inside a forward pass, no host sync.
        """
        if self.num_estimators is None:
            if index != 0:
                raise IndexError(f"this estimator has a single row; got index={index!r}")
            offset = 0
        else:
            if not 0 <= index < self.num_estimators:
                raise IndexError(f"index must be in [0, {self.num_estimators}), got {index!r}")
            offset = index * (self.bins + EXTRA_COLUMNS)
        flat = values.detach().reshape(-1)
        if max_samples is not None and generator is None and flat.numel() > max_samples:
            generator = self.generator(flat.device)
        flat = subsample(flat, max_samples, generator)
        if flat.numel() == 0:
            return
        self._counts.view(-1).scatter_add_(0, self._categories(flat) + offset, torch.ones_like(flat, dtype=torch.int64))

    def _categories(self, flat: torch.Tensor) -> torch.Tensor:
        """Column of every value: bin index, or B + {underflow, overflow, zeros, non-finite}."""
        # float64 so that bin edges lo + iΔ are placed exactly enough that distributions with a
        # discontinuity on an edge (U(0,1), Exp(1), LeakyReLU at 0) are not smeared by rounding.
        x = flat.to(torch.float64)
        finite = torch.isfinite(x)
        pos = torch.floor((torch.where(finite, x, 0.0) - self.lo) / self.bin_width)
        b = self.bins
        cat = torch.where(pos < 0, b + UNDERFLOW, torch.where(pos >= b, b + OVERFLOW, pos))
        cat = torch.where(x == 0, b + ZEROS, cat)
        cat = torch.where(finite, cat, b + NONFINITE)
        return cat.to(torch.int64)

    # ---------------------------------------------------------------- compute
    def compute(self, miller_madow: bool = True) -> Dict[str, torch.Tensor]:
        """Entropy statistics per row; see ``entropy_from_counts``."""
        return entropy_from_counts(self._counts, self.bin_width, miller_madow=miller_madow)

    def __repr__(self) -> str:
        return (
            f"HistogramEstimator(lo={self.lo}, hi={self.hi}, bins={self.bins}, bin_width={self.bin_width:g}, "
            f"num_estimators={self.num_estimators})"
        )


def subsample(flat: torch.Tensor, max_samples: Optional[int], generator: Optional[torch.Generator]) -> torch.Tensor:
    """``flat`` itself, or ``max_samples`` of its values drawn uniformly with replacement (unbiased for
    every bin frequency; tensor ops only, no host sync)."""
    if max_samples is None:
        return flat
    if max_samples < 1:
        raise ValueError(f"max_samples must be None or >= 1, got {max_samples!r}")
    if flat.numel() <= max_samples:
        return flat
    pick = torch.randint(flat.numel(), (max_samples,), generator=generator, device=flat.device)
    return flat[pick]
