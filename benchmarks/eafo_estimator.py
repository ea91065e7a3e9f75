"""Cost of dynamic EAFO's exact branch sums, against plain float64 sums of the same terms.

``BranchSumEstimator.update`` rounds every term to fixed point and sums three integer limbs per term
(exact and order-independent, so DDP reductions are bit-identical). The baseline is the same k'/f',
log(f'/g'), x and x² summed directly in float64 (order-dependent, the cheapest correct-in-expectation
form), measured interleaved in this process. A histogram update of the same values (the entropy
monitor's per-call work) is shown for scale.

    python benchmarks/eafo_estimator.py                 # 65536 samples (the callback's default cap)
    python benchmarks/eafo_estimator.py --n 1048576 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crrelu_lightning.activations import cr_math  # noqa: E402
from crrelu_lightning.entropy import HistogramEstimator  # noqa: E402
from crrelu_lightning.entropy.branch_estimator import branch_sums  # noqa: E402


def float_sums(x: torch.Tensor, eps: torch.Tensor, moments: bool) -> torch.Tensor:
    """The same statistics summed in float64 (baseline: not exact, order-dependent)."""
    x = x.to(torch.float64)
    inb = x > 0
    g = cr_math.base_derivative("relu", x).masked_fill_(~inb, 1.0)
    kd = cr_math.correction_derivative(x, 1.0)
    ratio = kd * eps / g
    fp = g * (1 + ratio)
    s = torch.where(inb, kd / fp, 0.0).sum()
    d = torch.where(inb, torch.log1p(ratio), 0.0).sum()
    out = [s, d, inb.sum()]
    if moments:
        out += [x.sum(), (x * x).sum()]
    return torch.stack([v.to(torch.float64) for v in out])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65536, help="samples per call")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.n, generator=torch.Generator().manual_seed(0))
    eps = torch.tensor(0.1)
    hist = HistogramEstimator(-10.0, 10.0, bins=400)
    cases = {
        "float64 sums, no moments (baseline)": lambda: float_sums(x, eps, False),
        "exact limbs, no moments (default)": lambda: branch_sums(x, "relu", eps, 1.0, 0.0, moments=False),
        "float64 sums + moments": lambda: float_sums(x, eps, True),
        "exact limbs + moments (track_sigma)": lambda: branch_sums(x, "relu", eps, 1.0, 0.0, moments=True),
        "histogram update (monitor)": lambda: hist.update(x),
    }
    times = {k: [] for k in cases}
    for f in cases.values():
        f()
    for _ in range(args.rounds):  # interleaved: machine load hits every case alike
        for k, f in cases.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["float64 sums, no moments (baseline)"])
    print(f"n = {args.n} samples per call, {args.threads} thread(s), median of {args.rounds} interleaved rounds")
    print(f"| case | median ms | vs baseline |\n|---|---|---|")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m * 1e3:.3f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
