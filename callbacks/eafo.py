"""Dynamic EAFO: entropy-descent correction of every CR layer's ε during training (docs/eafo.md §4).

On collection steps each CR layer's inputs x are tapped and reduced to S = Σ_{x∈B} k_σ'(x)/f_ε'(x) and
N = |{x∈B}|, so S/N estimates G = ∂H_B/∂ε = E[k_σ'(X)/f_ε'(X) | X∈B]. After one sum over ranks every rank
applies

    step mode:        ε ← clip(ε − η·S/N, ε_min, ε_max)       after the optimizer step, under no_grad
    regularize mode:  ε.grad += λ·S/N                           before the optimizer step; ε clipped after it

H_B is concave in ε on the monotone interval, so pure descent runs to a bound: bounds, η/λ and the
interval are real hyperparameters (docs/eafo.md §5). Schedule, reduction, sampling, logging and
warnings are the shared plumbing of ``crrelu_lightning.callbacks._collection``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from crrelu_lightning.activations import CRActivation
from crrelu_lightning.callbacks._activation_taps import ActivationTaps, find_activation_modules
from crrelu_lightning.callbacks._collection import (
    CollectionSchedule,
    RateLimitedWarnings,
    SampleGenerators,
    log_metrics,
    reduce_sum,
)
from crrelu_lightning.entropy.branch_estimator import BranchSumEstimator, compute_branch_stats
from crrelu_lightning.entropy.cr_branch import monotone_eps_interval

EAFOMode = Literal["step", "regularize"]  # a Literal: a typo fails when the CLI parses the config
_MODES = get_args(EAFOMode)


def _snap_sigma(sigma: float) -> float:
    """σ rounded to the grid 2^(k/16) (steps of 4.4 %).

    The compiled CR kernels treat σ as a constant, one graph per value. Snapping bounds the number of
    recompiles that a drifting running σ can trigger.
    """
    return 2.0 ** (round(16.0 * math.log2(sigma)) / 16.0)


def _eps_value(module: CRActivation) -> float:
    """ε as a Python float, without autograd's requires_grad-to-scalar warning."""
    return float(module.eps.detach())


