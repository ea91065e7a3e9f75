"""Reduced re-run of the entropy plots of docs/results.md §4–§5 with the new estimators.

One seed of the demo (configs/demo.yaml, optionally + configs/demo_eafo.yaml) per activation, the
monitor collecting every ``--every`` steps with the whole-line, branch and (for comparison with the
old plots) fixed-width plug-in estimators. Writes the TensorBoard runs under ``--out`` and one plot
per estimator to ``--out/entropy_<estimator>.png``.

    python scripts/entropy_rerun.py --data-root data --max-steps 120 --out runs/entropy_rerun \\
        --runs crrelu gelu relu crrelu_eafo_step
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, args) -> Path:
    from crrelu_lightning.callbacks import ActivationEntropyMonitor
    from crrelu_lightning.cli import cli_main

    act = "crrelu" if name.startswith("crrelu") else name
    configs = ["--config", str(ROOT / "configs" / "demo.yaml")]
    if name.endswith("_eafo_step"):
        configs += ["--config", str(ROOT / "configs" / "demo_eafo.yaml")]
    cli = cli_main(configs + [f"--model.activation={act}", f"--trainer.max_steps={args.max_steps}", "--trainer.max_epochs=-1",
                              f"--data.root={args.data_root}", f"--trainer.logger.init_args.save_dir={args.out}",
                              f"--trainer.logger.init_args.name={name}", "--trainer.enable_progress_bar=false",
                              "--trainer.limit_val_batches=0",
                              f"--seed_everything={args.seed}"], run=False)
    trainer = cli.trainer
    keep = [c for c in trainer.callbacks if not isinstance(c, ActivationEntropyMonitor) and "Checkpoint" not in type(c).__name__]
    monitor = ActivationEntropyMonitor(every_n_steps=args.every, estimators=["whole_line", "branch", "plugin"],
                                       log_histograms_every_n_steps=None, log_image_every_n_steps=None)
    trainer.callbacks = keep + [monitor]
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return Path(trainer.logger.log_dir)


def plot(logdirs, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crrelu_lightning.compare.collect import read_scalars

    data = {name: read_scalars(d) for name, d in logdirs.items()}
    for prefix, label in (("entropy/", "whole line entropy/<layer>"), ("entropy_branch/", "branch entropy_branch/<layer>"),
                          ("entropy_plugin_d0.05/", "old plug-in, Δ = 0.05")):
        fig = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
        axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
        for c, (name, scalars) in enumerate(data.items()):
            layers = sorted(t for t in scalars if t.startswith(prefix))
            for i, tag in enumerate(layers[:4]):
                steps, values = zip(*scalars[tag])
                axes[i].plot(steps, values, color=f"C{c}", label=name)
                axes[i].set_title(tag[len(prefix):], fontsize=8)
        for ax in axes:
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].set_ylabel(f"{label} (nats)", fontsize=8)
        axes[-1].legend(fontsize=7)
        FigureCanvasAgg(fig).print_png(out / f"entropy_{prefix.strip('/')}.png")
        eps = {n: [(t, s[t][-1]) for t in s if t.startswith("eafo/eps/") or t.startswith("activation/eps")] for n, s in data.items()}
        print(prefix, {n: {t: round(v[1], 3) for t, v in e} for n, e in eps.items() if e} if prefix == "entropy/" else "")
    for name, scalars in data.items():
        for prefix in ("entropy/", "entropy_branch/", "entropy_plugin_d0.05/"):
            tags = sorted(t for t in scalars if t.startswith(prefix))
            first = [scalars[t][0][1] for t in tags]
            last = [scalars[t][-1][1] for t in tags]
            print(f"| {name} | {prefix} | " + " | ".join(f"{a:+.3f} → {b:+.3f}" for a, b in zip(first, last)) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["crrelu", "gelu", "relu", "crrelu_eafo_step"])
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="runs/entropy_rerun")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logdirs = {}
    for name in args.runs:
        existing = sorted((out / name).glob("version_*"))
        logdirs[name] = existing[-1] if existing and (out / name / "done").exists() else run(name, args)
        (out / name / "done").touch()
    plot(logdirs, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
