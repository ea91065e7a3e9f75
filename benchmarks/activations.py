"""Forward+backward time and bytes kept for backward, per activation, with ratios to GELU from the same run.

    python benchmarks/activations.py                                   # every registry entry, 2^22 fp32, CPU
    python benchmarks/activations.py --activations gelu relu crrelu --numel 268435456 --device cuda --dtype bfloat16

Each step is ``act(x).backward(dy)`` on a leaf ``x`` (so the time includes accumulating x.grad, the same for
every activation). Activations are timed round-robin (one step of each in turn, ``--repeats`` rounds, after
``--warmup`` rounds) so that background load hits all of them alike; the table reports the median.
Besides the registry entries, "crrelu (paper expression)" (impl="reference") and "crrelu (eager Function)"
(impl="eager") are added whenever crrelu is benchmarked; plain "crrelu" uses ``--impl`` (default "compiled").
Bytes kept for backward are counted with ``torch.autograd.graph.saved_tensors_hooks`` (parameters excluded
only if they are not input-sized; the 4-byte ε is listed).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crrelu_lightning.activations import available_activations, build_activation  # noqa: E402
from crrelu_lightning.activations.registry import activation_class  # noqa: E402

CR_CLASSES = tuple(activation_class(n) for n in ("crrelu", "crgelu", "crsilu", "crmish"))


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> Tuple[int, int]:
    """(bytes, count) of tensors autograd keeps for backward of ``module(x)`` (x itself included)."""
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    del y
    return sum(seen.values()), len(seen)


def unique_entries(names: List[str]) -> List[str]:
    """Registry names without aliases, one per class (its class name if registered, else its shortest name)."""
    by_class: Dict[type, List[str]] = {}
    for name in names:
        by_class.setdefault(activation_class(name), []).append(name)
    out = []
    for cls, aliases in by_class.items():
        preferred = cls.__name__.lower()
        out.append(preferred if preferred in aliases else min(aliases, key=lambda n: (len(n), n)))
    return out


def build_cases(names: List[str], impl: str) -> List[Tuple[str, torch.nn.Module]]:
    cases: List[Tuple[str, torch.nn.Module]] = []
    for name in names:
        if activation_class(name) in CR_CLASSES:
            cases.append((name if impl == "compiled" else f"{name} ({impl})", build_activation(name, impl=impl)))
            if activation_class(name) is activation_class("crrelu"):
                if impl != "eager":
                    cases.append(("crrelu (eager Function)", build_activation(name, impl="eager")))
                cases.append(("crrelu (paper expression)", build_activation(name, impl="reference")))
        else:
            cases.append((name, build_activation(name)))
    return cases


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    names = list(args.activations) if args.activations and args.activations != ["all"] else available_activations()
    names = unique_entries(["gelu"] + [n.lower() for n in names])
    cases = build_cases(names, args.impl)
    torch.manual_seed(0)
    x = torch.randn(args.numel, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)
    modules = {}
    for label, m in cases:
        modules[label] = m.to(device)

    def step(m: torch.nn.Module) -> None:
        m(x).backward(dy)

    times: Dict[str, List[float]] = {label: [] for label, _ in cases}
    for round_ in range(args.warmup + args.repeats):
        for label, m in cases:
            x.grad = None
            synchronize(device)
            t0 = time.perf_counter()
            step(m)
            synchronize(device)
            if round_ >= args.warmup:
                times[label].append(time.perf_counter() - t0)
    x.grad = None
    med = {label: statistics.median(ts) * 1e3 for label, ts in times.items()}
    gelu = med["gelu"]
    elem = x.element_size() * x.numel()
    rows = [
        f"| activation | fwd+bwd ms (median) | × GELU | bytes kept for backward | × input size | tensors |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in cases:
        nbytes, count = saved_bytes(m, x)
        rows.append(
            f"| {label} | {med[label]:.3f} | {med[label] / gelu:.2f} | {nbytes:,} | {nbytes / elem:.2f} | {count} |"
        )
    header = f"{args.numel:,} elements, {args.dtype}, device {device}" + (
        f" = 2^{args.numel.bit_length() - 1}" if args.numel & (args.numel - 1) == 0 else ""
    )
    env = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        + f"; median of {args.repeats} round-robin repeats after {args.warmup} warm-up rounds; impl={args.impl}"
    )
    return "\n".join([f"{header}; {env}", "", *rows])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activations", nargs="+", default=["all"], help="registry names, or 'all' (default)")
    p.add_argument("--numel", type=int, default=2**22)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    p.add_argument("--impl", default="compiled", choices=["auto", "compiled", "eager", "reference"],
                   help="implementation of the CR entries (crrelu's eager and paper variants are always added)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA requested but not available")
    print(run(args))


if __name__ == "__main__":
    main()
