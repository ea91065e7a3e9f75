"""One-shot CUDA checks for the CR kernels (about 8 minutes on one H200). Prints Markdown tables.

    python benchmarks/gpu_checks.py                 # everything
    python benchmarks/gpu_checks.py --skip-vit      # kernels only

1. Correctness on CUDA: impl="compiled" (hand-written Triton kernels, and Inductor with CRRELU_DISABLE_TRITON=1)
   against the reference expression, float32 and bfloat16, every CR base, forward, dx and dε.
2. Elementwise forward+backward at 2^28 elements, float32 and bfloat16, ratios to GELU
   (the same harness as benchmarks/activations.py), plus CRReLU through Inductor instead of Triton.
   Acceptance: CRReLU ≤ 1.15× GELU.
3. ViT-S/16 training step (224², batch 256, bf16 autocast, AdamW, random data): images/s and peak memory for
   GELU, the paper's CRReLU expression and this project's CRReLU. Acceptance: ≥ 0.95× GELU images/s and
   peak memory ≤ 1.02× GELU.
4. The same step with the whole model compiled (``model.compile()``): graph breaks (``torch._dynamo.explain``,
   must be 0), images/s and peak memory against compiled GELU. Acceptance: 0 breaks, ≥ 0.97× images/s,
   ≤ 1.01× memory.

Exits with status 0 and a message when CUDA is not available.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_correctness() -> str:
    from crrelu_lightning.activations import cr_kernels, cr_math
    from crrelu_lightning.activations.cr_kernels import CRFunction

    rows = ["| base | dtype | backend | max abs err y | max abs err dx | rel err dε | ok |", "|---|---|---|---|---|---|---|"]
    tol = {torch.float32: (2e-5, 2e-4), torch.bfloat16: (3e-2, 2e-2)}
    all_ok = True
    for backend in ("triton", "inductor"):
        os.environ["CRRELU_DISABLE_TRITON"] = "1" if backend == "inductor" else "0"
        for base in cr_math.CR_BASES:
            for dtype in (torch.float32, torch.bfloat16):
                torch.manual_seed(0)
                x = (torch.randn(1_000_003, device="cuda") * 2.5).to(dtype).requires_grad_(True)
                dy = torch.randn_like(x)
                eps = torch.tensor(-0.3, device="cuda", requires_grad=True)
                y = CRFunction.apply(x, eps, base, 1.0, True)
                y.backward(dy)
                xr = x.detach().double().requires_grad_(True)
                er = eps.detach().double().requires_grad_(True)
                yr = cr_math.cr_reference(base, xr, er, 1.0)
                yr.backward(dy.double())
                ey = (y.double() - yr).abs().max().item()
                edx = (x.grad.double() - xr.grad).abs().max().item()
                edeps = abs(eps.grad.item() - er.grad.item()) / max(1.0, abs(er.grad.item()))
                atol, rtol_eps = tol[dtype]
                scale = 1.0 if dtype == torch.float32 else 10.0  # bf16 outputs up to ~10 in magnitude
                ok = ey <= atol * scale and edx <= atol * scale and edeps <= rtol_eps
                all_ok &= ok
                rows.append(f"| {base} | {str(dtype)[6:]} | {backend} | {ey:.2e} | {edx:.2e} | {edeps:.2e} | {'yes' if ok else 'NO'} |")
    os.environ["CRRELU_DISABLE_TRITON"] = "0"
    rows.append("")
    rows.append(f"Correctness: {'PASS' if all_ok else 'FAIL'}")
    return "\n".join(rows)


def elementwise_tables(numel: int, repeats: int) -> str:
    from benchmarks.activations import parse_args, run

    out = []
    for dtype in ("float32", "bfloat16"):
        args = parse_args(
            ["--activations", "gelu", "relu", "silu", "crrelu", "--numel", str(numel), "--dtype", dtype,
             "--device", "cuda", "--repeats", str(repeats), "--warmup", "3"]
        )
        table = run(args)
        out.append(table)
        # CRReLU through Inductor instead of the hand-written Triton kernel, same run conditions
        os.environ["CRRELU_DISABLE_TRITON"] = "1"
        args = parse_args(
            ["--activations", "gelu", "crrelu", "--numel", str(numel), "--dtype", dtype, "--device", "cuda",
             "--repeats", str(repeats), "--warmup", "3"]
        )
        out.append("CRReLU via Inductor (CRRELU_DISABLE_TRITON=1):\n" + run(args))
        os.environ["CRRELU_DISABLE_TRITON"] = "0"
        for line in table.splitlines():
            if line.startswith("| crrelu |"):
                ratio = float(line.split("|")[3])
                out.append(f"Acceptance CRReLU ≤ 1.15× GELU ({dtype}): {ratio:.2f}× → {'PASS' if ratio <= 1.15 else 'FAIL'}")
        out.append("")
    return "\n".join(out)


def _vit_results(configs, batch: int, steps: int, warmup: int, compiled: bool):
    """(label, images/s, peak GiB, graph breaks or None) per config; ViT-S/16, bf16 autocast, AdamW."""
    import timm

    results = []
    for label, act in configs:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, act_layer=act, num_classes=1000).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        target = torch.randint(0, 1000, (batch,), device="cuda")
        breaks = None
        if compiled:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                breaks = torch._dynamo.explain(model)(x[:2]).graph_break_count
            torch._dynamo.reset()
            model.compile()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30
        results.append((label, batch / statistics.median(times), peak, breaks))
        del model, opt, x, target
        torch.cuda.empty_cache()
    return results


def _vit_rows(results, ours_index: int, min_ips: float, max_mem: float):
    g_ips, g_mem = results[0][1], results[0][2]
    rows = ["| activation | images/s | × GELU | peak memory GiB | × GELU | graph breaks |", "|---|---|---|---|---|---|"]
    for label, ips, mem, breaks in results:
        rows.append(f"| {label} | {ips:.0f} | {ips / g_ips:.2f} | {mem:.2f} | {mem / g_mem:.3f} | "
                    f"{'-' if breaks is None else breaks} |")
    ours = results[ours_index]
    ok = ours[1] / g_ips >= min_ips and ours[2] / g_mem <= max_mem and ours[3] in (None, 0)
    return rows, ok


def vit_step_table(batch: int, steps: int, warmup: int) -> str:
    from crrelu_lightning.activations import CRReLU, get_activation

    configs = [
        ("GELU", get_activation("gelu")),
        ("CRReLU, paper expression", functools.partial(CRReLU, impl="reference")),
        ("CRReLU, this project (compiled)", functools.partial(CRReLU, impl="compiled")),
        ("CRReLU, eager Function", functools.partial(CRReLU, impl="eager")),
    ]
    rows, ok = _vit_rows(_vit_results(configs, batch, steps, warmup, compiled=False), 2, 0.95, 1.02)
    rows.append("")
    rows.append(
        f"ViT-S/16, 224², batch {batch}, bf16 autocast, AdamW, eager model, median of {steps} steps after {warmup}. "
        f"Acceptance (≥ 0.95× images/s, ≤ 1.02× memory): {'PASS' if ok else 'FAIL'}"
    )
    return "\n".join(rows)


def compiled_vit_table(batch: int, steps: int, warmup: int) -> str:
    """The whole model under ``torch.compile`` (Inductor generates the activation's kernels, fused with the
    neighbours; CUDA graphs become possible because there are no breaks)."""
    from crrelu_lightning.activations import CRReLU, get_activation

    configs = [
        ("GELU", get_activation("gelu")),
        ("CRReLU", CRReLU),
        ("CRReLU, paper expression", functools.partial(CRReLU, impl="reference")),
    ]
    rows, ok = _vit_rows(_vit_results(configs, batch, steps, warmup, compiled=True), 1, 0.97, 1.01)
    rows.append("")
    rows.append(
        f"ViT-S/16, 224², batch {batch}, bf16 autocast, AdamW, whole model compiled (model.compile()), median of "
        f"{steps} steps after {warmup} (compilation excluded). Graph breaks counted by torch._dynamo.explain. "
        f"Acceptance (0 breaks, ≥ 0.97× images/s, ≤ 1.01× memory): {'PASS' if ok else 'FAIL'}"
    )
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--numel", type=int, default=2**28)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--vit-steps", type=int, default=20)
    p.add_argument("--skip-vit", action="store_true")
    p.add_argument("--skip-compiled", action="store_true", help="skip the whole-model torch.compile table")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to check here (run this on a machine with a GPU).")
        return 0
    print(f"# CR kernels on {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    print("## Correctness (compiled vs reference)\n")
    print(check_correctness(), flush=True)
    print(f"\n## Elementwise forward+backward, {args.numel:,} elements\n")
    print(elementwise_tables(args.numel, args.repeats), flush=True)
    if not args.skip_vit:
        print("\n## ViT-S/16 training step\n")
        print(vit_step_table(args.batch, args.vit_steps, warmup=5), flush=True)
        if not args.skip_compiled:
            print("\n## ViT-S/16 training step, whole model compiled\n")
            print(compiled_vit_table(args.batch, args.vit_steps, warmup=5), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
