"""Direct Preference Optimization (Rafailov et al. 2023) of a GPT policy against a frozen reference.

    L = −log σ(β[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

log-probabilities summed over response tokens only. Implicit reward r = β(log π − log π_ref);
reward accuracy = mean[r(y_w) > r(y_l)]; reward margin = mean[r(y_w) − r(y_l)].

The reference is a snapshot of the policy's initial weights held OUTSIDE the module tree: it is not
in ``state_dict()`` (the checkpoint holds the weights once), not in ``parameters()`` (no optimizer, no
DDP gradient sync), and not in ``modules()`` (the entropy monitor / EAFO callbacks never touch it,
so its ε stays at the initial value).
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Dict, Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch.nn import functional as F

from crrelu_lightning.models.gpt import GPT, GPTConfig
from crrelu_lightning.models.language import (
    as_config, build_gpt, check_data_fits, check_optimizer, resolve_init_from, store_gpt,
)
from crrelu_lightning.models.optim import (
    LRSchedulerCallable, OptimizerCallable, param_groups, unsaved_callables, with_scheduler,
)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(input_ids[t+1] | ≤ t) over positions where ``loss_mask[t+1]`` (response tokens); (B,)."""
    logits = logits[:, :-1].float()
    tok = -F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, T-1) log-probs
    return (tok * loss_mask[:, 1:].to(tok.dtype)).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> Dict[str, torch.Tensor]:
    """DPO loss and metrics from summed response log-probs (each (B,))."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "loss": loss,
        "reward_accuracy": (c > r).float().mean(),
        "reward_margin": (c - r).mean(),
        "rewards_chosen": c.mean(),
        "rewards_rejected": r.mean(),
    }


class DPO(LightningModule):
    """DPO fine-tuning. The policy comes from ``init_from`` (a GPT-2 folder, a language ``.ckpt`` or a
    run folder, meaning its ``checkpoints/last.ckpt``; the shape is read from it); without it a fresh GPT
    of shape ``gpt`` (useful only for tests). ``init_from`` is stored resolved to a file, and must still
    exist when a DPO checkpoint is reloaded, since the frozen reference is rebuilt from it.

    Args:
        activation: a registry name swapped into the policy (and reference) after loading.
        beta: DPO temperature β.
        optimizer: ``"rmsprop"`` (the reference DPO code's default), ``"adamw"`` (both with ``lr`` and
            ``weight_decay``), or an ``OptimizerCallable`` (``--optimizer Adam --optimizer.lr 1e-6``), called on
            the parameter groups (no decay on ``ndim < 2``).
        lr_scheduler: an ``LRSchedulerCallable``; None -> linear warm-up over ``warmup_steps``, then constant.
        warmup_steps: linear warm-up, then constant lr (as in the reference code).
        compile: ``torch.compile`` the policy in place (``nn.Module.compile``: checkpoints unchanged); the
            frozen reference and the loss stay eager.
    """

    def __init__(
        self,
        init_from: Optional[str] = None,
        gpt: Optional[GPTConfig] = None,
        activation: Optional[str] = None,
        activation_kwargs: Optional[Dict[str, Any]] = None,
        beta: float = 0.1,
        optimizer: Union[Literal["rmsprop", "adamw"], OptimizerCallable] = "rmsprop",
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        lr: float = 5e-7,
        weight_decay: float = 0.0,
        warmup_steps: int = 150,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        check_optimizer(optimizer, ("rmsprop", "adamw"))
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        gpt = as_config(gpt)
        if init_from is not None:  # stored as the file it meant now: a run folder's newest run may change
            init_from = str(resolve_init_from(init_from).resolve())
        self.save_hyperparameters(ignore=["gpt", *unsaved_callables(
            optimizer=optimizer if callable(optimizer) else None, lr_scheduler=lr_scheduler)])
        self.hparams.update(gpt=asdict(gpt) if gpt is not None else None, init_from=init_from)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.policy = build_gpt(gpt, init_from, activation, activation_kwargs)
        self._set_reference(self.policy)
        if compile:
            self.policy.compile()  # after the reference copy, which stays eager

    # --- the frozen reference, kept out of the module tree -------------------------------------
    def _set_reference(self, policy: GPT) -> None:
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
        object.__setattr__(self, "_reference", ref)  # bypass nn.Module registration on purpose

    @property
    def reference(self) -> GPT:
        ref = self._reference
        p = next(self.policy.parameters())
        q = next(ref.parameters())
        if (q.device, q.dtype) != (p.device, p.dtype):
            ref.to(device=p.device, dtype=p.dtype)
        return ref

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        store_gpt(checkpoint, self.policy, "policy.", self.hparams.init_from)
        if self.hparams.init_from is not None:  # shape comes from init_from again on reload
            checkpoint["hyper_parameters"]["gpt"] = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.policy(idx)

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.datamodule is not None:
            check_data_fits(self.policy, self.trainer.datamodule)

    def _step(self, batch: Dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        mask = torch.cat([batch["chosen_loss_mask"], batch["rejected_loss_mask"]])
        n = batch["chosen_input_ids"].shape[0]
        pol = sequence_logprobs(self.policy(ids), ids, mask)
        with torch.no_grad():
            ref_model = self.reference
            ref_model.eval()
            ref = sequence_logprobs(ref_model(ids), ids, mask)
        out = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], self.hparams.beta)
        on_step = stage == "train"
        for k, v in out.items():
            self.log(f"{stage}/{k}", v, on_step=on_step, on_epoch=not on_step, batch_size=n,
                     sync_dist=not on_step, prog_bar=k in ("loss", "reward_accuracy"))
        return out["loss"]

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        if callable(self.optimizer):  # --optimizer: its own lr and weight decay; ndim < 2 stays undecayed
            opt = self.optimizer(param_groups(self.policy))
        elif self.optimizer == "rmsprop":
            opt = torch.optim.RMSprop(param_groups(self.policy, hp.weight_decay), lr=hp.lr)
        else:
            opt = torch.optim.AdamW(param_groups(self.policy, hp.weight_decay), lr=hp.lr)
        if self.lr_scheduler is not None:
            return with_scheduler(self, opt, self.lr_scheduler)
        warm = max(1, hp.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