class EAFOCallback(Callback):
    """Dynamic EAFO for every ``CRActivation`` in the model.

    Args:
        mode: ``"step"`` (projected step on ε after the optimizer step) or ``"regularize"`` (adds λ·S/N
            to ε's gradient, the optimizer moves ε).
        lr: η of step mode.
        lam: λ of regularize mode.
        eps_bounds: (ε_min, ε_max); ε is clipped into it after every optimizer step while updates are on.
            Default inside ReLU's monotone interval (−1, e^{3/2}/2) with a margin.
        every_n_steps: collect and update on every n-th optimizer step (after ``warmup_steps``).
        warmup_steps: optimizer steps before the first collection.
        max_samples_per_call: inputs subsampled (with replacement, own generator) per layer call; None = all.
        track_sigma: set each layer's correction width σ to a running std of its inputs (k_{σ_l}).
        sigma_momentum: running σ ← m·σ + (1 − m)·std(batch).
        include / exclude: glob patterns on module names (as in ``find_activation_modules``).
        slope_floor: smooth bases only: the branch B starts where g' reaches this value (docs/eafo.md §1).
        seed: seed of the subsampling generators; the stream of each batch is a function of (seed, global
            rank, optimizer step, micro-batch), so ranks differ and a resumed run draws the same samples.
        updates: False = measure and log only; training is then bit-identical to a run without the callback.
    """

    def __init__(
        self,
        mode: EAFOMode = "step",
        lr: float = 0.01,
        lam: float = 0.01,
        eps_bounds: Sequence[float] = (-0.9, 2.0),
        every_n_steps: int = 1,
        warmup_steps: int = 0,
        max_samples_per_call: Optional[int] = 65536,
        track_sigma: bool = False,
        sigma_momentum: float = 0.9,
        include: Optional[List[str]] = None,
        exclude: Optional[List[str]] = None,
        slope_floor: float = 0.1,
        seed: int = 0,
        updates: bool = True,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        for name, v in (("lr", lr), ("lam", lam)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        bounds = tuple(float(b) for b in eps_bounds)
        if len(bounds) != 2 or not all(math.isfinite(b) for b in bounds) or not bounds[0] < bounds[1]:
            raise ValueError(f"eps_bounds must be two finite numbers lo < hi, got {eps_bounds!r}")
        self.schedule = CollectionSchedule(every_n_steps, warmup_steps)  # validates both
        if max_samples_per_call is not None and int(max_samples_per_call) < 1:
            raise ValueError(f"max_samples_per_call must be >= 1 or None, got {max_samples_per_call!r}")
        if not 0.0 <= sigma_momentum < 1.0:
            raise ValueError(f"sigma_momentum must lie in [0, 1), got {sigma_momentum!r}")
        self.mode, self.lr, self.lam = mode, float(lr), float(lam)
        self.eps_bounds: Tuple[float, float] = bounds  # type: ignore[assignment]
        self.every_n_steps, self.warmup_steps = self.schedule.every_n_steps, self.schedule.warmup_steps
        self.max_samples_per_call = None if max_samples_per_call is None else int(max_samples_per_call)
        self.track_sigma, self.sigma_momentum = bool(track_sigma), float(sigma_momentum)
        self.include, self.exclude = include, exclude
        self.slope_floor, self.seed, self.updates = float(slope_floor), int(seed), bool(updates)
        # Per-run state lives in setup(): spawned DDP processes must not share tensors made here. Resumable counters are plain Python values.
        self.updates_done = 0
        self.running_sigma: Dict[str, float] = {}
        # Collections per layer that moved no ε because its statistics were not finite (logged, resumable).
        self.skipped: Dict[str, int] = {}

    @property
    def state_key(self) -> str:
        # Several instances (e.g. different include patterns) must not overwrite each other's state.
        return self._generate_state_key(mode=self.mode, include=self.include, exclude=self.exclude)

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        found = find_activation_modules(pl_module, self.include, self.exclude)
        self.layers: Dict[str, CRActivation] = {n: m for n, m in found.items() if isinstance(m, CRActivation)}
        if not self.layers:
            kinds = sorted({f"{n}: {type(m).__name__}" for n, m in found.items()})
            raise ValueError(
                "EAFOCallback found no CR layer (crrelu_lightning.activations.CRActivation) in the model; "
                f"activation modules found: {kinds or 'none'}. Use activation 'crrelu' (or crgelu/crsilu/crmish)."
            )
        if self.mode == "regularize":
            frozen = [n for n, m in self.layers.items() if not m.eps.requires_grad]
            if frozen:
                raise ValueError(f"regularize mode needs learnable ε, but ε is frozen in {frozen}; use mode='step'")
        self._check_bounds()
        self._names = list(self.layers)
        device = trainer.strategy.root_device
        # Σx, Σx² only feed the running σ: skip them (half the cost) unless it is tracked.
        self._est = BranchSumEstimator([m.base for m in self.layers.values()], self.slope_floor, device=device,
                                       moments=self.track_sigma)
        # Last finite ε per layer and how often a non-finite one was replaced (tensors: no host sync per step).
        self._good_eps = [m.eps.detach().clone() for m in self.layers.values()]
        self._repairs = [torch.zeros((), dtype=torch.int64, device=m.eps.device) for m in self.layers.values()]
        self._repairs_seen = [0] * len(self._names)
        self.skipped = {n: self.skipped.get(n, 0) for n in self._names}
        self.schedule = CollectionSchedule(self.every_n_steps, self.warmup_steps)
        # Subsampling stream = f(seed, rank, step, micro-batch): nothing to checkpoint, exact on resume.
        self._sampler = SampleGenerators(self.seed)
        self._warnings = RateLimitedWarnings("EAFOCallback")
        self._taps = ActivationTaps(self.layers, self._collect)
        self._pending: Dict[str, float] = {}
        self.last_metrics: Dict[str, float] = {}

    def _check_bounds(self) -> None:
        lo, hi = self.eps_bounds
        seen = set()
        for m in self.layers.values():
            key = (m.base, m.sigma)
            if key in seen:
                continue
            seen.add(key)
            a, b = monotone_eps_interval(m.base, m.sigma, self.slope_floor)
            if not (a < lo and hi < b):
                rank_zero_warn(
                    f"EAFOCallback: eps_bounds ({lo:g}, {hi:g}) leave the monotone interval ({a:.4g}, {b:.4g}) of "
                    f"CR-{m.base} (σ={m.sigma:g}): the theory no longer applies there (f_ε is not invertible on "
                    "the branch, ∂H/∂ε is not the entropy gradient). Narrow eps_bounds."
                )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        taps = getattr(self, "_taps", None)
        if taps is not None:
            taps.remove()
            self._taps = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after a checkpoint was restored: re-apply the tracked σ, which is a plain module attribute.
        if self.updates and self.track_sigma:
            for name, s in self.running_sigma.items():
                if name in self.layers:
                    self.layers[name].sigma = _snap_sigma(s)
        if self.updates:
            bad = [n for n, m in self.layers.items() if not math.isfinite(_eps_value(m))]
            if bad:
                raise ValueError(
                    f"EAFOCallback: ε of layers {bad} is not finite at the start of fit (a damaged checkpoint or "
                    "initialisation?); EAFO cannot update it. Start from a checkpoint with finite ε."
                )
            lo, hi = self.eps_bounds
            outside = {n: _eps_value(m) for n, m in self.layers.items() if not lo <= _eps_value(m) <= hi}
            if outside:
                rank_zero_warn(f"EAFOCallback: initial ε {outside} outside eps_bounds ({lo:g}, {hi:g}); clipped.")
            self._clip_all()

    # ------------------------------------------------------------------ collection (hot path)
    def _collect(self, index: int, name: str, module: torch.nn.Module, x: Optional[torch.Tensor], out) -> None:
        if x is None:
            return
        self._est.update(x, module.eps, module.sigma, index=index, max_samples=self.max_samples_per_call,
                         generator=self._sampler.get(x.device))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._taps.enabled = self.schedule.batch_start(trainer.global_step)
        if self._taps.enabled:
            self._sampler.reseed(trainer.global_rank, trainer.global_step, self.schedule.micro_batch)

    # ------------------------------------------------------------------ reduction and updates
    def _reduce(self, trainer: Trainer) -> List[Dict[str, float]]:
        """Sum every layer's integer statistics over all ranks (on all ranks), decode, reset."""
        state = reduce_sum(trainer, self._est.state_tensor())
        stats = {k: v.cpu().tolist() for k, v in compute_branch_stats(state, self.track_sigma).items()}
        self._est.reset()
        return [{k: v[i] for k, v in stats.items()} for i in range(len(self._names))]

    def _apply(self, stats: List[Dict[str, float]], before_step: bool, step: int) -> None:
        pending: Dict[str, float] = {}
        for (name, module), st in zip(self.layers.items(), stats):
            pending[f"eafo/nonfinite/{name}"] = st["nonfinite"]
            if st["nonfinite"] > 0:
                self._warnings.warn(
                    "nonfinite inputs", name,
                    f"{int(st['nonfinite'])} non-finite inputs (NaN/Inf) to layer {name!r} at step {step}; they are "
                    f"left out of every sum and counted in eafo/nonfinite/{name}",
                )
            if self.track_sigma and st["total"] > 0 and math.isfinite(st["std"]):
                prev = self.running_sigma.get(name)
                s = st["std"] if prev is None else self.sigma_momentum * prev + (1 - self.sigma_momentum) * st["std"]
                if s > 0:
                    self.running_sigma[name] = s
                    pending[f"eafo/sigma/{name}"] = s
                    if self.updates:
                        module.sigma = _snap_sigma(s)
            g, dh = st["dH_deps"], st["delta_entropy"]
            defined = st["nonmonotone"] == 0 and math.isfinite(g) and math.isfinite(dh)
            if st["count"] == 0 and st["nonfinite"] == 0 and st["nonmonotone"] == 0:
                pending[f"eafo/skipped/{name}"] = self.skipped[name]
                continue  # no input on the branch this time: nothing to estimate, nothing wrong
            if not defined:
                self.skipped[name] += 1
                pending[f"eafo/skipped/{name}"] = self.skipped[name]
                self._warnings.warn(
                    "undefined statistics", name,
                    f"the EAFO statistics of layer {name!r} at step {step} are not finite ({int(st['count'])} "
                    f"finite branch inputs, {int(st['nonmonotone'])} where f_eps' <= 0, {int(st['nonfinite'])} "
                    f"non-finite); eps is left unchanged and the collection counted in eafo/skipped/{name}",
                )
                continue
            pending[f"eafo/skipped/{name}"] = self.skipped[name]
            pending[f"eafo/dH_deps/{name}"] = g
            pending[f"eafo/delta_entropy/{name}"] = dh
            if not self.updates:
                continue
            with torch.no_grad():
                if before_step:
                    add = torch.full_like(module.eps, self.lam * g)
                    module.eps.grad = add if module.eps.grad is None else module.eps.grad + add
                else:
                    new = min(max(_eps_value(module) - self.lr * g, self.eps_bounds[0]), self.eps_bounds[1])
                    module.eps.fill_(new)
        if self.updates:
            self.updates_done += 1
        self._pending = pending

    def _clip_all(self) -> None:
        """Clip ε into the bounds; a non-finite ε (e.g. a NaN task gradient) goes back to its last finite value.

        Tensor ops only (no host sync per step); the repairs are counted and reported at the next log.
        """
        lo, hi = self.eps_bounds
        with torch.no_grad():
            for m, good, repairs in zip(self.layers.values(), self._good_eps, self._repairs):
                finite = torch.isfinite(m.eps)
                repairs += (~finite).to(repairs.dtype)
                m.eps.copy_(torch.where(finite, m.eps.clamp(lo, hi), good.to(m.eps.dtype)))
                good.copy_(m.eps)

    def _report_repairs(self, pending: Dict[str, float], step: int) -> None:
        for i, name in enumerate(self._names):
            n = int(self._repairs[i])
            pending[f"eafo/eps_repaired/{name}"] = n
            if n > self._repairs_seen[i]:
                self._repairs_seen[i] = n
                self._warnings.warn(
                    "non-finite eps", name,
                    f"the optimizer made eps of layer {name!r} non-finite (NaN/Inf gradient?) by step {step}; it was "
                    f"restored to its last finite value ({n} times so far, eafo/eps_repaired/{name})",
                )

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        # Same decision on every rank (global_step is shared), so the all_reduce runs everywhere or nowhere.
        if self.mode == "regularize" and self.schedule.is_collection_step(trainer.global_step):
            self._apply(self._reduce(trainer), before_step=True, step=trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self._taps.enabled = False
        stepped, done = self.schedule.batch_end(trainer.global_step)
        if not stepped:  # gradient accumulation: no optimizer step yet
            return
        if self.mode == "step" and done is not None:
            self._apply(self._reduce(trainer), before_step=False, step=done)
        if self.updates:
            self._clip_all()  # the optimizer may have moved ε (task gradient, regularize mode)
        if self._pending:
            if self.updates:
                self._report_repairs(self._pending, trainer.global_step)
            for name in self._names:
                self._pending[f"eafo/eps/{name}"] = _eps_value(self.layers[name])
            self.last_metrics = self._pending
            self._pending = {}
            # Straight to the loggers (rank zero): values come from reduced sums, identical on every rank.
            log_metrics(trainer, self.last_metrics, step=trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._warnings.summary()

    # ------------------------------------------------------------------ resume
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: Dict[str, Any]) -> None:
        # ε is repaired after every optimizer step; this also covers a save between a NaN step and the repair.
        if not self.updates or not hasattr(self, "_good_eps"):
            return
        weights = checkpoint.get("state_dict", {})
        for name, good in zip(self._names, self._good_eps):
            key = f"{name}.eps"
            value = weights.get(key)
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                weights[key] = good.detach().to(value.device, value.dtype).clone()

    def state_dict(self) -> Dict[str, Any]:
        return {"updates_done": self.updates_done, "running_sigma": dict(self.running_sigma),
                "skipped": dict(self.skipped)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # Older checkpoints also hold a "generator" state: not needed, sampling is seeded per step.
        self.updates_done = int(state_dict["updates_done"])
        self.running_sigma = {k: float(v) for k, v in state_dict["running_sigma"].items()}
        loaded = {k: int(v) for k, v in state_dict.get("skipped", {}).items()}
        if hasattr(self, "_names"):  # loaded after setup()
            self.skipped = {n: loaded.get(n, 0) for n in self._names}
        else:
            self.skipped = loaded
