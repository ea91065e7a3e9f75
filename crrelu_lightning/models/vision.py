"""``ImageClassifier``: a timm model whose MLP activations come from the activation registry.

Training loss: cross-entropy with optional label smoothing and mixup/cutmix (timm ``Mixup``, soft targets).
Optimizer: any ``OptimizerCallable`` over ``param_groups`` (no decay for ndim < 2: biases, norm weights,
CR's ε); default AdamW and ``WarmupCosineLR`` stepped every optimizer step (docs/vision.md)::

    lr(step) = lr · m(step),   m = linear warm-up to 1, then cosine down to min_lr / lr

Hyperparameters are plain names and dicts (activation by registry name; optimizer and scheduler as the CLI's
``class_path``/``init_args``), so checkpoints load with ``torch.load(weights_only=True)`` and
``ImageClassifier.load_from_checkpoint``.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

import crrelu_lightning.models.presets  # noqa: F401  (registers the small-image presets with timm)
from crrelu_lightning.activations import activation_class, get_activation
from crrelu_lightning.models.optim import (
    LRSchedulerCallable,
    OptimizerCallable,
    WarmupCosineLR,
    configure_optimization,
    param_groups,
    unsaved_callables,
)


def default_schedule(optimizer: torch.optim.Optimizer) -> WarmupCosineLR:
    """The recipes' schedule when none is configured: no warm-up, cosine to 1e-5 over the run."""
    return WarmupCosineLR(optimizer, min_lr=1e-5)


def merge_shape_kwargs(model_kwargs: Dict[str, Any], shape: Dict[str, Any]) -> Dict[str, Any]:
    """The typed shape arguments (``num_classes`` … from the datamodule) to add to ``model_kwargs``.

    A key given both ways with different values is an error now, not a ``Target 6 is out of bounds`` later.
    """
    out = {}
    for key, value in shape.items():
        if value is None:
            continue
        if key in model_kwargs and model_kwargs[key] != value:
            raise ValueError(
                f"model_kwargs[{key!r}]={model_kwargs[key]!r} contradicts {key}={value!r} (the datamodule's value "
                f"when run from the CLI); drop {key} from model_kwargs"
            )
        out[key] = value
    return out


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming close timm matches if ``name`` is not a registered timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(
        f"Unknown timm model {name!r}.{hint} List all with: python -c \"import timm; print(timm.list_models('*vit*'))\" "
        f"(project presets: {', '.join(crrelu_lightning.models.presets.PRESETS)})."
    )


