"""How long one tiny tensor op takes right after a large kernel (why the EAFO fast path allocates before its call).

    python benchmarks/after_kernel_latency.py --threads 2

For each preceding call (nothing, a tiny op, ATen's GELU forward/backward and the EAFO native kernel's on the demo's
layer size, 256 × 17 × 256 float32 values), the table gives the median time of the first ``torch.empty(())``
after it and of a second one right after the first, over ``--repeats`` repetitions.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crrelu_lightning.activations import build_activation  # noqa: E402


def first_and_second(before, repeats: int):
    firsts, seconds = [], []
    for _ in range(repeats):
        before()
        t0 = time.perf_counter()
        torch.empty(())
        t1 = time.perf_counter()
        torch.empty(())
        t2 = time.perf_counter()
        firsts.append(t1 - t0)
        seconds.append(t2 - t1)
    return statistics.median(firsts) * 1e6, statistics.median(seconds) * 1e6


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--numel", type=int, default=256 * 17 * 256)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(args.numel, generator=g), torch.randn(args.numel, generator=g)
    act = build_activation("eafo_gelu", impl="compiled")
    act(x[:16])
    cases = {"nothing": lambda: None, "a tiny op (torch.empty(16))": lambda: torch.empty(16),
             "ATen GELU forward": lambda: torch.ops.aten.gelu(x),
             "ATen GELU backward": lambda: torch.ops.aten.gelu_backward(dy, x)}
    if act._native is not None:
        kernel, eps = act._native[0], act.eps.detach()
        cases["EAFO native forward"] = lambda: kernel.forward_unchecked(x, eps)
        cases["EAFO native backward"] = lambda: kernel.backward_unchecked(x, dy, eps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.numel} float32 values, "
          f"medians of {args.repeats}\n")
    print("| before | first torch.empty(()) µs | second µs |\n|---|---|---|")
    for label, fn in cases.items():
        first, second = first_and_second(fn, args.repeats)
        print(f"| {label} | {first:.1f} | {second:.1f} |")


if __name__ == "__main__":
    main()
