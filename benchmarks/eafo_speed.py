"""EAFO activations against their bases: kernel fwd+bwd and the demo ViT training step, ratios from one run.

    python benchmarks/eafo_speed.py --threads 2                 # both tables (Markdown)
    python benchmarks/eafo_speed.py --part kernel --numel 4194304
    python benchmarks/eafo_speed.py --part step --processes 5 --repeats 30   # mean over 5 processes

1. Kernel: ``act(x).backward(dy)`` on a leaf x of ``--numel`` float32 values, for GELU (torch), ``eafo_gelu``
   (fused bodies compiled by Inductor, and eager), CR-GELU, SiLU and ``eafo_silu``.
2. Train step: the demo model (``vit_fmnist``, batch 256, random data, the demo's optimizer: ``configs/demo.yaml``'s
   AdamW over ``param_groups``) with GELU and with ``eafo_gelu`` in all MLP blocks, eager and with the whole
   network compiled (``model.compile()``).

Every case is timed in rounds (one step of each per round, ``--repeats`` rounds after ``--warmup``), so background
load hits all cases alike; the order within a round is shuffled (seeded), so no case always runs right after the
same other one. The tables give medians and ratios to the base measured in the same rounds (for the step: the
median of the per-round ratios with a 95 % bootstrap interval over rounds).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crrelu_lightning.activations import build_activation, get_activation  # noqa: E402

KERNEL_CASES = {  # label -> (registry name, kwargs)
    "gelu": ("gelu", {}),
    "eafo_gelu": ("eafo_gelu", {"impl": "compiled"}),
    "eafo_gelu (table)": ("eafo_gelu", {"impl": "compiled", "form": "table"}),
    "eafo_gelu (eager)": ("eafo_gelu", {"impl": "eager"}),
    "crgelu": ("crgelu", {"impl": "compiled"}),
    "silu": ("silu", {}),
    "eafo_silu": ("eafo_silu", {"impl": "compiled"}),
    "eafo_silu (table)": ("eafo_silu", {"impl": "compiled", "form": "table"}),
}
STEP_CASES = {"gelu": ("gelu", {}), "eafo_gelu": ("eafo_gelu", {})}
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml")


def round_robin(fns: Dict[str, Callable[[], None]], warmup: int, repeats: int, seed: int = 0) -> Dict[str, List[float]]:
    """Seconds per call of each function in each round: one call of each per round, in a shuffled order."""
    for fn in fns.values():  # first calls compile; not timed
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(seed)
    for r in range(warmup + repeats):
        rng.shuffle(order)  # a fixed order would give each case the same predecessor (its caches, its threads)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def demo_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer the demo trains with: ``configs/demo.yaml``'s class and init_args over ``param_groups``."""
    import importlib

    import yaml

    from crrelu_lightning.models.optim import param_groups

    with open(DEMO_CONFIG) as fh:
        cfg = yaml.safe_load(fh)["optimizer"]
    module, _, name = cfg["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(param_groups(model), **cfg.get("init_args", {}))


def ratio_interval(num: List[float], den: List[float], n_boot: int = 2000) -> Tuple[float, float, float]:
    """Median of the per-round ratios num/den and its 95 % percentile-bootstrap interval (rounds resampled)."""
    ratios = np.asarray(num) / np.asarray(den)
    rng = np.random.default_rng(0)
    boots = np.median(rng.choice(ratios, size=(n_boot, ratios.size), replace=True), axis=1)
    return float(np.median(ratios)), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def kernel_table(args) -> str:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.numel, generator=g).requires_grad_(True)
    dy = torch.randn(args.numel, generator=g)
    fns = {}
    for label, (name, kw) in KERNEL_CASES.items():
        act = build_activation(name, **kw)

        def step(act=act):
            act(x).backward(dy)
            x.grad = None

        fns[label] = step
    med = {k: statistics.median(v) for k, v in round_robin(fns, args.warmup, args.repeats).items()}
    rows = ["| activation | fwd+bwd ms (median) | × base (same run) |", "|---|---|---|"]
    for label in KERNEL_CASES:
        base = "silu" if "silu" in label else "gelu"
        rows.append(f"| {label} | {med[label] * 1e3:.2f} | {med[label] / med[base]:.2f} |")
    return f"Kernel: {args.numel} float32 values, fwd+bwd\n\n" + "\n".join(rows)


