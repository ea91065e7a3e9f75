"""``ActivationParameterLogger``: the learnable parameters of every activation layer, per layer, in every run.

CR layers' ε (the parameter under study), PReLU's slope, StarReLU's scale and bias — any parameter owned
directly by a module whose class is a registered activation. Logged as ``act_params/<layer>.<name>``
through each logger's ``log_metrics`` (TensorBoard, CSV, W&B … alike).

Cost: on a logging step the parameters are copied into one small device tensor and that copy is started
towards the host without waiting (pinned buffer on CUDA); the values are read — and sent to the loggers — at
the *next* logging step or at the end of the epoch, when the copy is long finished. No ``.item()`` and no
host synchronisation in the training step. The CLI adds this callback to every run (``--activation_params.*``;
``every_n_steps: 0`` switches it off).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn


def registered_activation_classes() -> Tuple[type, ...]:
    """Every class in the activation registry (built-ins, the CR family and the user's registrations)."""
    from crrelu_lightning.activations import activation_class, available_activations

    return tuple({activation_class(name) for name in available_activations()})


def activation_parameters(model: nn.Module, max_elements: int = 16) -> List[Tuple[str, nn.Parameter]]:
    """``(metric name, parameter)`` for every parameter held directly by an activation module.

    Names are ``<module path>.<parameter>``; a parameter with more than one element (a per-channel PReLU)
    gets one name per element up to ``max_elements`` (``...weight.3``), beyond that it is skipped with a warning.
    """
    classes = registered_activation_classes()
    out: List[Tuple[str, nn.Parameter]] = []
    for path, module in model.named_modules():
        if not isinstance(module, classes):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.numel() > max_elements:
                rank_zero_warn(f"ActivationParameterLogger: {path}.{pname} has {p.numel()} elements "
                               f"(> max_elements={max_elements}); not logged")
                continue
            out.append((f"{path}.{pname}" if path else pname, p))
    return out


def _metric_names(params: List[Tuple[str, nn.Parameter]], prefix: str) -> List[str]:
    names = []
    for name, p in params:
        if p.numel() == 1:
            names.append(f"{prefix}/{name}")
        else:
            names += [f"{prefix}/{name}.{i}" for i in range(p.numel())]
    return names


class ActivationParameterLogger(Callback):
    """Log every activation layer's learnable parameters every ``every_n_steps`` optimizer steps.

    Args:
        every_n_steps: optimizer steps between snapshots; ``None`` follows ``Trainer(log_every_n_steps)``,
            ``0`` disables the callback.
        prefix: metric name prefix.
        max_elements: per-parameter element limit (per-channel parameters beyond it are not logged).
    """

    def __init__(self, every_n_steps: Optional[int] = None, prefix: str = "act_params", max_elements: int = 16) -> None:
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0 disables), got {every_n_steps}")
        if not prefix:
            raise ValueError("prefix must be a non-empty string, e.g. 'act_params'")
        if max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {max_elements}")
        self.every_n_steps, self.prefix, self.max_elements = every_n_steps, prefix, max_elements
        self._params: List[Tuple[str, nn.Parameter]] = []
        self._names: List[str] = []
        self._pending: Optional[Tuple[int, torch.Tensor, Optional[torch.cuda.Event]]] = None
        self._last_step = -1

    # --- hooks: one-line guards ----------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._params = activation_parameters(pl_module, self.max_elements) if self.every_n_steps != 0 else []
        self._names = _metric_names(self._params, self.prefix)
        self._pending, self._last_step = None, -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active(trainer):
            self._snapshot(trainer, trainer.global_step)  # the initial values (ε_init) as the first point

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._active(trainer) and self._due(trainer):
            self._snapshot(trainer, trainer.global_step)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active(trainer) and trainer.global_step != self._last_step:
            self._snapshot(trainer, trainer.global_step)  # the final values
        self._flush(trainer)

    # --- work ----------------------------------------------------------------------------------------
    def _active(self, trainer: Trainer) -> bool:
        return bool(self._params) and trainer.is_global_zero and bool(trainer.loggers)

    def _interval(self, trainer: Trainer) -> int:
        return self.every_n_steps if self.every_n_steps is not None else max(1, trainer.log_every_n_steps)

    def _due(self, trainer: Trainer) -> bool:
        step = trainer.global_step  # counts optimizer steps, so gradient accumulation does not repeat a point
        return step != self._last_step and step % self._interval(trainer) == 0

    def _snapshot(self, trainer: Trainer, step: int) -> None:
        """Start copying the current values to the host; the previous snapshot is logged first."""
        self._flush(trainer)
        with torch.no_grad():
            values = torch.cat([p.detach().reshape(-1).float() for _, p in self._params])
        event = None
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = values.clone()
        self._pending, self._last_step = (step, host, event), step

    def _flush(self, trainer: Trainer) -> None:
        if self._pending is None:
            return
        step, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # recorded at least one logging interval ago: already complete
        metrics: Dict[str, float] = dict(zip(self._names, host.tolist()))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