def mlp_blocks(model: nn.Module):
    """Every MLP/FFN block of a timm model: modules with ``fc1``, ``act`` and ``fc2`` (timm ``Mlp`` family)."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("fc1", "act", "fc2"))]


def replace_mlp_activations(model: nn.Module, act_factory) -> int:
    """Give every MLP block its own ``act_factory()`` module unless it already holds that class; returns count.

    Needed because some timm models (e.g. TNT) take no ``act_layer`` and hard-code GELU in their MLPs.
    """
    target = act_factory.func if hasattr(act_factory, "func") else act_factory
    blocks = mlp_blocks(model)
    for blk in blocks:
        if type(blk.act) is not target:
            blk.act = act_factory()
    return len(blocks)


class ImageClassifier(LightningModule):
    """Image classifier over any timm model with a registry activation in every MLP block.

    Args:
        model_name: timm model name (``timm.list_models()``) or a project preset (e.g. ``vit_fmnist``).
        model_kwargs: any other ``timm.create_model`` keyword (patch_size, depth …). On the command line
            ``--model.model_kwargs.KEY VALUE`` changes one key and keeps the rest.
        activation: registry name (``available_activations()``), e.g. ``crrelu``, ``gelu``.
        activation_kwargs: constructor kwargs of the activation (e.g. ``{"eps_init": 0.01}``).
        num_classes, img_size, in_chans: the data's shape. The CLI links them from the datamodule
            (``data.num_classes`` …), so configs never repeat them; ``None`` keeps the timm model's default.
        class_names: label names (linked from the datamodule where known); stored in hparams and the checkpoint,
            used by ``PredictionWriter``.
        drop_path_rate: stochastic depth (``None``: the timm default).
        optimizer: ``OptimizerCallable`` (``--optimizer SGD --optimizer.lr 0.1``), called on ``param_groups``
            so ε, norms and biases are never decayed. ``None``: AdamW(lr 1e-3, betas (0.9, 0.999), wd 0.05).
        lr_scheduler: ``LRSchedulerCallable``. ``None``: ``WarmupCosineLR(min_lr=1e-5)`` stepped every step.
        label_smoothing: cross-entropy smoothing. mixup_alpha / cutmix_alpha: > 0 enables timm ``Mixup``.
        compile: ``torch.compile`` the timm network in place (``nn.Module.compile``: parameter names and
            checkpoints unchanged); losses and torchmetrics stay eager. CR activations compile without graph breaks.
    """

    def __init__(
        self,
        model_name: str = "vit_fmnist",
        model_kwargs: Optional[Dict[str, Any]] = None,
        activation: str = "crrelu",
        activation_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        img_size: Optional[int] = None,
        in_chans: Optional[int] = None,
        class_names: Optional[List[str]] = None,
        drop_path_rate: Optional[float] = None,
        optimizer: Optional[OptimizerCallable] = None,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        activation_kwargs = dict(activation_kwargs or {})
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha/cutmix_alpha must be >= 0, got {mixup_alpha}/{cutmix_alpha}")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        shape = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans, "drop_path_rate": drop_path_rate}
        model_kwargs.update(merge_shape_kwargs(model_kwargs, shape))
        # Fail before any model is built, with the valid names in the message.
        check_model_name(model_name)
        activation_class(activation)  # KeyError listing every registered activation
        self.save_hyperparameters(ignore=unsaved_callables(optimizer=optimizer, lr_scheduler=lr_scheduler))
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.class_names = list(class_names) if class_names is not None else None

        act_factory = get_activation(activation, **activation_kwargs)
        try:
            self.model = timm.create_model(model_name, act_layer=act_factory, **model_kwargs)
        except TypeError as err:
            if "act_layer" not in str(err):
                raise
            self.model = timm.create_model(model_name, **model_kwargs)
        self.num_mlp_activations = replace_mlp_activations(self.model, act_factory)
        if self.num_mlp_activations == 0:
            raise ValueError(f"timm model {model_name!r} has no MLP blocks (fc1/act/fc2) whose activation could be set")
        if compile:
            self.model.compile()

        self.num_classes = int(self.model.num_classes)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                label_smoothing=label_smoothing, num_classes=self.num_classes,
            )
        top5 = min(5, self.num_classes)
        self.val_top1 = MulticlassAccuracy(self.num_classes, top_k=1)
        self.val_top5 = MulticlassAccuracy(self.num_classes, top_k=top5)
        self.test_top1 = MulticlassAccuracy(self.num_classes, top_k=1)
        self.test_top5 = MulticlassAccuracy(self.num_classes, top_k=top5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None:
            if x.shape[0] % 2:  # timm Mixup needs an even batch; drop one sample from odd (last) batches
                x, y = x[:-1], y[:-1]
            x, y_soft = self.mixup(x, y)
            loss = torch.sum(-y_soft * F.log_softmax(self(x), dim=-1), dim=-1).mean()
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def _eval_step(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        top1, top5 = (self.val_top1, self.val_top5) if stage == "val" else (self.test_top1, self.test_top5)
        top1(logits, y)
        top5(logits, y)
        self.log(f"{stage}/loss", loss, sync_dist=True)
        self.log(f"{stage}/acc", top1, prog_bar=True)
        self.log(f"{stage}/acc_top5", top5)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities, shape (batch, num_classes)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(x).float(), dim=-1)

    def configure_optimizers(self):
        return configure_optimization(self, param_groups(self), self.optimizer, self.lr_scheduler or default_schedule)
