"""``ActivationEntropyMonitor``: per-layer activation entropy during training (EAFO.md §6–§7, docs/entropy.md).

Every ``every_n_steps`` optimizer steps (keyed on ``trainer.global_step``) forward hooks count a
bounded random sample of each activation's output into one int64 histogram tensor (tensor ops only,
inside the forward pass). When that step's optimizer step has happened, every rank all-reduces the
tensor once and logs, per layer, the mixed entropy ``H_b(p0) + (1 − p0)·h`` in nats, p0 and the
out-of-range fraction. Raw histograms and a picture of the distributions go to TensorBoard every
``log_histograms_every_n_steps`` / ``log_image_every_n_steps`` steps, summed over the collections since.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from crrelu_lightning.callbacks._activation_taps import ActivationTaps, find_activation_modules
from crrelu_lightning.entropy import HistogramEstimator, entropy_from_counts
from crrelu_lightning.entropy.display import density_figure, figure_to_rgb, layer_labels, raw_histogram

_STATE_VERSION = 1


def _mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix-style), so sampling depends on (seed, rank, step)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class ActivationEntropyMonitor(Callback):
    """Log the entropy of every activation module's output, per layer, during training.

    Args:
        every_n_steps: collect on optimizer steps ``s`` with ``s % every_n_steps == 0`` (all micro-batches of it).
        max_samples_per_call: values sampled (with replacement) per activation call; ``None`` counts all
            values (exact, but costs a pass over every activation tensor).
        lo, hi, bins: histogram range and number of bins; bin width Δ = (hi − lo)/bins. Values outside
            ``[lo, hi)`` are counted and reported as ``out_of_range/<layer>``, not binned.
        include, exclude: glob patterns on module names (``fnmatch``), e.g. ``["blocks.*.mlp.act"]``.
        record_inputs: also histogram each activation's input (logged as ``<layer>.input``).
        log_histograms_every_n_steps: raw TensorBoard histograms ``entropy_hist/<layer>``; ``None`` = off.
        log_image_every_n_steps: picture ``entropy/distributions`` of all layers; ``None`` = off.
        on_validation: also collect on validation batches, logged as ``val_entropy/<layer>`` etc.
        seed: seed of the monitor's own sampling generators (the global RNG is never used).
        warn_out_of_range: warn (once per layer) when more than this fraction falls outside the range.

    Logged scalars (step = the collection step): ``entropy/<layer>``, ``p0/<layer>``,
    ``out_of_range/<layer>``, ``nonfinite/<layer>``; also put in ``trainer.callback_metrics`` via
    ``pl_module.log(..., logger=False)`` so other callbacks can monitor them.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_samples_per_call: Optional[int] = 4096,
        lo: float = -10.0,
        hi: float = 10.0,
        bins: int = 400,
        include: Optional[List[str]] = None,
        exclude: Optional[List[str]] = None,
        record_inputs: bool = False,
        log_histograms_every_n_steps: Optional[int] = 500,
        log_image_every_n_steps: Optional[int] = 1000,
        on_validation: bool = False,
        seed: int = 0,
        warn_out_of_range: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (
            ("every_n_steps", every_n_steps),
            ("log_histograms_every_n_steps", log_histograms_every_n_steps),
            ("log_image_every_n_steps", log_image_every_n_steps),
            ("max_samples_per_call", max_samples_per_call),
        ):
            optional = name != "every_n_steps"
            if (value is None and not optional) or (value is not None and (isinstance(value, bool) or int(value) != value or value < 1)):
                raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
        # Validates lo/hi/bins with the estimator's own messages.
        HistogramEstimator(lo, hi, bins=bins)
        self.every_n_steps = int(every_n_steps)
        self.max_samples_per_call = max_samples_per_call
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        self.include, self.exclude = include, exclude
        self.record_inputs = record_inputs
        self.log_histograms_every_n_steps = log_histograms_every_n_steps
        self.log_image_every_n_steps = log_image_every_n_steps
        self.on_validation = on_validation
        self.seed = int(seed)
        self.warn_out_of_range = float(warn_out_of_range)
        self._taps: Optional[ActivationTaps] = None
        self._loaded: Optional[Dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, lo=self.lo, hi=self.hi, bins=self.bins)

    # ----------------------------------------------------------------- set-up
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._taps is not None:  # fit → validate on the same trainer: keep the hooks
            return
        modules = find_activation_modules(pl_module, self.include, self.exclude)
        if not modules:
            rank_zero_warn("ActivationEntropyMonitor found no activation modules in the model; it will log nothing.")
        self._names = list(modules)
        self._labels = layer_labels(self._names, self.record_inputs)
        rows = max(1, len(self._labels))
        device = trainer.strategy.root_device
        # Per-run state lives here, not in __init__ (EAFO.md §7): spawned processes must not share it.
        self._train = HistogramEstimator(self.lo, self.hi, bins=self.bins, num_estimators=rows, device=device)
        self._val = HistogramEstimator(self.lo, self.hi, bins=self.bins, num_estimators=rows, device=device)
        # Globally reduced counts since the last histogram / image (identical on every rank).
        self._hist_acc = torch.zeros_like(self._train.state_tensor())
        self._image_acc = torch.zeros_like(self._train.state_tensor())
        self._collections = 0
        self._last_hist_step: Optional[int] = None
        self._last_image_step: Optional[int] = None
        self._warned: set = set()
        self._target = self._train
        self._collect_step: Optional[int] = None
        self._micro = 0
        self._gens: Dict[torch.device, torch.Generator] = {}
        self._seed_now = self.seed
        self._taps = ActivationTaps(modules, self._record) if modules else None
        if self._loaded is not None:
            self._apply_state(self._loaded)
            self._loaded = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._taps is not None:
            self._taps.remove()
            self._taps = None

    # ------------------------------------------------------------ hot path
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._gens.get(device)
        if gen is None:
            gen = self._gens[device] = torch.Generator(device=device)
            gen.manual_seed(self._seed_now)
        return gen

    def _reseed(self, *parts: int) -> None:
        self._seed_now = _mix_seed(self.seed, *parts)
        for gen in self._gens.values():
            gen.manual_seed(self._seed_now)  # host-side; no device sync

    def _record(self, index: int, name: str, module: nn.Module, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        est, k = self._target, self.max_samples_per_call
        est.update(y, index=index, max_samples=k, generator=self._generator(y.device))
        if self.record_inputs and x is not None:
            est.update(x, index=len(self._names) + index, max_samples=k, generator=self._generator(x.device))

    def _enable(self, target: HistogramEstimator) -> None:
        self._target = target
        self._taps.enabled = True

    # ------------------------------------------------------------ training
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._taps is None:
            return
        step = trainer.global_step
        if step % self.every_n_steps != 0:
            self._taps.enabled = False
            return
        if self._collect_step != step:
            self._collect_step, self._micro = step, 0
        self._reseed(trainer.global_rank, 0, step, self._micro)
        self._micro += 1
        self._enable(self._train)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._taps is None:
            return
        self._taps.enabled = False
        # Flush once the collection step's optimizer step has happened (all its micro-batches seen).
        # global_step advances identically on every rank, so every rank reaches the all_reduce.
        if self._collect_step is not None and trainer.global_step != self._collect_step:
            step, self._collect_step = self._collect_step, None
            counts = self._reduce(self._train)
            self._hist_acc += counts
            self._image_acc += counts
            self._collections += 1
            self._log_scalars(trainer, pl_module, counts, step, prefix="", on_step=True)
            self._log_pictures(trainer, step)

    # ---------------------------------------------------------- validation
    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._taps is None:
            return
        if self.on_validation and not trainer.sanity_checking:
            self._reseed(trainer.global_rank, 1, trainer.global_step, dataloader_idx, batch_idx)
            self._enable(self._val)
        else:
            self._taps.enabled = False

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._taps is not None:
            self._taps.enabled = False

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._taps is None or not self.on_validation or trainer.sanity_checking:
            return
        counts = self._reduce(self._val)
        self._log_scalars(trainer, pl_module, counts, trainer.global_step, prefix="val_", on_step=False)

    # ----------------------------------------------------------- reduction
    def _reduce(self, est: HistogramEstimator) -> torch.Tensor:
        """Sum this rank's counts over all ranks (one all_reduce, on every rank), return and reset them."""
        counts = est.state_tensor().clone()
        est.reset()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return counts

    # -------------------------------------------------------------- logging
    def _log_scalars(self, trainer: Trainer, pl_module: LightningModule, counts: torch.Tensor, step: int, prefix: str, on_step: bool) -> None:
        stats = entropy_from_counts(counts, self._train.bin_width)
        keys = ("entropy", "zero_fraction", "out_of_range_fraction", "nonfinite_count", "num_samples")
        # One device→host copy at log time (never in the forward pass).
        table = torch.stack([stats[k] for k in keys]).cpu().tolist()
        metrics: Dict[str, float] = {}
        for i, label in enumerate(self._labels):
            h, p0, oor, nonfinite, n = (table[j][i] for j in range(len(keys)))
            metrics[f"{prefix}entropy/{label}"] = h
            metrics[f"{prefix}p0/{label}"] = p0
            metrics[f"{prefix}out_of_range/{label}"] = oor
            metrics[f"{prefix}nonfinite/{label}"] = nonfinite
            if nonfinite > 0 and n == 0:
                rank_zero_warn(
                    f"ActivationEntropyMonitor: all {int(nonfinite)} recorded values of layer {label!r} at step {step} "
                    f"are NaN/Inf; its entropy is logged as NaN and {prefix}nonfinite/{label} = {int(nonfinite)}. "
                    "Training continues."
                )
            if oor > self.warn_out_of_range and label not in self._warned:
                self._warned.add(label)
                rank_zero_warn(
                    f"ActivationEntropyMonitor: {oor:.1%} of layer {label!r}'s values lie outside [lo, hi) = "
                    f"[{self.lo}, {self.hi}) at step {step}; its entropy ignores them. Widen the range."
                )
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=on_step, on_epoch=not on_step, logger=False, sync_dist=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _due(self, every: Optional[int], last: Optional[int], step: int) -> bool:
        return every is not None and (last is None or step - last >= every)

    def _log_pictures(self, trainer: Trainer, step: int) -> None:
        hist_due = self._due(self.log_histograms_every_n_steps, self._last_hist_step, step)
        image_due = self._due(self.log_image_every_n_steps, self._last_image_step, step)
        writers = [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_histogram_raw")] if trainer.is_global_zero else []
        if hist_due:
            if writers:
                rows = self._hist_acc.cpu().numpy()
                for i, label in enumerate(self._labels):
                    kwargs = raw_histogram(rows[i], self.lo, self._train.bin_width)
                    if kwargs is not None:
                        for w in writers:
                            w.add_histogram_raw(f"entropy_hist/{label}", global_step=step, **kwargs)
            self._hist_acc.zero_()
            self._last_hist_step = step
        if image_due:
            if writers:
                fig = density_figure(self._image_acc.cpu().numpy(), self._labels, self.lo, self._train.bin_width, title=f"step {step}")
                image = figure_to_rgb(fig)
                for w in writers:
                    w.add_image("entropy/distributions", image, global_step=step, dataformats="HWC")
            self._image_acc.zero_()
            self._last_image_step = step

    # --------------------------------------------------------------- resume
    def state_dict(self) -> Dict[str, Any]:
        """Globally reduced accumulators and step counters (identical on every rank).

        Counts of a collection step still in progress are rank-local and not saved: a checkpoint
        taken mid-accumulation loses that partial step's gradients too, and it is re-run on resume.
        """
        if self._taps is None and self._loaded is not None:
            return dict(self._loaded)
        if not hasattr(self, "_hist_acc"):
            return {}
        return {
            "version": _STATE_VERSION,
            "labels": list(self._labels),
            "layout": [self.lo, self.hi, self.bins],
            "hist_counts": self._hist_acc.cpu(),
            "image_counts": self._image_acc.cpu(),
            "collections": self._collections,
            "last_hist_step": self._last_hist_step,
            "last_image_step": self._last_image_step,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if hasattr(self, "_hist_acc"):
            self._apply_state(state_dict)
        else:  # loaded before setup(): apply once the per-run state exists
            self._loaded = dict(state_dict)

    def _apply_state(self, state: Dict[str, Any]) -> None:
        layout = [self.lo, self.hi, self.bins]
        if state.get("labels") != self._labels or list(state.get("layout", [])) != layout:
            rank_zero_warn(
                "ActivationEntropyMonitor: checkpoint state does not match this model/configuration "
                f"(layers {state.get('labels')} with (lo, hi, bins) {state.get('layout')} vs {self._labels} with {layout}); "
                "starting the histogram accumulators from zero."
            )
            return
        # Every rank loads the same global sums; they are never all-reduced again, so they count once.
        self._hist_acc.copy_(state["hist_counts"])
        self._image_acc.copy_(state["image_counts"])
        self._collections = int(state["collections"])
        self._last_hist_step = state["last_hist_step"]
        self._last_image_step = state["last_image_step"]
