"""Image augmentation: batched tensor ops (fast path) and the paper's timm recipe (per image, PIL).

``basic`` (batched, on uint8-free float tensors): random crop with zero padding ``p`` then horizontal flip::

    out[n] = flip_n( pad(x[n], p)[:, oy_n : oy_n + H, ox_n : ox_n + W] ),  oy, ox ~ U{0..2p}, flip_n ~ Bernoulli(½)

``paper``: timm ``create_transform`` with RandomResizedCrop, flip, colour jitter 0.4,
RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing 0.25 (docs/vision.md, Paper recipes).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence, get_args

import torch
import torch.nn.functional as F

# A Literal so LightningCLI rejects a typo at parse time and lists the choices.
Augment = Literal["none", "basic", "paper"]
AUGMENTS = get_args(Augment)


def check_augment(augment: str) -> str:
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    return augment


def batch_crop_flip(x: torch.Tensor, padding: int, flip: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop after zero padding plus random horizontal flip, for a (N, C, H, W) batch at once."""
    n, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h)).to(x.device)  # (n, h)
        cols = (ox[:, None] + torch.arange(w)).to(x.device)  # (n, w)
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indexing with the channel slice in between puts the channel dim last: (n, h, w, c).
        x = xp[idx_n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def paper_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float]):
    """The paper's training transform (timm ``create_transform``), applied per PIL image."""
    from timm.data import create_transform

    return create_transform(
        input_size=img_size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
    )
