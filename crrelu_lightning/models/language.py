"""Causal language modelling (pre-training and SFT) of a GPT with any registered activation.

Loss: mean next-token cross-entropy over counted positions (all positions in pre-training; response
tokens only in SFT). Validation logs ``val/loss`` (nats/token), ``val/ppl`` = exp(loss) and
``val/bpb`` = loss / ln 2 / (bytes per token) — bits per byte; for the byte tokenizer that is loss / ln 2.
"""
from __future__ import annotations

import math
import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from crrelu_lightning.models.gpt import CHECKPOINT_KEY, GPT, GPTConfig, checkpoint_gpt
from crrelu_lightning.models.optim import (
    LRSchedulerCallable, OptimizerCallable, param_groups, unsaved_callables, warmup_cosine_scheduler, with_scheduler,
)

def resolve_init_from(init_from: Union[str, Path]) -> Path:
    """``init_from`` as a Hugging Face GPT-2 folder or a checkpoint file. A run folder means its
    ``checkpoints/last.ckpt`` (or ``last.ckpt``); a logger folder holding ``version_N`` runs means the
    newest version that has one (``lightning_logs/shakespeare_char`` -> its latest run)."""
    path = Path(init_from)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"init_from={str(init_from)!r} does not exist: give a Hugging Face GPT-2 folder, "
                                "a .ckpt file, a run folder (its checkpoints/last.ckpt) or a logger folder of runs")
    if (path / "config.json").is_file():
        return path
    for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
        if candidate.is_file():
            return candidate
    versions = sorted((int(d.name[len("version_"):]), d) for d in path.glob("version_*")
                      if d.name[len("version_"):].isdigit())
    for _, d in reversed(versions):
        if (d / "checkpoints" / "last.ckpt").is_file():
            rank_zero_info(f"init_from={str(init_from)!r}: using the newest run's {d / 'checkpoints' / 'last.ckpt'}")
            return d / "checkpoints" / "last.ckpt"
    raise FileNotFoundError(f"init_from={str(init_from)!r} is a folder without config.json, checkpoints/last.ckpt, "
                            "last.ckpt or version_N/checkpoints/last.ckpt")


