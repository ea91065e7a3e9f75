"""Causal language modelling (pre-training and SFT) of a GPT with any registered activation.

Loss: mean next-token cross-entropy over counted positions (all positions in pre-training; response
tokens only in SFT). Validation logs ``val/loss`` (nats/token), ``val/ppl`` = exp(loss) and
``val/bpb`` = loss / ln 2 / (bytes per token) — bits per byte; for the byte tokenizer that is loss / ln 2.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from crrelu_lightning.models.gpt import GPT, GPTConfig
from crrelu_lightning.models.optim import param_groups, warmup_cosine_scheduler

DEFAULT_ACTIVATION = "gelu"


def build_gpt(
    init_from: Optional[str],
    activation: Optional[str],
    activation_kwargs: Optional[Dict[str, Any]],
    **shape: Any,
) -> GPT:
    """A GPT from scratch (``init_from=None``), a Hugging Face GPT-2 folder, or a Lightning checkpoint
    of a ``CausalLM``/``DPO`` run. ``activation=None`` keeps the source's activation; a name swaps it
    in every MLP after loading (the paper's setting)."""
    kwargs = dict(activation_kwargs or {})
    if init_from is None:
        return GPT(GPTConfig(activation=activation or DEFAULT_ACTIVATION, activation_kwargs=kwargs, **shape))
    path = Path(init_from)
    if path.is_dir():
        return GPT.from_pretrained(path, activation=activation, activation_kwargs=kwargs, dropout=shape.get("dropout", 0.0))
    if not path.is_file():
        raise FileNotFoundError(f"init_from={init_from!r}: expected a GPT-2 folder or a .ckpt file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    if "gpt_config" not in hp and "n_layer" not in hp:
        raise ValueError(f"{init_from}: not a checkpoint of a crrelu_lightning language module (no GPT hyperparameters)")
    src = dict(hp.get("gpt_config") or {k: hp[k] for k in GPTConfig.__dataclass_fields__ if k in hp})
    src["activation"] = src.get("activation") or DEFAULT_ACTIVATION
    src["dropout"] = shape.get("dropout", src.get("dropout", 0.0))
    model = GPT(GPTConfig(**src))
    prefix = "policy." if any(k.startswith("policy.") for k in ckpt["state_dict"]) else "model."
    sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(sd)
    if activation is not None and (activation != src["activation"] or kwargs != src.get("activation_kwargs", {})):
        model.set_activation(activation, **kwargs)
    return model


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


class CausalLM(LightningModule):
    """GPT pre-training / SFT with AdamW (no decay on ``ndim < 2``, so ε is not decayed) and a per-step
    warm-up + cosine schedule. Samples from ``sample_prompt`` are logged as TensorBoard text after
    every validation (rank 0).

    Args:
        activation: registry name for the MLP activation (None: gelu from scratch, or keep init_from's).
        init_from: None, a Hugging Face GPT-2 folder or a ``.ckpt`` of a language run (must still
            exist when this module is re-loaded from its own checkpoint, since it defines the shape).
        max_steps: length of the cosine schedule; None -> ``trainer.estimated_stepping_batches``.
        sample_tokenizer: used only to decode samples; None -> the datamodule's tokenizer, else bytes.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 256,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        activation: Optional[str] = None,
        activation_kwargs: Optional[Dict[str, Any]] = None,
        init_from: Optional[str] = None,
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
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.save_hyperparameters()
        self.model = build_gpt(init_from, activation, activation_kwargs, vocab_size=vocab_size,
                               block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                               dropout=dropout, bias=bias)
        self._val_sum: Optional[torch.Tensor] = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.datamodule is not None:
            check_data_fits(self.model, self.trainer.datamodule)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # The actual shape (which may come from init_from) travels with the weights.
        checkpoint["hyper_parameters"]["gpt_config"] = asdict(self.model.config)

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
        # Token-weighted mean over all ranks (every rank calls the reduction, EAFO.md §7).
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
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = hp.max_steps or int(self.trainer.estimated_stepping_batches)
        if hp.warmup_steps >= total:
            rank_zero_warn(f"warmup_steps={hp.warmup_steps} >= total steps {total}; the cosine phase never starts")
        sched = warmup_cosine_scheduler(opt, hp.warmup_steps, max(1, total), hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
