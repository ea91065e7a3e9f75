"""Small-image model presets, registered with timm so ``timm.create_model(name, **kw)`` builds them.

Dimensions follow the paper recipes of docs/vision.md (32×32 inputs, patch 4):

* ``vit_tiny_patch4_32`` / ``deit_tiny_patch4_32``: dim 192, depth 12, heads 3, MLP ratio 4. As in timm
  (``vit_tiny_patch16_224`` vs ``deit_tiny_patch16_224``) the two share one architecture; DeiT differs in
  its training recipe, not its layers. Both names exist so configs and result tables read like the paper.
* ``tnt_s_patch4_32``: TNT-S, outer dim 384, inner dim 24, depth 12, outer heads 6, inner heads 4. The pixel
  embedding uses stride 1 so each 4×4 patch holds 16 inner "pixel" tokens (stride 4 would leave one).
* ``vit_fmnist``: 28×28 grey, patch 7 (4×4 = 16 tokens), dim 128, depth 4, heads 4, MLP ratio 2 — sized so
  the demo reaches ≥ 88 % Fashion-MNIST test accuracy within minutes on 2 CPU cores.

Any keyword (``num_classes``, ``drop_path_rate``, ``act_layer``, ``img_size`` …) overrides the preset.
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models import is_model
from timm.models.tnt import TNT
from timm.models.vision_transformer import VisionTransformer

PRESETS = ("vit_tiny_patch4_32", "deit_tiny_patch4_32", "tnt_s_patch4_32", "vit_fmnist")

_VIT_TINY_32 = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, num_classes=10)
_TNT_S_32 = dict(
    img_size=32, patch_size=4, embed_dim=384, inner_dim=24, depth=12, num_heads_outer=6, num_heads_inner=4,
    mlp_ratio=4.0, first_stride=1, qkv_bias=False, num_classes=10,
)
_VIT_FMNIST = dict(
    img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10,
)


def _drop_pretrained(kwargs: dict) -> dict:
    # timm passes these to every model fn; our presets have no pretrained weights.
    if kwargs.pop("pretrained", False):
        raise ValueError("crrelu_lightning presets have no pretrained weights; use pretrained=False")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return kwargs


def _vit(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**dict(_VIT_TINY_32, **_drop_pretrained(kwargs)))


def vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Tiny for 32×32 images, patch 4."""
    return _vit(pretrained=pretrained, **kwargs)


def deit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-Tiny for 32×32 images, patch 4 (same layers as ViT-Tiny; see module docstring)."""
    return _vit(pretrained=pretrained, **kwargs)


def tnt_s_patch4_32(pretrained: bool = False, **kwargs: Any) -> TNT:
    """TNT-Small for 32×32 images, patch 4, 16 inner pixels per patch."""
    return TNT(**dict(_TNT_S_32, **_drop_pretrained(dict(kwargs, pretrained=pretrained))))


def vit_fmnist(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Small ViT for 28×28 single-channel images (Fashion-MNIST demo)."""
    return VisionTransformer(**dict(_VIT_FMNIST, **_drop_pretrained(dict(kwargs, pretrained=pretrained))))


# Register once: re-importing (e.g. a reloaded module in tests) must not trip timm's duplicate warning.
for _fn in (vit_tiny_patch4_32, deit_tiny_patch4_32, tnt_s_patch4_32, vit_fmnist):
    if not is_model(_fn.__name__):
        register_model(_fn)
