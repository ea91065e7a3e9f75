"""Range-free histogram: one count per bfloat16 number (docs/entropy.md, "The cell histogram").

Every value x is counted in the *cell* of the bfloat16 number nearest to it (round to nearest, the
rounding a bf16 tensor has already undergone). The 65 536 bit patterns of bfloat16 are the columns,
so every finite float has a column: there is no range to choose and no truncation. Cells are ~2⁻⁸·|x|
wide, finer than any sensible analysis bin near the bulk of a distribution; ``merge_cells`` sums
them into bins of a chosen width Δ at log time. A bf16 or fp16 tensor is counted exactly as its
float32 original would have been (its values sit on or finer than the cell grid), so half-precision
inputs never show a grid artefact.

Counts are int64 and summed across micro-batches, steps and ranks, so the merged result is
independent of how the data was split (bit-identical under DDP). Pure torch/numpy, no Lightning.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import numpy as np
import torch

from crrelu_lightning.entropy.histogram import subsample

NUM_PATTERNS = 1 << 16


@functools.lru_cache(maxsize=1)
def cell_table() -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The bfloat16 cells in ascending order.

    Returns ``(position, values, edges, zero)``: ``position[p]`` is the sorted index of bit pattern
    ``p`` (−1 for NaN/±Inf; +0 and −0 share one), ``values[k]`` the k-th finite bf16 number,
    ``edges[k], edges[k+1]`` the cell of ``values[k]`` (midpoints to its neighbours; the two outermost
    cells are symmetric), ``zero`` the index of 0.
    """
    bits = np.arange(NUM_PATTERNS, dtype=np.uint32) << 16
    with np.errstate(invalid="ignore"):  # NaN patterns
        all_values = bits.view(np.float32).astype(np.float64)
    finite = np.isfinite(all_values)
    values = np.unique(all_values[finite])  # sorted; −0 == +0 collapse
    position = np.full(NUM_PATTERNS, -1, dtype=np.int64)
    position[finite] = np.searchsorted(values, all_values[finite])
    mid = (values[1:] + values[:-1]) / 2
    edges = np.concatenate([[values[0] - (mid[0] - values[0])], mid, [values[-1] + (values[-1] - mid[-1])]])
    zero = int(np.searchsorted(values, 0.0))
    return position, values, edges, zero


def cell_indices(values: torch.Tensor) -> torch.Tensor:
    """Column (0 … 65 535, the bf16 bit pattern) of every element of ``values`` (any float dtype)."""
    b = values.detach().reshape(-1)
    if b.dtype != torch.bfloat16:
        b = b.to(torch.bfloat16)
    return b.view(torch.int16).to(torch.int64) & 0xFFFF


class CellHistogram:
    """Counts of values per bfloat16 cell, ``num_rows`` independent rows in one int64 tensor.

    Same shape of interface as ``HistogramEstimator``: ``update`` (tensor work only, no host sync),
    ``state_tensor`` (sum-reduce it across processes), ``reset``, ``merge``.

    Args:
        num_rows: rows (one per layer, say).
        device: where the counts live.
    """

    def __init__(self, num_rows: int = 1, device: Union[str, torch.device, None] = None) -> None:
        if isinstance(num_rows, bool) or int(num_rows) != num_rows or num_rows < 1:
            raise ValueError(f"num_rows must be a positive integer, got {num_rows!r}")
        self.num_rows = int(num_rows)
        self._counts = torch.zeros((self.num_rows, NUM_PATTERNS), dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self._counts.device

    def state_tensor(self) -> torch.Tensor:
        return self._counts

    def load_state_tensor(self, counts: torch.Tensor) -> None:
        if counts.shape != self._counts.shape or counts.dtype.is_floating_point:
            raise ValueError(f"expected integer counts of shape {tuple(self._counts.shape)}, got {counts.dtype} {tuple(counts.shape)}")
        self._counts.copy_(counts)

    def merge(self, other: Union["CellHistogram", torch.Tensor]) -> "CellHistogram":
        other = other._counts if isinstance(other, CellHistogram) else other
        if other.shape != self._counts.shape or other.dtype.is_floating_point:
            raise ValueError(f"expected integer counts of shape {tuple(self._counts.shape)}, got {other.dtype} {tuple(other.shape)}")
        self._counts += other.to(self._counts.device)
        return self

    def reset(self) -> None:
        self._counts.zero_()

    @torch.no_grad()
    def update(
        self,
        values: torch.Tensor,
        row: int = 0,
        max_samples: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        """Count ``values`` (any shape, any float dtype) into ``row``.

        With ``max_samples`` set and more values than that, counts ``max_samples`` values drawn
        uniformly with replacement using ``generator`` (unbiased for every cell frequency).
        """
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row must be in [0, {self.num_rows}), got {row!r}")
        flat = subsample(values.detach().reshape(-1), max_samples, generator)
        if flat.numel() == 0:
            return
        idx = cell_indices(flat).to(self._counts.device) + row * NUM_PATTERNS
        self._counts.view(-1).scatter_add_(0, idx, torch.ones_like(idx))


def sorted_cell_counts(row: np.ndarray) -> Tuple[np.ndarray, int]:
    """``(counts per sorted finite cell (float64), non-finite count)`` of one row of pattern counts."""
    position, values, _, _ = cell_table()
    row = np.asarray(row, dtype=np.float64)
    finite = position >= 0
    counts = np.bincount(position[finite], weights=row[finite], minlength=values.size)
    return counts, int(row[~finite].sum())
