"""Estimator error vs ε for CRReLU on N(0, 1): the monitor's whole-line and branch estimators and the
fixed-width plug-in of the outputs, against quadrature over every preimage (the reference of
tests/test_entropy_accuracy.py). Prints a table and writes docs/img/entropy_error_vs_eps.png.

    python benchmarks/entropy_error_vs_eps.py [--n 2000000] [--samples-per-collection 4096]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_entropy_accuracy import reference  # noqa: E402  (scipy quadrature, independent of the estimators)

from crrelu_lightning.activations import build_activation  # noqa: E402
from crrelu_lightning.entropy import CellHistogram, HistogramEstimator, entropies_from_cells  # noqa: E402

EPS = (-0.5, -0.3, -0.2, -0.1, -0.03, -0.01, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5)


def estimate(eps: float, x: torch.Tensor):
    act = build_activation("crrelu", eps_init=eps, impl="reference").double()

    def f(a):
        with torch.no_grad():
            return act.forward(torch.as_tensor(a, dtype=torch.float64)).numpy()

    cells = CellHistogram(1)
    cells.update(x)
    s = entropies_from_cells(cells.state_tensor()[0].numpy(), f, branch_start=0.0)
    plug = HistogramEstimator(-10, 10, bins=400)
    with torch.no_grad():
        plug.update(act(x.double()).float())
    return s["whole_line"], s["branch"], float(plug.compute()["entropy"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2_000_000)
    p.add_argument("--samples-per-collection", type=int, default=4096, help="second, small-sample column (monitor default per call)")
    p.add_argument("--out", default=str(ROOT / "docs" / "img" / "entropy_error_vs_eps.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(args.n, generator=torch.Generator().manual_seed(0))
    xs = torch.randn(args.samples_per_collection, generator=torch.Generator().manual_seed(1))
    rows = []
    print(f"CRReLU on N(0,1); n = {args.n} (and n = {args.samples_per_collection} for the small-sample columns); errors in nats\n")
    print("| ε | true whole line | whole-line error | plug-in Δ=0.05 error | true branch | branch error | whole-line error, small n | branch error, small n |")
    print("|---|---|---|---|---|---|---|---|")
    for eps in EPS:
        ref_w, ref_b = reference(f"crrelu{eps:+g}", 1.0)
        w, b, plug = estimate(eps, x)
        ws, bs, _ = estimate(eps, xs)
        rows.append((eps, w - ref_w, plug - ref_w, b - ref_b, ws - ref_w, bs - ref_b))
        print(f"| {eps:+g} | {ref_w:+.4f} | {w - ref_w:+.4f} | {plug - ref_w:+.4f} | {ref_b:+.4f} | {b - ref_b:+.4f} | {ws - ref_w:+.4f} | {bs - ref_b:+.4f} |")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r = np.array(rows)
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.axhline(0, color="k", lw=0.8)
    ax.plot(r[:, 0], r[:, 2], "s--", color="C3", label="plug-in of outputs, Δ = 0.05 (old default)")
    ax.plot(r[:, 0], r[:, 1], "o-", color="C0", label=f"entropy/ (whole line), n = {args.n:.0e}")
    ax.plot(r[:, 0], r[:, 3], "^-", color="C2", label=f"entropy_branch/, n = {args.n:.0e}")
    ax.plot(r[:, 0], r[:, 4], "o:", color="C0", alpha=0.6, label=f"entropy/, n = {args.samples_per_collection}")
    ax.plot(r[:, 0], r[:, 5], "^:", color="C2", alpha=0.6, label=f"entropy_branch/, n = {args.samples_per_collection}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("ε of CRReLU (symlog axis)")
    ax.set_ylabel("estimate − quadrature (nats)")
    ax.set_title("Estimator error vs ε, X ~ N(0, 1)")
    ax.legend(fontsize=7)
    FigureCanvasAgg(fig).print_png(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
