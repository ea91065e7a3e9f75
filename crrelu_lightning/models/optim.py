"""Optimizers and LR schedules shared by the vision and language modules.

* ``param_groups``: weight decay only on matrices (``p.ndim >= 2``). Biases, norm weights and 0-d
  activation parameters (CR's ε, PReLU's slope) go to a group with ``weight_decay=0``, as in nanoGPT /
  timm — decaying ε would pull the correction towards zero for reasons unrelated to the loss.
* ``WarmupCosineLR``: linear warm-up then cosine, stepped once per optimizer step::

      step < W:   lr(step) = base_lr · (step + 1) / W                                      (linear warm-up)
      step >= W:  lr(step) = min_lr + (base_lr - min_lr) · ½ (1 + cos(π · min(1, (step - W) / max(1, T - W))))

  with W = warmup steps, T = total steps (from the trainer unless given).
* ``configure_optimization``: what a module's ``configure_optimizers`` returns, given an
  ``OptimizerCallable`` / ``LRSchedulerCallable`` (the types LightningCLI builds from ``--optimizer`` /
  ``--lr_scheduler``). Modules call ``optimizer(param_groups(...))`` so any optimizer keeps the no-decay group.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

try:  # the types LightningCLI recognises for dependency-injected optimizers
    from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
except ImportError:  # pragma: no cover  (jsonargparse missing: plain callables)
    OptimizerCallable = Callable[[Iterable], Optimizer]  # type: ignore[misc]
    LRSchedulerCallable = Callable[[Optimizer], Any]  # type: ignore[misc]


def param_groups(module: nn.Module, weight_decay: Optional[float] = None) -> List[Dict]:
    """Two groups: ``ndim >= 2`` tensors with the optimizer's weight decay, everything else with 0.

    ``weight_decay=None`` leaves the decay group without a ``weight_decay`` key, so it takes the value the
    optimizer was built with (``--optimizer.weight_decay``); a number sets it explicitly.
    Parameters with ``requires_grad=False`` are left out. Empty groups are dropped.
    """
    if weight_decay is not None and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    decay_group: Dict[str, Any] = {"params": decay}
    if weight_decay is not None:
        decay_group["weight_decay"] = float(weight_decay)
    groups = [decay_group, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine_lambda(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``: linear warm-up over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over ``warmup_cosine_lambda``; call ``.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(warmup_steps, total_steps, min_lr_ratio))


class WarmupCosineLR(LRScheduler):
    """Linear warm-up then cosine to ``min_lr`` (formula in the module docstring), one step per optimizer step.

    Args:
        optimizer: wrapped optimizer (its ``lr`` is the peak).
        warmup_steps: warm-up length in optimizer steps. warmup_epochs: the same in epochs (converted with the
            run's steps per epoch; the larger of the two wins).
        min_lr: absolute floor of the cosine (``min_lr_ratio`` instead: a fraction of each group's peak).
        total_steps: schedule length; ``None`` takes the run's ``trainer.estimated_stepping_batches`` when the
            module calls ``fit_to_run`` (``configure_optimization`` does).
    """

    step_interval = "step"  # read by configure_optimization

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        min_lr_ratio: Optional[float] = None,
        total_steps: Optional[int] = None,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0 or warmup_epochs < 0:
            raise ValueError(f"warmup_steps/warmup_epochs must be >= 0, got {warmup_steps}/{warmup_epochs}")
        if min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr}")
        if min_lr_ratio is not None and not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps, self.warmup_epochs = int(warmup_steps), float(warmup_epochs)
        self.min_lr, self.min_lr_ratio, self.total_steps = float(min_lr), min_lr_ratio, total_steps
        self._warmup = self.warmup_steps
        for group in optimizer.param_groups:
            peak = group.get("initial_lr", group["lr"])
            if min_lr_ratio is None and self.min_lr > peak:
                raise ValueError(f"min_lr={min_lr} is above the optimizer's lr={peak}; lower min_lr or raise lr")
        super().__init__(optimizer, last_epoch)

    def fit_to_run(self, total_steps: int, steps_per_epoch: float) -> None:
        """Fix the schedule length (unless given) and convert ``warmup_epochs``; re-applies the current lr."""
        if self.total_steps is None:
            self.total_steps = max(1, int(total_steps))
        warm = self.warmup_steps
        if self.warmup_epochs > 0:
            warm = max(warm, int(round(self.warmup_epochs * steps_per_epoch)))
        self._warmup = min(warm, self.total_steps)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _floor(self, base: float) -> float:
        return base * self.min_lr_ratio if self.min_lr_ratio is not None else self.min_lr

    def get_lr(self) -> List[float]:
        step, w, t = self.last_epoch, self._warmup, self.total_steps
        out = []
        for base in self.base_lrs:
            if step < w:
                out.append(base * (step + 1) / w)
            elif t is None:  # length not known yet (before fit_to_run): hold the peak
                out.append(base)
            else:
                progress = min(1.0, (step - w) / max(1, t - w))
                floor = self._floor(base)
                out.append(floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        return out


def unsaved_callables(**values: Any) -> List[str]:
    """Names among ``values`` to leave out of ``save_hyperparameters`` so checkpoints stay ``weights_only``.

    Under LightningCLI the hyperparameters are the config's plain ``class_path``/``init_args`` dicts, which
    re-instantiate on ``load_from_checkpoint``: keep them. Built in Python, an optimizer is a callable: drop it.
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        if _given_hyperparameters.get() is not None:
            return []
    except ImportError:  # pragma: no cover  (older Lightning: no CLI-given hparams)
        pass
    return [k for k, v in values.items() if v is not None]


def default_adamw(params: Iterable, lr: float = 1e-3, weight_decay: float = 0.05) -> Optimizer:
    """The recipes' optimizer when none is configured: AdamW(lr, betas (0.9, 0.999), weight_decay)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


def configure_optimization(
    module: Any,
    params: Any,
    optimizer: Optional[Callable[[Any], Optimizer]],
    lr_scheduler: Optional[Callable[[Optimizer], Any]],
    total_steps: Optional[int] = None,
    monitor: str = "val/loss",
) -> Any:
    """Build the optimizer over ``params`` and the scheduler; return what ``configure_optimizers`` returns.

    ``optimizer=None`` uses ``default_adamw``. A scheduler with ``fit_to_run`` (``WarmupCosineLR``) learns the
    run's length (``total_steps`` or the trainer's estimate) and is stepped every optimizer step; other
    schedulers (``StepLR``, ``CosineAnnealingLR`` …) step once per epoch as usual; ``ReduceLROnPlateau``
    watches ``monitor``.
    """
    opt = (optimizer or default_adamw)(params)
    if lr_scheduler is None:
        return opt
    return with_scheduler(module, opt, lr_scheduler, total_steps, monitor)


def with_scheduler(module: Any, opt: Optimizer, lr_scheduler: Callable[[Optimizer], Any],
                   total_steps: Optional[int] = None, monitor: str = "val/loss") -> Dict[str, Any]:
    """``{"optimizer", "lr_scheduler"}`` for a built optimizer and an ``LRSchedulerCallable`` (see above)."""
    sched = lr_scheduler(opt)
    config: Dict[str, Any] = {"scheduler": sched, "interval": getattr(sched, "step_interval", "epoch")}
    if hasattr(sched, "fit_to_run"):
        trainer = module.trainer
        total = int(total_steps or trainer.estimated_stepping_batches)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        sched.fit_to_run(total, total / epochs)
    if isinstance(sched, ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}
