"""Training-step time with ActivationEntropyMonitor off / at default settings / collecting every step.

All configurations run in this one process, interleaved round by round (so machine load hits them
alike), each from the same initial weights, on in-memory random batches of the model's input size.
Step time = wall time between consecutive ``on_train_batch_start`` calls (forward, backward,
optimizer, callbacks, logging), after ``--warmup`` steps.

    python benchmarks/monitor_overhead.py                       # configs/demo.yaml model (CPU demo)
    python benchmarks/monitor_overhead.py --timm-model vit_small_patch16_224 --img-size 224 \\
        --in-chans 3 --num-classes 1000 --batch-size 256 --precision bf16-mixed   # ViT-S on a GPU

Without configs/demo.yaml (or with ``--timm-model``) the model is an ``ImageClassifier``-free
fallback: a timm model with CRReLU in its MLPs, cross-entropy and AdamW.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from crrelu_lightning.callbacks import ActivationEntropyMonitor  # noqa: E402
from crrelu_lightning.callbacks._activation_taps import find_activation_modules  # noqa: E402


class StepTimer(Callback):
    """Wall time between consecutive training-batch starts (GPU synchronised)."""

    def __init__(self) -> None:
        self.starts = []

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(self._now())

    def on_train_end(self, trainer, pl_module):
        self.starts.append(self._now())

    def durations(self):
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


class TimmClassifier(LightningModule):
    """Fallback model: a timm classifier with CRReLU MLP activations, CE loss, AdamW."""

    def __init__(self, model_name: str, img_size: int, in_chans: int, num_classes: int, **model_kwargs) -> None:
        super().__init__()
        import timm

        import crrelu_lightning.models.presets  # noqa: F401  (registers vit_fmnist)
        from crrelu_lightning.activations import get_activation

        self.model = timm.create_model(
            model_name, img_size=img_size, in_chans=in_chans, num_classes=num_classes, act_layer=get_activation("crrelu"), **model_kwargs
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def demo_model(config: Path):
    """(model, batch_size, input shape) from the demo config, parsed by the project's CLI."""
    from crrelu_lightning.cli import cli_main

    cli = cli_main(["--config", str(config), "--trainer.logger=false", "--trainer.callbacks=[]"], run=False)
    model = cli.model
    batch = int(cli.datamodule.hparams.get("batch_size", 256)) if hasattr(cli.datamodule, "hparams") else 256
    inner = model.model
    shape = (getattr(inner, "patch_embed").proj.in_channels, *inner.patch_embed.img_size)
    return model, batch, shape, int(inner.num_classes)