def step_table(args) -> Tuple[str, Dict[str, Tuple[float, float, float]]]:
    import timm

    import crrelu_lightning.models.presets  # noqa: F401  (registers vit_fmnist)

    g = torch.Generator().manual_seed(0)
    xb = torch.randn(args.batch_size, 1, 28, 28, generator=g)
    yb = torch.randint(0, 10, (args.batch_size,), generator=g)
    fns = {}
    for mode in args.modes:
        for label, (name, kw) in STEP_CASES.items():
            torch.manual_seed(0)
            model = timm.create_model("vit_fmnist", act_layer=get_activation(name, **kw))
            if mode == "compiled":
                model.compile()
            opt = demo_optimizer(model)

            def step(model=model, opt=opt):
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            fns[f"{label}|{mode}"] = step
    times = round_robin(fns, args.warmup, args.repeats)
    rows = ["| activation | mode | step ms (median) | × GELU, same round (median) | 95 % interval |", "|---|---|---|---|---|"]
    ratios = {}
    for mode in args.modes:
        for label in STEP_CASES:
            k = f"{label}|{mode}"
            r, lo, hi = ratio_interval(times[k], times[f"gelu|{mode}"])
            if label != "gelu":
                ratios[mode] = (r, lo, hi)
            rows.append(f"| {label} | {mode} | {statistics.median(times[k]) * 1e3:.1f} | {r:.3f} | [{lo:.3f}, {hi:.3f}] |")
    return f"Demo ViT train step (vit_fmnist, batch {args.batch_size}, the demo's AdamW, float32)\n\n" + "\n".join(rows), ratios


def step_runs(args) -> str:
    """The step table in ``--processes`` separate processes (one after another): the VM's speed drifts
    between processes more than within one, so the mean over processes gets a t-interval across them."""
    import json
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--part", "step", "--processes", "1", "--json",
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size), "--modes", *args.modes]
    runs = []
    for i in range(args.processes):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"process {i + 1}/{args.processes}: " + ", ".join(f"{m} {runs[-1][m][0]:.3f}" for m in args.modes),
              flush=True)
    head = "| mode | " + " | ".join(f"process {i + 1}" for i in range(len(runs))) + " | mean | 95 % t-interval |"
    rows = [head, "|" + "---|" * (len(runs) + 3)]
    for mode in args.modes:
        meds = np.array([run[mode][0] for run in runs])
        half = _t975(len(meds) - 1) * meds.std(ddof=1) / np.sqrt(len(meds)) if len(meds) > 1 else float("nan")
        cells = " | ".join(f"{r[mode][0]:.3f} [{r[mode][1]:.3f}, {r[mode][2]:.3f}]" for r in runs)
        rows.append(f"| {mode} | {cells} | {meds.mean():.3f} | [{meds.mean() - half:.3f}, {meds.mean() + half:.3f}] |")
    return (f"eafo_gelu / gelu, demo ViT train step: per process the median per-round ratio [95 % bootstrap], "
            f"{args.repeats} rounds each\n\n" + "\n".join(rows))


def _t975(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["kernel", "step", "both"], default="both")
    p.add_argument("--numel", type=int, default=2**22)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--processes", type=int, default=1, help="step table in N separate processes, then their mean")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child of --processes
    args = p.parse_args(argv)
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"load average {load:.1f}; medians of {args.repeats} round-robin rounds after {args.warmup} warm-up rounds\n")
    if args.part in ("kernel", "both"):
        print(kernel_table(args) + "\n")
    if args.part in ("step", "both"):
        if args.processes > 1:
            print(step_runs(args))
        else:
            table, ratios = step_table(args)
            print(table)
            if args.json:
                import json

                print(json.dumps(ratios))
                return
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
