"""Entropy curves beside accuracy for the general-EAFO experiment (docs/results.md §9).

Reads the TensorBoard scalars every compare run wrote (``OUT/runs/<label>/seed*/tb/fit``) and draws one row
per family: validation accuracy, whole-line entropy, branch entropy and ε against the optimizer step, each the
mean over seeds (±1 sd band) of the mean over the network's activation layers.

    python scripts/geafo_figure.py runs/i15/gelu runs/i15/silu runs/i15/relu runs/i15/dyn \\
        --row gelu=gelu,crgelu,eafo_gelu,gelu_dyn --row silu=silu,crsilu,eafo_silu,silu_dyn \\
        --row relu=crrelu,eafo_relu --out docs/img/geafo_entropy_accuracy.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (tag prefix, panel title); a prefix ending in "/" is averaged over every layer that logged it.
PANELS = [("val/acc", "validation accuracy"), ("entropy/", "whole-line entropy H (nats), layer mean"),
          ("entropy_branch/", "branch entropy (nats), layer mean"), ("eps", "ε, layer mean")]


def layer_mean(scalars: Dict[str, List[Tuple[int, float]]], prefix: str) -> List[Tuple[int, float]]:
    """The series of ``prefix`` (or, for a ``.../`` prefix or ``eps``, the per-step mean over its layers)."""
    if not prefix.endswith("/") and prefix != "eps":
        return scalars.get(prefix, [])
    if prefix == "eps":  # act_params/<layer>.eps in every run; eafo_derive/eps duplicates it in dynamic runs
        tags = [t for t in scalars if t.startswith("act_params/") and t.endswith(".eps")]
    else:
        tags = [t for t in scalars if t.startswith(prefix)]
    by_step: Dict[int, List[float]] = {}
    for t in tags:
        for step, v in scalars[t]:
            by_step.setdefault(step, []).append(v)
    return [(s, sum(v) / len(v)) for s, v in sorted(by_step.items()) if len(v) == len(tags)]


def find_runs(outs: List[Path], label: str) -> List[Path]:
    runs = sorted(d for out in outs for d in (out / "runs" / label).glob("seed*/tb/fit") if d.is_dir())
    if not runs:
        raise SystemExit(f"no runs of {label!r} under {', '.join(map(str, outs))} (looked for runs/{label}/seed*/tb/fit)")
    return runs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("outs", nargs="+", type=Path, help="compare output folders")
    p.add_argument("--row", action="append", required=True, help="NAME=label,label,... (one figure row)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    a = p.parse_args(argv)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crrelu_lightning.compare.collect import read_scalars
    from crrelu_lightning.compare.plots import mean_band

    rows = [(r.split("=", 1)[0], r.split("=", 1)[1].split(",")) for r in a.row]
    fig = Figure(figsize=(4.2 * len(PANELS), 3.2 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(PANELS), squeeze=False)
    for r, (name, labels) in enumerate(rows):
        for i, label in enumerate(labels):
            color = f"C{i}"  # one colour per label in every panel (ReLU-style rows have no ε for the base)
            scalars = [read_scalars(d) for d in find_runs(a.outs, label)]
            for c, (prefix, title) in enumerate(PANELS):
                series = [layer_mean(s, prefix) for s in scalars]
                if not any(series):
                    continue
                steps, means, sds = mean_band(series)
                ax = axes[r][c]
                ax.plot(steps, means, color=color, label=f"{label} (n={len(series)})")
                ax.fill_between(steps, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)],
                                color=color, alpha=0.2)
                ax.set_title(f"{name}: {title}", fontsize=9)
                ax.set_xlabel("optimizer step", fontsize=8)
        axes[r][0].legend(fontsize=7)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=90)
    print(f"wrote {a.out}\n")
    print(last_values_table(a.outs, [lab for _, labels in rows for lab in labels], read_scalars))


def last_values_table(outs: List[Path], labels: List[str], read_scalars) -> str:
    """Markdown: per label, each panel's value at the last logged step, mean ± sd over seeds (n seeds)."""
    import statistics

    head = "| label | n | last step | " + " | ".join(t for _, t in PANELS) + " |"
    lines = [head, "|" + "---|" * (len(PANELS) + 3)]
    for label in labels:
        scalars = [read_scalars(d) for d in find_runs(outs, label)]
        cells, steps = [], set()
        for prefix, _ in PANELS:
            last = [series[-1] for series in (layer_mean(s, prefix) for s in scalars) if series]
            steps.update(step for step, _ in last)
            vals = [v for _, v in last]
            if not vals:
                cells.append("–")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4f}")
            else:
                cells.append(f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}")
        lines.append(f"| {label} | {len(scalars)} | {max(steps) if steps else '–'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