def run_once(model, monitor, args, shape, num_classes, log_dir):
    n = args.batch_size * 4
    ds = torch.utils.data.TensorDataset(torch.randn(n, *shape), torch.randint(0, num_classes, (n,)))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False)
    timer = StepTimer()
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        callbacks=([monitor] if monitor is not None else []) + [timer],
        logger=TensorBoardLogger(log_dir, name="bench"),
        log_every_n_steps=20,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(copy.deepcopy(model), loader)
    return timer.durations()[args.warmup :]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--timm-model", default=None, help="benchmark this timm model instead of the demo config")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--steps", type=int, default=100, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    source = "fallback"
    if args.timm_model is None and Path(args.config).exists():
        try:
            model, args.batch_size, shape, num_classes = demo_model(Path(args.config))
            source = f"{args.config} (CLI parser)"
        except Exception as err:  # a config in flux must not stop the benchmark
            print(f"could not build {args.config} ({err!r}); using the fallback model", file=sys.stderr)
            args.timm_model = "vit_fmnist"
    if source == "fallback":
        name = args.timm_model or "vit_fmnist"
        model = TimmClassifier(name, args.img_size, args.in_chans, args.num_classes)
        shape, num_classes = (args.in_chans, args.img_size, args.img_size), args.num_classes
        source = f"timm {name} (fallback)"

    configs = {
        "off": lambda: None,
        "default": lambda: ActivationEntropyMonitor(),
        "every step": lambda: ActivationEntropyMonitor(every_n_steps=1),
        # Paired design against machine noise: collection on even steps only, so adjacent steps
        # differ by exactly one collection (sampling + binning in forward, all_reduce + logging after).
        "every 2nd step": lambda: ActivationEntropyMonitor(every_n_steps=2),
    }
    times = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as log_dir:
        for r in range(args.rounds):
            for name, make in configs.items():
                times[name].append(run_once(model, make(), args, shape, num_classes, log_dir))
                print(f"round {r + 1}/{args.rounds} {name}: mean {statistics.mean(times[name][-1]) * 1e3:.2f} ms", file=sys.stderr)

    layers = len(find_activation_modules(model))
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.accelerator != "cpu" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nmodel: {source}; {layers} activation layers; batch {args.batch_size}; input {tuple(shape)}; "
          f"precision {args.precision}; device {dev}; torch {torch.__version__}")
    print(f"{args.rounds} rounds × {args.steps} steps per configuration (interleaved), after {args.warmup} warm-up steps\n")
    flat = {k: [t for run in v for t in run] for k, v in times.items()}
    base_mean, base_median = statistics.mean(flat["off"]), statistics.median(flat["off"])
    print("| monitor | mean step ms | median step ms | mean / off | median / off |")
    print("|---|---|---|---|---|")
    for name in ("off", "default", "every step"):
        mean, med = statistics.mean(flat[name]), statistics.median(flat[name])
        print(f"| {name} | {mean * 1e3:.2f} | {med * 1e3:.2f} | {mean / base_mean:.3f} | {med / base_median:.3f} |")

    # Step index i of a run is global_step warmup + i; collection when it is even.
    on = [t for run in times["every 2nd step"] for i, t in enumerate(run) if (args.warmup + i) % 2 == 0]
    off = [t for run in times["every 2nd step"] for i, t in enumerate(run) if (args.warmup + i) % 2 == 1]
    extra = statistics.median(on) - statistics.median(off)
    print(f"\npaired (every 2nd step): collecting steps median {statistics.median(on) * 1e3:.2f} ms, "
          f"other steps {statistics.median(off) * 1e3:.2f} ms → one collection costs ≈ {extra * 1e3:.2f} ms "
          f"= {extra / statistics.median(off):.2%} of a step;")
    print(f"at the default every_n_steps=50 that is {extra / 50 / statistics.median(off):.3%} of the step time.")

    # The picture is drawn on rank 0 every log_image_every_n_steps (default 1000) steps: time it alone,
    # for `layers` CRReLU layers fed 4096 N(0, 1) inputs (the default sample of one call).
    from crrelu_lightning.activations import build_activation
    from crrelu_lightning.entropy import CellHistogram, entropies_from_cells
    from crrelu_lightning.entropy.display import figure_to_rgb, layer_figure

    step = statistics.median(off)
    k = max(layers, 1)
    cells = CellHistogram(k)
    for i in range(k):
        cells.update(torch.randn(4096, generator=torch.Generator().manual_seed(i)), row=i)
    act = build_activation("crrelu", eps_init=-0.3).double()

    def f(x):
        with torch.no_grad():
            return act.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()

    rows = cells.state_tensor().numpy()
    t0 = time.perf_counter()
    stats = [entropies_from_cells(r, f, branch_start=0.0) for r in rows]
    est_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    figure_to_rgb(layer_figure(rows, [f"layer{i}" for i in range(k)], [f] * k, stats))
    img = time.perf_counter() - t0
    print(f"log-time estimates (whole line + branch) for {k} layers: {est_ms:.1f} ms (inside the paired collection cost)")
    # Non-collection steps pay one disabled Python hook call per activation module: time that alone.
    from crrelu_lightning.callbacks._activation_taps import ActivationTaps

    relu, tiny, calls = nn.ReLU(), torch.zeros(1), 20000
    t0 = time.perf_counter()
    for _ in range(calls):
        relu(tiny)
    bare = time.perf_counter() - t0
    taps = ActivationTaps({"relu": relu}, lambda *a: None)
    t0 = time.perf_counter()
    for _ in range(calls):
        relu(tiny)
    hooked = time.perf_counter() - t0
    taps.remove()
    hook = max(0.0, (hooked - bare) / calls)
    print(f"distribution image for {layers} layers: {img * 1e3:.0f} ms per image (every 1000 steps: {img / 1000 / step:.3%} of a step)")
    print(f"disabled hook: {hook * 1e6:.2f} µs per activation call ({layers} per step: {layers * hook / step:.5%} of a step)")
    total = extra / 50 + img / 1000 + layers * hook
    print(f"\nestimated default overhead = collection/50 + image/1000 + disabled hooks = {total / step:.3%} of the step time")

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
