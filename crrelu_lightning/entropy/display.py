"""Turn histogram count rows into TensorBoard raw histograms and a per-layer density picture.

Pure numpy/matplotlib (Agg canvas, no pyplot), so it runs headless and in any process.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from crrelu_lightning.entropy.estimators import EXTRA_COLUMNS, ZEROS, entropy_from_counts


def _occupied_span(row: np.ndarray) -> Optional[tuple]:
    nz = np.flatnonzero(row)
    return None if nz.size == 0 else (int(nz[0]), int(nz[-1]) + 1)


def raw_histogram(counts: np.ndarray, lo: float, bin_width: float, max_buckets: int = 200) -> Optional[Dict]:
    """Keyword arguments for ``SummaryWriter.add_histogram_raw`` from one count row.

    The zero atom is put back into the bin holding 0 (so ReLU's spike shows); under/overflow and
    non-finite values are left out (they are logged as scalars). Empty tails are trimmed and
    adjacent bins merged down to ``max_buckets``. ``sum``/``sum_squares`` use bin centres.
    Returns ``None`` if the row has no in-range or zero values.
    """
    bins = counts[:-EXTRA_COLUMNS].astype(np.float64).copy()
    n_bins = bins.size
    zero_bin = math.floor((0.0 - lo) / bin_width)
    if 0 <= zero_bin < n_bins:
        bins[zero_bin] += counts[n_bins + ZEROS]
    span = _occupied_span(bins)
    if span is None:
        return None
    a, b = span
    group = max(1, math.ceil((b - a) / max_buckets))
    b = a + group * math.ceil((b - a) / group)
    padded = np.zeros(b - a)
    take = bins[a : min(b, n_bins)]
    padded[: take.size] = take
    bucket_counts = padded.reshape(-1, group).sum(1)
    right_edges = lo + bin_width * (a + group * np.arange(1, bucket_counts.size + 1))
    centres = right_edges - group * bin_width / 2
    return dict(
        min=lo + a * bin_width,
        max=float(right_edges[-1]),
        num=float(bucket_counts.sum()),
        sum=float((bucket_counts * centres).sum()),
        sum_squares=float((bucket_counts * centres**2).sum()),
        bucket_limits=right_edges.tolist(),
        bucket_counts=bucket_counts.tolist(),
    )


def density_figure(counts: np.ndarray, names: Sequence[str], lo: float, bin_width: float, title: str = ""):
    """A matplotlib ``Figure``: one panel per row with the estimated density of the in-range values.

    The zero atom is drawn as a vertical bar labelled with p0; each panel's title carries H_mix,
    p0 and the out-of-range fraction.
    """
    from matplotlib.figure import Figure

    import torch

    stats = entropy_from_counts(torch.as_tensor(counts), bin_width)
    k = len(names)
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), dpi=100, layout="constrained")
    if title:
        fig.suptitle(title)
    edges = lo + bin_width * np.arange(counts.shape[1] - EXTRA_COLUMNS + 1)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        row = counts[i]
        bins = row[:-EXTRA_COLUMNS].astype(np.float64)
        kept = bins.sum() + row[-EXTRA_COLUMNS + ZEROS]
        span = _occupied_span(bins)
        width = bin_width
        if span is not None:
            a, b = span
            ax.stairs(bins[a:b] / (kept * bin_width), edges[a : b + 1], fill=True, alpha=0.6)
            width = max(bin_width, 0.02 * (edges[b] - edges[a]))
        p0 = float(stats["zero_fraction"][i])
        if p0 > 0:
            ax2 = ax.twinx()
            ax2.bar([0.0], [p0], width=width, color="C3")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("p0", color="C3", fontsize=7)
            ax2.tick_params(labelsize=6)
        ax.set_title(
            f"{name}\nH={float(stats['entropy'][i]):.3f} nats  p0={p0:.2f}  oor={float(stats['out_of_range_fraction'][i]):.3f}",
            fontsize=7,
        )
        ax.tick_params(labelsize=6)
    return fig


def figure_to_rgb(fig) -> np.ndarray:
    """Render a matplotlib ``Figure`` with the Agg canvas into an ``(H, W, 3)`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def layer_labels(names: Sequence[str], record_inputs: bool) -> List[str]:
    """Row labels of the monitor's count tensor: outputs first, then ``<name>.input`` rows."""
    return list(names) + ([f"{n}.input" for n in names] if record_inputs else [])
