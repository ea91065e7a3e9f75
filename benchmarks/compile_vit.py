"""Demo ViT training step, eager and whole-model ``torch.compile``, CR activations against GELU in one process.

    python benchmarks/compile_vit.py                       # 2 threads, batch 256, 28×28 (the demo's vit_fmnist)
    python benchmarks/compile_vit.py --repeats 40 --batch-size 128

One step = forward, cross-entropy, backward, AdamW step on random data. Every (activation, mode) pair is
timed round-robin (one step each in turn, ``--repeats`` rounds after ``--warmup``), so background load hits
all alike; the table gives medians, ratios to GELU in the same mode, and the load average before and after.
"paper expression" is CRReLU's plain formula (``impl="reference"``), differentiated by autograd.

Memory: bytes of the tensors autograd keeps between forward and backward (``saved_tensors_hooks``; for the
compiled model these are the AOTAutograd graph's saved outputs), plus parameters, gradients and AdamW state,
which are the same for every activation. That sum is the step's peak up to transient buffers.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402

import crrelu_lightning.models.presets  # noqa: E402,F401  (registers vit_fmnist)
from crrelu_lightning.activations import get_activation  # noqa: E402

CASES = {  # label -> (registry name, kwargs)
    "gelu": ("gelu", {}),
    "crrelu": ("crrelu", {}),
    "paper expression": ("crrelu", {"impl": "reference"}),
}


def build(label: str, seed: int = 0) -> torch.nn.Module:
    name, kwargs = CASES[label]
    torch.manual_seed(seed)
    return timm.create_model("vit_fmnist", act_layer=get_activation(name, **kwargs))


class Step:
    """One training step of a model (eager or compiled) with its own AdamW."""

    def __init__(self, label: str, compiled: bool, batch: Tuple[torch.Tensor, torch.Tensor]) -> None:
        self.model = build(label)
        if compiled:
            self.model.compile()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x, self.y = batch

    def __call__(self) -> None:
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def memory(self) -> Dict[str, int]:
        seen: Dict[int, int] = {}

        def pack(t: torch.Tensor):
            if t.numel():
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(self.model(self.x), self.y)
        saved = sum(n for ptr, n in seen.items() if ptr not in params and ptr != self.x.untyped_storage().data_ptr())
        loss.backward()
        state = sum(p.numel() * p.element_size() for p in self.model.parameters())
        opt = sum(t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t))
        self.opt.zero_grad(set_to_none=True)
        return {"saved": saved, "total": saved + 2 * state + opt}


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 1, 28, 28, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g))
    modes = [m for m in ("eager", "compiled") if m in args.modes]
    steps = {(label, mode): Step(label, mode == "compiled", batch) for mode in modes for label in args.activations}
    load_before = os.getloadavg()[0]
    t_compile = {}
    for key, step in steps.items():  # first calls: compilation, not timed in the table
        t0 = time.perf_counter()
        step()
        t_compile[key] = time.perf_counter() - t0
    times: Dict[Tuple[str, str], List[float]] = {k: [] for k in steps}
    for round_ in range(args.warmup + args.repeats):
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            if round_ >= args.warmup:
                times[key].append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0]
    mem = {k: s.memory() for k, s in steps.items()}
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    rows = [
        "| activation | mode | step ms (median) | × GELU (same mode) | saved for backward MiB | × GELU | step memory MiB | × GELU | first call s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        base = ("gelu", mode)
        for label in args.activations:
            k = (label, mode)
            rows.append(
                f"| {label} | {mode} | {med[k]:.1f} | {med[k] / med[base]:.2f} | {mem[k]['saved'] / 2**20:.1f} | "
                f"{mem[k]['saved'] / mem[base]['saved']:.3f} | {mem[k]['total'] / 2**20:.1f} | "
                f"{mem[k]['total'] / mem[base]['total']:.3f} | {t_compile[k]:.1f} |"
            )
    env = (
        f"vit_fmnist train step (AdamW), batch {args.batch_size}, float32; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; median of {args.repeats} round-robin rounds after "
        f"{args.warmup} warm-up rounds; load average {load_before:.1f} before, {load_after:.1f} after"
    )
    return "\n".join([env, "", *rows])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activations", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    if "gelu" not in args.activations:
        args.activations.insert(0, "gelu")
    return args


def main(argv=None) -> None:
    print(run(parse_args(argv)))


if __name__ == "__main__":
    main()
