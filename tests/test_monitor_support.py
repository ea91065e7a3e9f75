"""Shared pieces of the monitor tests (no tests here): a tiny LightningModule and an in-memory logger.

Module-level so that DDP-spawned processes can unpickle them.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch import nn

from crrelu_lightning.activations import build_activation


class TinyNet(LightningModule):
    """Linear → act1 → Linear → act2 → Linear regression; optional dropout, NaN side branch, rank-0-only layer."""

    def __init__(
        self,
        act1: str = "relu",
        act2: str = "crrelu",
        lr: float = 0.05,
        dropout: float = 0.0,
        nan_branch: bool = False,
        rank0_only_layer: bool = False,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(4, width)
        self.act1 = build_activation(act1)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)
        self.act2 = build_activation(act2)
        self.head = nn.Linear(width, 1)
        if nan_branch:
            self.bad = nn.Tanh()
        if rank0_only_layer:
            self.side = nn.GELU()
            self.register_buffer("side_input", torch.linspace(-2, 2, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act1(self.fc1(x)))
        if self.hparams.nan_branch:
            self.bad(torch.full_like(h, float("nan")))  # diagnostics-only branch that went bad
        if self.hparams.rank0_only_layer and self.global_rank == 0:
            self.side(self.side_input)  # a layer only rank 0 ever calls
        return self.head(self.act2(self.fc2(h)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def regression_data(n: int = 96, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


class _Recorder:
    """Stands in for a SummaryWriter: records histogram and image calls."""

    def __init__(self) -> None:
        self.histograms: List[Tuple[str, int, Dict[str, Any]]] = []
        self.images: List[Tuple[str, int, Any]] = []

    def add_histogram_raw(self, tag: str, global_step: int, **kwargs: Any) -> None:
        self.histograms.append((tag, global_step, copy.deepcopy(kwargs)))

    def add_image(self, tag: str, img: Any, global_step: int, dataformats: str = "CHW") -> None:
        self.images.append((tag, global_step, img.shape))


class MemoryLogger(Logger):
    """Logger keeping every ``log_metrics`` call in memory (``.metrics``: list of (step, dict))."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: List[Tuple[int, Dict[str, float]]] = []
        self._recorder = _Recorder()

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> _Recorder:
        return self._recorder

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Dict[str, float], step: int = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def by_step(self, prefix: str = "entropy/") -> Dict[int, Dict[str, float]]:
        out: Dict[int, Dict[str, float]] = {}
        for step, m in self.metrics:
            picked = {k: v for k, v in m.items() if k.startswith(prefix)}
            if picked:
                out.setdefault(step, {}).update(picked)
        return out
