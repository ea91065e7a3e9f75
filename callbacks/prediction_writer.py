"""``PredictionWriter``: ``predict`` writes one CSV row per sample into the run folder.

Columns: ``index`` (position in the predict dataset), ``prediction`` (argmax class), ``class_name`` (when the
model or datamodule knows the names, e.g. ImageFolder sub-folders), ``probability`` (of that class) and, with
``top_k > 1``, ``top{k}`` / ``top{k}_probability`` for the runners-up. Rows are written per batch as they come,
so an interrupted predict keeps what it wrote. Each process writes its own file (``predictions.rank{R}.csv``
beside ``predictions.csv`` of rank 0), so DDP needs no gather.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Write ``predict_step`` outputs (class probabilities or logits, shape (B, C)) as CSV.

    Args:
        output_dir: folder for the CSV; ``None`` uses the run folder (``trainer.log_dir``, else
            ``trainer.default_root_dir``).
        filename: CSV name for rank 0 (other ranks insert ``.rank{R}`` before the suffix).
        top_k: classes listed per row (1 = only the prediction).
    """

    def __init__(self, output_dir: Optional[str] = None, filename: str = "predictions.csv", top_k: int = 1) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not filename or os.sep in filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}; put folders in output_dir")
        self.output_dir, self.filename, self.top_k = output_dir, filename, int(top_k)
        self.path: Optional[Path] = None
        self._names: Optional[List[str]] = None
        self._next_index = 0

    # --- hooks ---------------------------------------------------------------------------------------
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path = self._output_path(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._names = self._class_names(trainer, pl_module)
        self._next_index = 0
        with open(self.path, "w", newline="") as fh:
            csv.writer(fh).writerow(self._header())

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Optional[Sequence[int]],
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        self._write_rows(prediction, batch_indices)

    # --- helpers -------------------------------------------------------------------------------------
    def _output_path(self, trainer: Trainer) -> Path:
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        name = self.filename
        if trainer.global_rank > 0:
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}.rank{trainer.global_rank}.{suffix}" if dot else f"{name}.rank{trainer.global_rank}"
        return folder / name

    @staticmethod
    def _class_names(trainer: Trainer, pl_module: LightningModule) -> Optional[List[str]]:
        for owner in (pl_module, trainer.datamodule):
            names = getattr(owner, "class_names", None)
            if names:
                return [str(n) for n in names]
        return None

    def _header(self) -> List[str]:
        cols = ["index", "prediction"] + (["class_name"] if self._names else []) + ["probability"]
        for k in range(2, self.top_k + 1):
            cols += [f"top{k}"] + ([f"top{k}_name"] if self._names else []) + [f"top{k}_probability"]
        return cols

    def _write_rows(self, prediction: Any, batch_indices: Optional[Sequence[int]]) -> None:
        scores = prediction[0] if isinstance(prediction, (tuple, list)) else prediction
        if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
            raise TypeError(
                f"PredictionWriter expects predict_step to return class scores of shape (batch, classes), "
                f"got {type(scores).__name__} {tuple(getattr(scores, 'shape', ()))}"
            )
        scores = scores.detach().float().cpu()
        if not torch.allclose(scores.sum(-1), torch.ones(len(scores)), atol=1e-3) or (scores < 0).any():
            scores = torch.softmax(scores, dim=-1)  # logits: report probabilities
        k = min(self.top_k, scores.shape[-1])
        prob, cls = scores.topk(k, dim=-1)
        n = len(scores)
        indices = list(batch_indices) if batch_indices is not None and len(batch_indices) == n else \
            list(range(self._next_index, self._next_index + n))
        self._next_index += n
        with open(self.path, "a", newline="") as fh:
            out = csv.writer(fh)
            for row in range(n):
                cells: List[Any] = [int(indices[row])]
                for j in range(k):
                    c = int(cls[row, j])
                    cells.append(c)
                    if self._names:
                        cells.append(self._names[c] if c < len(self._names) else "")
                    cells.append(f"{float(prob[row, j]):.6g}")
                out.writerow(cells)
