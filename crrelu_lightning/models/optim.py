"""Optimizer helpers shared by the vision and language modules.

* ``param_groups``: AdamW groups with weight decay only on matrices (``p.ndim >= 2``). Biases, norm
  weights and 0-d activation parameters (CR's ε, PReLU's slope) are excluded, as in nanoGPT / timm —
  decaying ε would pull the correction towards zero for reasons unrelated to the loss.
* ``warmup_cosine_lambda``: multiplier for ``LambdaLR``, stepped once per optimizer step::

      step < W:   m(step) = (step + 1) / W                                     (linear warm-up)
      step >= W:  m(step) = r + (1 - r) * 0.5 * (1 + cos(pi * min(1, (step - W) / max(1, T - W))))

  with W = warmup_steps, T = total_steps, r = min_lr_ratio (min lr / peak lr).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups: ``ndim >= 2`` tensors with ``weight_decay``, everything else with 0.

    Parameters with ``requires_grad=False`` are left out. Empty groups are dropped.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
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
