"""A stand-in for ``python -m crrelu_lightning fit|test ...`` so runner tests need no torch start-up.

The runner is pointed at a shell shim that execs this file with the runner's arguments. Behaviour is
chosen by the activation name, and every value written is a closed form of (activation, seed) that the
tests recompute:

- ``good*``: val_acc at steps 10, 20, 30 = base + (0.1, 0.3, 0.2) with base = 0.01·seed + 0.001·len(name);
  train_loss = 1/step; best val_acc = base + 0.3 at step 20, final = base + 0.2
- ``nan``: like ``good`` but train_loss is NaN from step 20 (exit code 0)
- ``crash``: prints a traceback ending in ``ValueError: boom <seed>`` and exits 3
- ``slow``: starts a ``sleep 60`` grandchild (pid in ``grandchild_fit.pid``) and sleeps 60 s

``test`` writes test_acc = base + 0.5. Each process appends ``start``/``end`` lines to $FAKE_LOG and
saves the environment it saw to ``<run_dir>/env.json``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple


def write_scalars(logdir: Path, scalars: Dict[str, List[Tuple[int, float]]]) -> None:
    """Write scalar events with tensorboard's own writer (no torch import)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(logdir))
    for tag, series in scalars.items():
        for step, value in series:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()


def base(name: str, seed: int) -> float:
    return 0.01 * seed + 0.001 * len(name)


def _arg(args: List[str], key: str) -> str:
    prefix = f"--{key}="
    return next(a[len(prefix):] for a in args if a.startswith(prefix))


def main(argv: List[str]) -> int:
    args = argv[argv.index("crrelu_lightning") + 1:]
    sub = args[0]
    name, seed = _arg(args, "model.activation"), int(_arg(args, "seed_everything"))
    run_dir = Path(_arg(args, "trainer.default_root_dir"))
    logger = json.loads(_arg(args, "trainer.logger"))["init_args"]
    logdir = Path(logger["save_dir"]) / logger["name"] / logger["version"]
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"start {time.time()} {name} {seed} {os.getpid()}\n")
    keys = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
    (run_dir / f"env_{sub}.json").write_text(json.dumps({k: os.environ.get(k) for k in keys}))
    b = base(name, seed)
    try:
        if name.startswith("crash"):
            print("Traceback (most recent call last):\n  File 'x.py', line 1\nValueError: boom", seed, file=sys.stderr)
            return 3
        if name.startswith("slow"):  # with a grandchild, as dataloader workers would be
            import subprocess

            child = subprocess.Popen(["sleep", "60"])
            (run_dir / f"grandchild_{sub}.pid").write_text(str(child.pid))
            time.sleep(60)
        if sub == "test":
            write_scalars(logdir, {"test_acc": [(30, b + 0.5)]})
            return 0
        time.sleep(0.5)  # long enough for parallel runs to overlap measurably
        loss = [(s, 1.0 / s) for s in (10, 20, 30)]
        if name.startswith("nan"):
            loss = [(s, v if s < 20 else math.nan) for s, v in loss]
        write_scalars(logdir, {
            "train_loss": loss,
            "val_acc": [(10, b + 0.1), (20, b + 0.3), (30, b + 0.2)],
            "entropy/block0": [(10, 1.0 + b), (30, 1.5 + b)],
            "epoch": [(30, 2.0)],
        })
        ckpt = run_dir / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        (ckpt / "epoch=2-step=30.ckpt").write_bytes(b"not a real checkpoint")
        return 0
    finally:
        if log:
            with open(log, "a") as fh:
                fh.write(f"end {time.time()} {name} {seed}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
