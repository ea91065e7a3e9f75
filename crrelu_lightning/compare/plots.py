"""PNG plots of a comparison: one panel per tag, one line per activation (mean over seeds, ±sd band)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from crrelu_lightning.compare.collect import Scalars

MAX_PANELS = 48  # beyond this a grid is unreadable; the rest are named in the figure title


def mean_band(runs: Sequence[List[Tuple[int, float]]]) -> Tuple[List[int], List[float], List[float]]:
    """Per step: mean and sample sd over the runs that logged that step (sd 0 where only one did)."""
    by_step: Dict[int, List[float]] = {}
    for series in runs:
        for step, value in series:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means, sds = [], []
    for s in steps:
        xs = by_step[s]
        m = sum(xs) / len(xs)
        means.append(m)
        sds.append(math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)
    return steps, means, sds


def plot_tags(data: Dict[str, List[Scalars]], tags: Sequence[str], path: Path, title: str) -> Optional[Path]:
    """Grid of panels (one per tag) with a line per label; returns ``path``, or ``None`` if no data."""
    tags = [t for t in tags if any(t in s for runs in data.values() for s in runs)]
    if not tags:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    shown = list(tags[:MAX_PANELS])
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(axes.flat, shown):
        for i, (label, runs) in enumerate(data.items()):
            series = [s[tag] for s in runs if s.get(tag)]
            if not series:
                continue
            steps, mean, sd = mean_band(series)
            c = colors[i % len(colors)]
            ax.plot(steps, mean, color=c, label=f"{label} (n={len(runs)})", lw=1.4)
            if len(series) > 1:
                ax.fill_between(steps, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                                color=c, alpha=0.2, lw=0)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    legend: Dict[str, object] = {}  # label -> handle, from every panel (a label may miss some tags)
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=min(len(legend), 5), fontsize=8)
    extra = f" (first {MAX_PANELS} of {len(tags)} tags)" if len(tags) > MAX_PANELS else ""
    fig.suptitle(f"{title}{extra}: mean ± sd over seeds", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