def load_gpt_checkpoint(path: Path, dropout: Optional[float] = None) -> GPT:
    """The GPT stored in a ``CausalLM``/``DPO`` checkpoint, shape from ``checkpoint["gpt"]``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    entry = checkpoint_gpt(ckpt, path)
    cfg = dict(entry["config"])
    if dropout is not None:
        cfg["dropout"] = dropout
    model = GPT(GPTConfig(**cfg))
    prefix = entry["prefix"]
    model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return model


def build_gpt(gpt: Optional[GPTConfig], init_from: Optional[str], activation: Optional[str] = None,
              activation_kwargs: Optional[Dict[str, Any]] = None) -> GPT:
    """A GPT of shape ``gpt`` from scratch (``init_from=None``), or loaded from ``init_from`` (see
    ``resolve_init_from``), whose shape then comes from the source (``gpt`` must be None).
    ``activation`` (with ``activation_kwargs``) replaces the activation in every MLP: for a fresh
    model it overrides ``gpt.activation``; after loading it swaps it (the paper's setting). Only
    ``activation_kwargs``: the same activation, rebuilt with these arguments."""
    kwargs = dict(activation_kwargs or {})
    if init_from is None:
        cfg = copy.deepcopy(gpt) if gpt is not None else GPTConfig()
        if activation is not None or kwargs:  # kwargs alone: the same activation with these arguments
            cfg.activation, cfg.activation_kwargs = activation or cfg.activation, kwargs
        return GPT(cfg)
    if gpt is not None:
        raise ValueError(f"give model.gpt (a fresh model's shape) or model.init_from={init_from!r} (whose shape "
                         "is read from it), not both")
    path = resolve_init_from(init_from)
    model = GPT.from_pretrained(path) if path.is_dir() else load_gpt_checkpoint(path)
    activation = activation or (model.config.activation if kwargs else None)
    if activation is not None and (activation, kwargs) != (model.config.activation, model.config.activation_kwargs):
        model.set_activation(activation, **kwargs)
    return model


def as_config(gpt: Union[GPTConfig, Dict[str, Any], None]) -> Optional[GPTConfig]:
    """``GPTConfig`` from the CLI (a dataclass) or from stored hyperparameters (a dict)."""
    return GPTConfig(**gpt) if isinstance(gpt, dict) else gpt


def check_data_fits(model: GPT, datamodule: Any) -> None:
    """Fail before training when the datamodule's sequences are longer than the model's positions."""
    hp = getattr(datamodule, "hparams", {}) or {}
    for key in ("block_size", "max_length"):
        n = hp.get(key)
        if n is not None and n > model.config.block_size:
            raise ValueError(
                f"data.{key}={n} exceeds the model's block_size={model.config.block_size}; "
                f"lower data.{key} or use a model with more positions"
            )


def sequence_targets(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from ``(x, y)`` or a dict with ``input_ids`` and ``loss_mask``
    (targets are the next tokens; positions whose next token is outside the mask become -100)."""
    if isinstance(batch, dict):
        ids, mask = batch["input_ids"], batch["loss_mask"]
        targets = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
        return ids[:, :-1], targets
    x, y = batch
    return x, y


def check_optimizer(optimizer: Any, names: Tuple[str, ...]) -> None:
    """A recipe optimizer is one of ``names`` or an ``OptimizerCallable`` (``--optimizer``)."""
    if not callable(optimizer) and optimizer not in names:
        raise ValueError(f"optimizer must be one of {names} or an optimizer (--optimizer CLASS), got {optimizer!r}")


def store_gpt(checkpoint: Dict[str, Any], model: GPT, prefix: str, init_from: Optional[str]) -> None:
    """The model's actual shape (it may come from ``init_from``) travels with the weights, explicitly."""
    checkpoint[CHECKPOINT_KEY] = {"config": asdict(model.config), "prefix": prefix, "init_from": init_from}
    checkpoint["hyper_parameters"]["gpt"] = asdict(model.config)


class CausalLM(LightningModule):
    """GPT pre-training / SFT with AdamW or RMSprop (no decay on ``ndim < 2``, so ε is not decayed) and a per-step
    warm-up + cosine schedule. Samples from ``sample_prompt`` are logged as TensorBoard text after
    every validation (rank 0).

    Args:
        gpt: shape of a model trained from scratch (``GPTConfig``; its ``activation`` is the MLP's).
        init_from: None, a Hugging Face GPT-2 folder, a ``.ckpt`` of a language run, or a run folder
            (its ``checkpoints/last.ckpt``); the shape is read from it. The checkpoints of this module
            hold the shape and weights, so they reload without ``init_from``.
        activation: a registry name replacing ``gpt.activation``, or swapped in after loading ``init_from``.
        optimizer: ``"adamw"`` (default) or ``"rmsprop"``, both with ``lr``/``weight_decay``/``betas``, or an
            ``OptimizerCallable`` (``--optimizer SGD --optimizer.lr 0.1``) called on the parameter groups.
        lr_scheduler: an ``LRSchedulerCallable``; None -> warm-up + cosine (``warmup_steps``, ``min_lr_ratio``).
        max_steps: length of the cosine schedule; None -> ``trainer.estimated_stepping_batches``.
        sample_tokenizer: used only to decode samples; None -> the datamodule's tokenizer, else bytes.
        compile: ``torch.compile`` the GPT in place (``nn.Module.compile``: checkpoints unchanged); the loss
            and metrics stay eager.
    """

    def __init__(
        self,
        gpt: Optional[GPTConfig] = None,
        init_from: Optional[str] = None,
        activation: Optional[str] = None,
        activation_kwargs: Optional[Dict[str, Any]] = None,
        optimizer: Union[Literal["adamw", "rmsprop"], OptimizerCallable] = "adamw",
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: Tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: Optional[int] = None,
        min_lr_ratio: float = 0.1,
        sample_prompt: str = "\n",
        sample_tokens: int = 200,
        sample_temperature: float = 0.8,
        sample_top_k: Optional[int] = None,
        sample_tokenizer: Optional[str] = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        check_optimizer(optimizer, ("adamw", "rmsprop"))
        gpt = as_config(gpt)
        self.save_hyperparameters(ignore=["gpt", *unsaved_callables(
            optimizer=optimizer if callable(optimizer) else None, lr_scheduler=lr_scheduler)])
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.hparams["gpt"] = asdict(gpt) if gpt is not None else None  # a plain dict: weights_only loading
        self.model = build_gpt(gpt, init_from, activation, activation_kwargs)
        if compile:
            self.model.compile()
        self._val_sum: Optional[torch.Tensor] = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.datamodule is not None:
            check_data_fits(self.model, self.trainer.datamodule)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        store_gpt(checkpoint, self.model, "model.", self.hparams.init_from)
        # the checkpoint is self-contained: reloading builds this shape and loads the weights
        checkpoint["hyper_parameters"].update(init_from=None, activation=None, activation_kwargs=None)

    def _loss_sum(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = sequence_targets(batch)
        logits = self.model(x)
        loss_sum = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum"
        )
        return loss_sum, (y != -100).sum()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss_sum, n = self._loss_sum(batch)
        loss = loss_sum / n.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(n))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss_sum, n = self._loss_sum(batch)
        self._val_sum += torch.stack([loss_sum.double(), n.double()])

    def on_validation_epoch_end(self) -> None:
        # Token-weighted mean over all ranks (every rank must call the reduction, or DDP hangs).
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        loss = total[0] / total[1].clamp(min=1)
        # BPE: loss per token -> per byte via the validation text's bytes/token; byte-level: 1.
        bpt = float(getattr(self.trainer.datamodule, "bytes_per_token", None) or 1.0)
        self.log("val/loss", loss.float(), prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss).float())
        self.log("val/bpb", (loss / math.log(2) / bpt).float())
        if self.trainer.is_global_zero and not self.trainer.sanity_checking and self.hparams.sample_tokens > 0:
            self._log_sample()

    def _tokenizer(self):
        from crrelu_lightning.tokenizers import build_tokenizer

        if self.hparams.sample_tokenizer is not None:
            return build_tokenizer(self.hparams.sample_tokenizer)
        dm = self.trainer.datamodule if self._trainer is not None else None
        return getattr(dm, "tokenizer", None) or build_tokenizer("byte")

    @torch.no_grad()
    def _log_sample(self) -> None:
        tok = self._tokenizer()
        prompt = tok.encode(self.hparams.sample_prompt) or [0]
        g = torch.Generator(device=self.device).manual_seed(0)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(torch.tensor([prompt], device=self.device), self.hparams.sample_tokens,
                                  temperature=self.hparams.sample_temperature, top_k=self.hparams.sample_top_k, generator=g)
        self.model.train(was_training)
        text = tok.decode(out[0].tolist())
        logger = self.logger
        if logger is not None and hasattr(logger.experiment, "add_text"):
            # Markdown code block keeps the play's line breaks readable in TensorBoard.
            logger.experiment.add_text("samples", "```\n" + text + "\n```", self.global_step)

    def configure_optimizers(self):
        hp = self.hparams
        if callable(self.optimizer):  # --optimizer: its own lr and weight decay; ndim < 2 stays undecayed
            opt = self.optimizer(param_groups(self.model))
        elif self.optimizer == "rmsprop":  # the reference DPO code's optimizer, for SFT as for DPO
            opt = torch.optim.RMSprop(param_groups(self.model, hp.weight_decay), lr=hp.lr)
        else:
            opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        if self.lr_scheduler is not None:
            return with_scheduler(self, opt, self.lr_scheduler, hp.max_steps)
        total = hp.max_steps or int(self.trainer.estimated_stepping_batches)
        if hp.warmup_steps >= total:
            rank_zero_warn(f"warmup_steps={hp.warmup_steps} >= total steps {total}; the cosine phase never starts")
        sched = warmup_cosine_scheduler(opt, hp.warmup_steps, max(1, total), hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
