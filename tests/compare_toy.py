"""Test-local LightningModule + datamodule for the comparison runner's end-to-end test.

Imported by ``crrelu-lightning fit`` subprocesses through ``class_path: compare_toy.ToyClassifier``
(the test puts ``tests/`` on PYTHONPATH), so the runner test does not depend on the project's
real models and datamodules.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, Optional

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crrelu_lightning.activations import get_activation


class ToyDataModule(LightningDataModule):
    """Two Gaussian blobs in ``dim`` dimensions; the data seed is fixed so every run sees the same data."""

    def __init__(self, n_train: int = 256, n_val: int = 128, dim: int = 8, batch_size: int = 64):
        super().__init__()
        self.n_train, self.n_val, self.dim, self.batch_size = n_train, n_val, dim, batch_size

    def setup(self, stage: Optional[str] = None) -> None:
        g = torch.Generator().manual_seed(1234)
        n = self.n_train + 2 * self.n_val
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, self.dim, generator=g) + (2.0 * y[:, None] - 1.0) * 0.7
        self.splits = {
            "train": TensorDataset(x[: self.n_train], y[: self.n_train]),
            "val": TensorDataset(x[self.n_train : self.n_train + self.n_val], y[self.n_train : self.n_train + self.n_val]),
            "test": TensorDataset(x[self.n_train + self.n_val :], y[self.n_train + self.n_val :]),
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.batch_size)


class ToyClassifier(LightningModule):
    """MLP ``Linear -> activation -> Linear``; logs loss/accuracy plus an ``entropy/`` and an ``eps`` tag.

    ``fail_when="NAME:SEED"`` raises at the start of training for that activation and seed, so a
    test can check that one crashed run is recorded as failed while the others finish. ``step_sleep``
    seconds per training step make a run last long enough to be cancelled half-way.
    """

    def __init__(
        self,
        activation: str = "gelu",
        activation_kwargs: Optional[Dict[str, Any]] = None,
        hidden: int = 16,
        lr: float = 0.05,
        fail_when: Optional[str] = None,
        step_sleep: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(8, hidden)
        self.act = get_activation(activation, **(activation_kwargs or {}))()
        self.fc2 = nn.Linear(hidden, 2)

    def on_train_start(self) -> None:
        seed = os.environ.get("PL_GLOBAL_SEED")
        if self.hparams.fail_when == f"{self.hparams.activation}:{seed}":
            raise RuntimeError(f"toy failure requested for {self.hparams.fail_when}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        if self.hparams.step_sleep:
            time.sleep(self.hparams.step_sleep)
        x, y = batch
        h = self.act(self.fc1(x))
        loss = nn.functional.cross_entropy(self.fc2(h), y)
        self.log("train_loss", loss)
        # Gaussian-entropy proxy 0.5*log(2*pi*e*var): enough to give the plots an entropy/ tag.
        self.log("entropy/act0", 0.5 * math.log(2 * math.pi * math.e) + 0.5 * torch.log(h.detach().var() + 1e-12))
        if hasattr(self.act, "eps"):
            self.log("eafo/eps/act0", self.act.eps.detach().float())
        return loss

    def _eval(self, batch, prefix: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{prefix}_loss", nn.functional.cross_entropy(logits, y))
        self.log(f"{prefix}_acc", (logits.argmax(-1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
