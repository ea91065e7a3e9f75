"""Turn histogram counts into TensorBoard raw histograms and per-layer density pictures.

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


# ------------------------------------------------------------------ cell histograms (the default estimators)
def _input_bins(cell_row: np.ndarray, bin_width: float):
    from crrelu_lightning.entropy.cells import sorted_cell_counts
    from crrelu_lightning.entropy.pushforward import merge_cells

    counts_sorted, _ = sorted_cell_counts(cell_row)
    edges, counts, atom = merge_cells(counts_sorted, bin_width)
    return edges, counts, atom, float(counts_sorted.sum())


def raw_histogram_from_cells(cell_row: np.ndarray, bin_width: float, max_buckets: int = 200) -> Optional[Dict]:
    """``SummaryWriter.add_histogram_raw`` arguments for one row of input cell counts, in bins of width Δ.

    Exact zeros are put back into the bin holding 0; empty tails trimmed, merged to ≤ ``max_buckets``.
    """
    if not (bin_width > 0 and math.isfinite(bin_width)):
        return None
    edges, counts, atom, total = _input_bins(cell_row, bin_width)
    if total <= 0:
        return None
    counts = counts.copy()
    k = int(np.clip(np.searchsorted(edges, 0.0, side="right") - 1, 0, counts.size - 1))
    counts[k] += atom
    span = _occupied_span(counts)
    if span is None:
        return None
    a, b = span
    group = max(1, math.ceil((b - a) / max_buckets))
    idx = np.arange(a, b, group)
    bucket_counts = np.add.reduceat(counts[a:b], idx - a)
    right = edges[np.minimum(idx + group, b)]
    centres = (edges[idx] + right) / 2
    return dict(min=float(edges[a]), max=float(right[-1]), num=float(bucket_counts.sum()),
                sum=float((bucket_counts * centres).sum()), sum_squares=float((bucket_counts * centres**2).sum()),
                bucket_limits=right.tolist(), bucket_counts=bucket_counts.tolist())


def _view_range(edges: np.ndarray, counts: np.ndarray, q: float = 1e-3):
    cum = np.cumsum(counts) / counts.sum()
    i0 = int(np.searchsorted(cum, q))
    i1 = int(np.searchsorted(cum, 1 - q))
    lo, hi = edges[i0], edges[min(i1 + 1, edges.size - 1)]
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def layer_figure(cell_rows: np.ndarray, names: Sequence[str], fns: Sequence, stats: Sequence[Dict], title: str = "",
                 log_density: bool = False):
    """Per layer, input density (left, branch B shaded) and output density of y = f(x) (right), on a near-square grid.

    ``fns[i]`` is the layer's elementwise f on float64 arrays (None: the row holds outputs, one panel
    is drawn); ``stats[i]`` the layer's ``entropies_from_cells`` result. Atoms are drawn as bars on a
    right-hand axis labelled with their probability.
    """
    from matplotlib.figure import Figure

    from crrelu_lightning.entropy.pushforward import _pieces, pushforward_density

    k = max(1, len(names))
    layer_cols = max(1, round(math.sqrt(k / 2)))
    rows = math.ceil(k / layer_cols)
    fig = Figure(figsize=(2.5 * 2 * layer_cols, 2.0 * rows), dpi=100, layout="constrained")
    if title:
        fig.suptitle(f"{title}  (entropies in nats; B = invertible branch)", fontsize=9)
    for i, name in enumerate(names):
        s = stats[i]
        ax_in = fig.add_subplot(rows, 2 * layer_cols, 2 * i + 1)
        ax_out = fig.add_subplot(rows, 2 * layer_cols, 2 * i + 2)
        width = s.get("bin_width", math.nan)
        if not (isinstance(width, float) and width > 0 and math.isfinite(width)):
            ax_in.set_title(f"{name}: no finite values", fontsize=8)
            ax_out.axis("off")
            continue
        edges, counts, atom, total = _input_bins(cell_rows[i], width)
        occ = np.flatnonzero(counts > 0)
        if occ.size == 0:
            ax_in.set_title(f"{name}: only exact zeros", fontsize=8)
            ax_out.axis("off")
            continue
        a, b = int(occ[0]), int(occ[-1]) + 1
        dens = counts[a:b] / (total * np.diff(edges[a : b + 1]))
        lo, hi = _view_range(edges[a : b + 1], counts[a:b])
        ax_in.stairs(dens, edges[a : b + 1], fill=True, alpha=0.6, color="C0")
        ax_in.set_xlim(lo, hi)
        f = fns[i]
        side = "input x" if f is not None else "output y (not elementwise)"
        ax_in.set_xlabel(side, fontsize=8)
        ax_in.set_ylabel("density", fontsize=8)
        ax_in.set_title(f"{name}: input, H={s['input']:.2f}", fontsize=8)
        bstart = s.get("branch_start", math.nan)
        if f is not None and math.isfinite(bstart):
            ax_in.axvspan(max(bstart, lo), hi, color="C2", alpha=0.12, label="branch B")
            ax_in.axvline(bstart, color="C2", lw=1, ls="--")
            ax_in.legend(fontsize=7, loc="upper left")
        if log_density:
            ax_in.set_yscale("log")
        ax_in.tick_params(labelsize=7)
        if f is None:
            ax_out.axis("off")
            continue
        E, pd, _ = _pieces(edges, counts, total, 32, bstart if math.isfinite(bstart) else None)
        P = pd * np.diff(E)
        F = np.asarray(f(E), dtype=np.float64)
        av, am, br, dy = pushforward_density(F, P)
        f0 = float(np.asarray(f(np.zeros(1)))[0])
        if atom > 0:
            av, am = np.append(av, f0), np.append(am, atom / total)
        inside = (E[:-1] >= lo) & (E[1:] <= hi)
        ylo, yhi = float(np.min(F[:-1][inside])), float(np.max(F[1:][inside]))
        ypad = 0.05 * (yhi - ylo or 1.0)
        if dy.size:
            # Averaged over 120 display bins: p_Y has integrable spikes (f' = 0) that would flatten the rest.
            grid = np.linspace(ylo - ypad, yhi + ypad, 121)
            cdf = np.concatenate([[0.0], np.cumsum(dy * np.diff(br))])
            ax_out.stairs(np.diff(np.interp(grid, br, cdf)) / np.diff(grid), grid, fill=True, alpha=0.6, color="C1")
        if math.isfinite(bstart):
            fb = F[E >= bstart]
            ax_out.axvspan(float(fb.min()), yhi + ypad, color="C2", alpha=0.12, label="f(B)")
            ax_out.legend(fontsize=7, loc="upper right")
        ax_out.set_xlim(ylo - ypad, yhi + ypad)
        if log_density:
            ax_out.set_yscale("log")
        if am.size and am.sum() > 0:
            ax2 = ax_out.twinx()
            ax2.bar(av, am, width=0.02 * (yhi - ylo + 2 * ypad), color="C3")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("atom prob.", color="C3", fontsize=7)
            ax2.tick_params(labelsize=7)
        ax_out.set_xlabel("output y = f(x)", fontsize=8)
        ax_out.set_ylabel("density", fontsize=8)
        ax_out.set_title(f"output, H={s['whole_line']:.2f}, H_B={s['branch']:.2f}" + (f", p0={s['p0']:.2f}" if s['p0'] > 0 else ""), fontsize=8)
        ax_out.tick_params(labelsize=7)
    return fig
