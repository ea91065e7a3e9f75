"""What each run executes: the shared settings, the plan of runs, and their fit/test command lines.

Every run is ``crrelu-lightning fit --config FILE --model.activation=A --seed_everything=S`` plus
run-local paths (logger, checkpoint folders) so runs never collide; see docs/compare.md.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

CHECKPOINT_CLASS = "lightning.pytorch.callbacks.ModelCheckpoint"
RESUME_CHECKPOINT_CLASS = "crrelu_lightning.compare.resume_checkpoint.ResumeCheckpoint"
LOGGER_CLASS = "lightning.pytorch.loggers.TensorBoardLogger"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the comparison: ``label`` names the row (usually the activation's registry name)."""

    label: str
    activation: str
    seed: int
    kwargs: Optional[Dict[str, Any]]
    run_dir: Path


@dataclass
class Settings:
    """Everything shared by all runs of one comparison (see ``crrelu-lightning compare --help``)."""

    config: Path
    out: Path
    parallel: int = 1
    threads_per_run: Optional[int] = None
    max_steps: Optional[int] = None
    extra: List[str] = field(default_factory=list)
    overlays: List[str] = field(default_factory=list)  # --config=FILE for each config after the base
    test: bool = False
    activation_key: str = "model.activation"
    kwargs_key: str = "model.activation_kwargs"
    gpus: List[str] = field(default_factory=list)
    retry_failed: bool = False
    run_timeout: Optional[float] = None
    metric: Optional[str] = None
    mode: Optional[str] = None
    python: str = sys.executable
    baseline: Optional[str] = None
    diff_metrics: List[str] = field(default_factory=list)
    launch_prefix: List[str] = field(default_factory=list)  # e.g. srun for a multi-GPU run on SLURM

    def threads(self) -> int:
        # Split the cores evenly so K parallel runs don't oversubscribe (torch reads OMP_NUM_THREADS).
        return self.threads_per_run or max(1, (os.cpu_count() or 1) // self.parallel)


def plan(settings: Settings, activations: List[Tuple[str, str]], seeds: List[int],
         kwargs: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    """Runs in seed-major order, so an interrupted comparison holds complete seeds first."""
    return [
        RunSpec(label, name, seed, kwargs.get(label), settings.out / "runs" / label / f"seed{seed}")
        for seed in seeds
        for label, name in activations
    ]


def _load_yaml(path: Path) -> Any:
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)


def config_callbacks(config: Path) -> Tuple[List[Any], bool]:
    """The config's ``trainer.callbacks`` as a list, and whether checkpointing is enabled.

    A ``trainer:`` given as a path to another YAML file is followed (relative to the config).
    """
    cfg = _load_yaml(config) or {}
    trainer = cfg.get("trainer") or {}
    if isinstance(trainer, str):
        trainer = _load_yaml((config.parent / trainer).resolve()) or {}
    callbacks = trainer.get("callbacks") or []
    if not isinstance(callbacks, list):
        callbacks = [callbacks]
    return callbacks, trainer.get("enable_checkpointing", True) is not False


def resume_callback(run_dir: Path) -> Dict[str, Any]:
    """The runner's own checkpoint: the latest state, overwritten every epoch and at the end of training.

    Needed because Lightning (2.6 here) refreshes ``last.ckpt`` only when a top-k checkpoint is saved, so a
    monitored ``save_last`` checkpoint can be epochs old.
    """
    return {"class_path": RESUME_CHECKPOINT_CLASS,
            "init_args": {"dirpath": str(run_dir / "resume"), "filename": "resume", "monitor": None,
                          "save_top_k": 1, "save_last": False, "enable_version_counter": False}}


def run_callbacks(config: Path, run_dir: Path) -> Optional[List[Any]]:
    """The config's callbacks with every ModelCheckpoint writing into ``run_dir``, plus the resume checkpoint.

    Runs therefore never overwrite each other's checkpoints; training is unaffected. ``None`` means
    "leave the config's callbacks alone" (checkpointing disabled and nothing to rewrite).
    """
    callbacks, enabled = config_callbacks(config)
    out, n_ckpt, dirs = [], 0, {}
    for cb in callbacks:
        cb = {"class_path": cb} if isinstance(cb, str) else json.loads(json.dumps(cb))
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            cb["init_args"] = dict(cb.get("init_args") or {})
            # Checkpoints that shared a folder in the config share one in the run (e.g. best + last).
            key = str(cb["init_args"].get("dirpath"))
            if key not in dirs:
                dirs[key] = "checkpoints" if not dirs else f"checkpoints_{len(dirs)}"
            cb["init_args"]["dirpath"] = str(run_dir / dirs[key])
            n_ckpt += 1
        out.append(cb)
    if not enabled:
        return out if n_ckpt else None
    return out + [resume_callback(run_dir)]


def _trainer_overrides(settings: Settings, spec: RunSpec, version: str,
                       callbacks: Optional[List[Any]]) -> List[str]:
    logger = {"class_path": LOGGER_CLASS,
              "init_args": {"save_dir": str(spec.run_dir), "name": "tb", "version": version}}
    args = [f"--trainer.default_root_dir={spec.run_dir}", f"--trainer.logger={json.dumps(logger)}"]
    if callbacks is not None:
        args.append(f"--trainer.callbacks={json.dumps(callbacks)}")
    if settings.max_steps is not None:
        args.append(f"--trainer.max_steps={settings.max_steps}")
    return args


def cli_args(settings: Settings, spec: RunSpec, subcommand: str) -> List[str]:
    """``SUBCOMMAND --config FILE <run-local paths> <overlays> --model.activation A --seed_everything S <extra>``.

    Overlays come after the runner's ``--trainer.callbacks`` (so their ``callbacks+:`` appends to the run-local
    list) but before the run's activation, kwargs and seed: an overlay that names an activation (e.g.
    ``model.init_args.activation: eafo_gelu``) must not turn every row of the comparison into that activation.
    """
    callbacks = run_callbacks(settings.config, spec.run_dir)
    args = [subcommand, "--config", str(settings.config)]
    args += _trainer_overrides(settings, spec, "fit" if subcommand == "fit" else subcommand, callbacks)
    args += list(settings.overlays)
    args.append(f"--{settings.activation_key}={spec.activation}")
    if spec.kwargs:
        args.append(f"--{settings.kwargs_key}={json.dumps(spec.kwargs)}")
    args.append(f"--seed_everything={spec.seed}")
    return args + list(settings.extra)  # user extras last: they may override anything above


def command(settings: Settings, args: List[str]) -> List[str]:
    return [*settings.launch_prefix, settings.python, "-m", "crrelu_lightning", *args]
