"""A tiny image config for the reliability tests: the shipped layout (TensorBoard logger, best + last
checkpoints through AtomicModelCheckpoint) around a 2-block ViT on synthetic images."""
import os
import signal
from pathlib import Path
from typing import Optional

import yaml
from lightning.pytorch.callbacks import Callback

STEPS_PER_EPOCH = 8  # 256 synthetic images / batch 32


def tiny_config(tmp_path: Path, every_n_train_steps: Optional[int] = None, data: Optional[dict] = None,
                extra_callbacks=(), max_epochs: int = 2, **trainer) -> Path:
    last_args = {"filename": "last", "save_top_k": 1, "enable_version_counter": False}
    if every_n_train_steps:
        last_args["every_n_train_steps"] = every_n_train_steps
    best_args = {"monitor": "val/acc", "mode": "max", "filename": "best-{epoch}", "save_top_k": 1}
    callbacks = [{"class_path": "crrelu_lightning.checkpointing.AtomicModelCheckpoint", "init_args": a}
                 for a in (best_args, last_args)] + list(extra_callbacks)
    cfg = {
        "seed_everything": 0,
        "trainer": dict({
            "accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "tiny"}},
            "callbacks": callbacks,
        }, **trainer),
        "model": {
            "class_path": "crrelu_lightning.models.vision.ImageClassifier",
            "init_args": {
                "model_name": "vit_fmnist",
                "model_kwargs": {"img_size": 16, "patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 2,
                                 "num_heads": 2, "num_classes": 4},
                "activation": "crrelu",
            },
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2, "weight_decay": 0.0}},
        "lr_scheduler": {"class_path": "crrelu_lightning.models.optim.WarmupCosineLR", "init_args": {"warmup_steps": 2}},
        "data": data or {
            "class_path": "crrelu_lightning.data.vision.SyntheticImageDataModule",
            "init_args": {"num_train": 256, "num_test": 32, "batch_size": 32, "noise": 0.1},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class KillAtStep(Callback):
    """SIGKILL this process when ``global_step`` reaches ``step``, before that batch runs: a preemption at a
    chosen, reproducible moment (no timing races in the test)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

