"""``ActivationEntropyMonitor``: per-layer activation entropy during training (docs/entropy.md).

On collection steps (``every_n_steps``, shared schedule with the EAFO callback) forward hooks count
each activation's *input* into a range-free histogram with one column per bfloat16 number (tensor
ops only, inside the forward pass). Once that step's optimizer step has happened, every rank sums
the counts (``trainer.strategy.reduce``) and computes, from the summed integer counts and the
module's own elementwise f (parameters as they were during that step's forward passes):

* ``entropy/<layer>``: whole-line entropy of the output, p_Y summed over every preimage (mixed
  entropy H_b-style where f has flat parts, e.g. ReLU's atom at 0);
* ``entropy_branch/<layer>``: H(Y | X∈B) = H(X | X∈B) + E[ln f′(X) | X∈B] on the invertible branch B;
* ``entropy_input/<layer>``, ``p0/<layer>`` (atom mass of the output), ``nonfinite/<layer>``;
* optionally the fixed-width plug-in of the outputs, ``entropy_plugin_d<Δ>/<layer>`` and ``out_of_range/<layer>``.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from crrelu_lightning.activations import CRActivation, cr_math
from crrelu_lightning.callbacks._activation_taps import ActivationTaps, find_activation_modules
from crrelu_lightning.callbacks._collection import (
    CollectionSchedule,
    RateLimitedWarnings,
    SampleGenerators,
    log_metrics,
    reduce_sum,
    writers_supporting,
)
from crrelu_lightning.entropy import CellHistogram, HistogramEstimator, entropies_from_cells, entropy_from_counts
from crrelu_lightning.entropy.display import layer_figure, figure_to_rgb, raw_histogram_from_cells, raw_histogram

_STATE_VERSION = 2
ESTIMATORS = ("whole_line", "branch", "plugin")

# Exact left ends of the invertible branch of torch's smooth activations (the minimum of f).
_KNOWN_BRANCH = {nn.ReLU: 0.0, nn.SiLU: cr_math.BRANCH_START["silu"], nn.Mish: cr_math.BRANCH_START["mish"]}


def _branch_start(module: nn.Module) -> Optional[float]:
    """b of B = [b, ∞) for ``module``, or None to find it numerically from f (docs/entropy.md, "Which branch")."""
    if isinstance(module, CRActivation):
        return float(module.branch_start)  # the base's branch: x > 0 for CRReLU
    if isinstance(module, nn.GELU):
        return cr_math.BRANCH_START["gelu"] if module.approximate == "none" else None
    for cls, b in _KNOWN_BRANCH.items():
        if type(module) is cls:
            return b
    return None


def _elementwise_copy(module: nn.Module) -> Optional[nn.Module]:
    """A float64 CPU copy of ``module`` for evaluating f on a grid, or None if f is not elementwise.

    Elementwise means: a 1-D input of any length gives an output of the same shape whose values do
    not depend on the order of the input (Softmax, GLU or a per-channel PReLU fail this).
    """
    try:
        ev = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
        ev.requires_grad_(False)
        x = torch.linspace(-4.0, 4.0, 33, dtype=torch.float64)
        with torch.no_grad():
            y = ev.forward(x)
            y_rev = ev.forward(x.flip(0)).flip(0)
            y_short = ev.forward(x[:5])
        # Not bit-equality: vectorised kernels may round a value differently at another position.
        same = functools.partial(torch.allclose, rtol=1e-9, atol=1e-12)
        if not (isinstance(y, torch.Tensor) and y.shape == x.shape and same(y, y_rev) and same(y[:5], y_short)):
            return None
        return ev
    except Exception:  # any failure means "treat as non-elementwise": fall back to the output histogram
        return None


class ActivationEntropyMonitor(Callback):
    """Log the entropy of every activation module's output, per layer, during training.

    Args:
        every_n_steps: collect on optimizer steps ``s`` with ``(s − warmup_steps) % every_n_steps == 0``
            (all micro-batches of it).
        max_samples_per_call: values sampled (with replacement) per activation call; ``None`` counts all.
        estimators: which entropies to log: ``"whole_line"`` (``entropy/<layer>``), ``"branch"``
            (``entropy_branch/<layer>``), ``"plugin"`` (fixed-width histogram of the outputs on
            ``[lo, hi)`` with ``bins`` bins, ``entropy_plugin_d<Δ>/<layer>``).
        lo, hi, bins: range and bins of the plug-in histogram only (the default estimators have no range).
        include, exclude: glob patterns on module names (``fnmatch``), e.g. ``["blocks.*.mlp.act"]``.
        warmup_steps: optimizer steps before the first collection.
        log_histograms_every_n_steps: TensorBoard histograms of each layer's input (``entropy_hist/<layer>``)
            at the first collection at least this many steps after the previous one; ``None`` = off.
        log_image_every_n_steps: the picture ``entropy/distributions`` (input and output density per
            layer) likewise; ``None`` = off. Each picture shows one collection step.
        log_density: picture's density axis in log scale.
        on_validation: also collect on validation batches, logged as ``val_entropy/<layer>`` etc.
        seed: seed of the sampling generators (seeded from (seed, rank, step, micro-batch)).
        truncation_tolerance: plug-in only: warn (once per layer) when the estimated truncation bias
            H_b(q) + q·|h| of an out-of-range fraction q exceeds this many nats.

    Logged per layer at each collection step (every Lightning logger, through ``log_metrics``; also
    in ``trainer.callback_metrics``): ``entropy``, ``entropy_branch``, ``entropy_input``, ``p0``,
    ``nonfinite`` (and the plug-in keys). Layers whose f is not elementwise get ``entropy`` from a
    cell histogram of their outputs and no branch value.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_samples_per_call: Optional[int] = 4096,
        estimators: Sequence[str] = ("whole_line", "branch"),
        lo: float = -10.0,
        hi: float = 10.0,
        bins: int = 400,
        include: Optional[List[str]] = None,
        exclude: Optional[List[str]] = None,
        warmup_steps: int = 0,
        log_histograms_every_n_steps: Optional[int] = 500,
        log_image_every_n_steps: Optional[int] = 1000,
        log_density: bool = False,
        on_validation: bool = False,
        seed: int = 0,
        truncation_tolerance: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (
            ("log_histograms_every_n_steps", log_histograms_every_n_steps),
            ("log_image_every_n_steps", log_image_every_n_steps),
            ("max_samples_per_call", max_samples_per_call),
        ):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if isinstance(estimators, str):
            estimators = [estimators]
        unknown = [e for e in estimators if e not in ESTIMATORS]
        if unknown or not estimators:
            raise ValueError(f"estimators must be a non-empty list of {ESTIMATORS}, got {list(estimators)!r}")
        HistogramEstimator(lo, hi, bins=bins)  # validates lo/hi/bins with the estimator's own messages
        if not (math.isfinite(truncation_tolerance) and truncation_tolerance > 0):
            raise ValueError(f"truncation_tolerance must be a positive number of nats, got {truncation_tolerance!r}")
        self.schedule = CollectionSchedule(every_n_steps, warmup_steps)
        self.every_n_steps, self.warmup_steps = self.schedule.every_n_steps, self.schedule.warmup_steps
        self.max_samples_per_call = max_samples_per_call
        self.estimators = tuple(estimators)
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        self.include, self.exclude = include, exclude
        self.log_histograms_every_n_steps = log_histograms_every_n_steps
        self.log_image_every_n_steps = log_image_every_n_steps
        self.log_density = bool(log_density)
        self.on_validation = on_validation
        self.seed = int(seed)
        self.truncation_tolerance = float(truncation_tolerance)
        self.last_metrics: Dict[str, float] = {}
        self.last_counts: Optional[torch.Tensor] = None  # reduced input cell counts of the last training collection
        self._taps: Optional[ActivationTaps] = None
        self._loaded: Optional[Dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, estimators=self.estimators)

    @property
    def plugin_key(self) -> str:
        return f"entropy_plugin_d{(self.hi - self.lo) / self.bins:g}"

    # ----------------------------------------------------------------- set-up
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._taps is not None:  # fit → validate on the same trainer: keep the hooks
            return
        modules = find_activation_modules(pl_module, self.include, self.exclude)
        if not modules:
            rank_zero_warn("ActivationEntropyMonitor found no activation modules in the model; it will log nothing.")
        self._names = list(modules)
        self._modules = list(modules.values())
        self._evals = [_elementwise_copy(m) for m in self._modules]
        self._branch = [_branch_start(m) for m in self._modules]
        rows = max(1, len(self._names))
        device = trainer.strategy.root_device
        # Per-run state lives here, not in __init__: spawned processes must not share it.
        self._cells = {"train": CellHistogram(rows, device=device), "val": CellHistogram(rows, device=device)}
        self._plugin = None
        if "plugin" in self.estimators:
            self._plugin = {k: HistogramEstimator(self.lo, self.hi, bins=self.bins, num_estimators=rows, device=device) for k in ("train", "val")}
        self._target = "train"
        self._snapshots: List[Dict[str, torch.Tensor]] = [{} for _ in self._modules]
        self._sampler = SampleGenerators(self.seed)
        self._warnings = RateLimitedWarnings("ActivationEntropyMonitor")
        self._last_hist_step: Optional[int] = None
        self._last_image_step: Optional[int] = None
        self._taps = ActivationTaps(modules, self._record) if modules else None
        if self._loaded is not None:
            self._apply_state(self._loaded)
            self._loaded = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._taps is not None:
            self._taps.remove()
            self._taps = None

    # ------------------------------------------------------------ hot path
    def _record(self, index: int, name: str, module: nn.Module, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        k = self.max_samples_per_call
        gen = self._sampler.get(y.device)
        values = x if (self._evals[index] is not None and x is not None) else y
        self._cells[self._target].update(values, row=index, max_samples=k, generator=gen)
        if self._plugin is not None:
            self._plugin[self._target].update(y, index=index, max_samples=k, generator=gen)

    def _snapshot_parameters(self) -> None:
        """Copy each tapped module's parameters/buffers as they are for this step's forward passes (async clones)."""
        for i, module in enumerate(self._modules):
            if self._evals[i] is not None:
                self._snapshots[i] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    # ------------------------------------------------------------ training
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._taps is None:
            return
        on = self.schedule.batch_start(trainer.global_step)
        if on:
            self._sampler.reseed(trainer.global_rank, 0, trainer.global_step, self.schedule.micro_batch)
            if self.schedule.micro_batch == 0:
                self._snapshot_parameters()
            self._target = "train"
        self._taps.enabled = on

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._taps is None:
            return
        self._taps.enabled = False
        _, done = self.schedule.batch_end(trainer.global_step)
        if done is not None:  # same answer on every rank: every rank reaches the reduction
            cells, plugin = self._reduce(trainer, "train")
            self.last_counts = cells
            metrics = self._metrics(cells, plugin, done, prefix="")
            self._publish(trainer, pl_module, metrics, done, on_step=True)
            self._log_pictures(trainer, cells, done)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._taps is not None:
            self._warnings.summary()

    # ---------------------------------------------------------- validation
    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._taps is None:
            return
        if self.on_validation and not trainer.sanity_checking:
            self._sampler.reseed(trainer.global_rank, 1, trainer.global_step, dataloader_idx, batch_idx)
            if batch_idx == 0 and dataloader_idx == 0:
                self._snapshot_parameters()
            self._target = "val"
            self._taps.enabled = True
        else:
            self._taps.enabled = False

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._taps is not None:
            self._taps.enabled = False
            self._target = "train"

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._taps is None or not self.on_validation or trainer.sanity_checking:
            return
        cells, plugin = self._reduce(trainer, "val")
        metrics = self._metrics(cells, plugin, trainer.global_step, prefix="val_")
        self._publish(trainer, pl_module, metrics, trainer.global_step, on_step=False)

    # ----------------------------------------------------------- reduction
    def _reduce(self, trainer: Trainer, which: str):
        """Sum this rank's counts over all ranks (every rank, same hook), reset them, return the totals."""
        cells = reduce_sum(trainer, self._cells[which].state_tensor().clone())
        self._cells[which].reset()
        plugin = None
        if self._plugin is not None:
            plugin = reduce_sum(trainer, self._plugin[which].state_tensor().clone())
            self._plugin[which].reset()
        return cells, plugin

    # ------------------------------------------------------------ estimates
    def _f(self, index: int) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        ev = self._evals[index]
        if ev is None:
            return None
        snap = self._snapshots[index]
        if snap:
            ev.load_state_dict({k: v.to("cpu", torch.float64) if v.is_floating_point() else v.cpu() for k, v in snap.items()})

        def f(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return ev.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()

        return f

    def _layer_stats(self, cells: torch.Tensor) -> List[Dict[str, float]]:
        rows = cells.cpu().numpy()  # one device→host copy at log time (never in the forward pass)
        out = []
        for i in range(len(self._names)):
            f = self._f(i)
            if f is None:  # not elementwise: entropy of the output cells themselves
                stats = entropies_from_cells(rows[i], None, branch_start=-math.inf)
                stats["branch"] = math.nan
            else:
                stats = entropies_from_cells(rows[i], f, branch_start=self._branch[i])
            out.append(stats)
        return out

    def _metrics(self, cells: torch.Tensor, plugin: Optional[torch.Tensor], step: int, prefix: str) -> Dict[str, float]:
        self._last_stats = self._layer_stats(cells)
        metrics: Dict[str, float] = {}
        for name, s in zip(self._names, self._last_stats):
            if "whole_line" in self.estimators:
                metrics[f"{prefix}entropy/{name}"] = s["whole_line"]
            if "branch" in self.estimators and self._evals[self._names.index(name)] is not None:
                metrics[f"{prefix}entropy_branch/{name}"] = s["branch"]
            metrics[f"{prefix}entropy_input/{name}"] = s["input"]
            metrics[f"{prefix}p0/{name}"] = s["p0"]
            metrics[f"{prefix}nonfinite/{name}"] = s["nonfinite_count"]
            if s["nonfinite_count"] > 0 and s["num_samples"] == 0:
                self._warnings.warn(
                    "all-nonfinite", name,
                    f"all {int(s['nonfinite_count'])} recorded values of layer {name!r} at step {step} are NaN/Inf; "
                    f"its entropy is logged as NaN and {prefix}nonfinite/{name} counts them. Training continues.",
                )
            if s["branch_monotone"] == 0.0 and "branch" in self.estimators:
                self._warnings.warn(
                    "branch-not-monotone", name,
                    f"f of layer {name!r} is not strictly monotone on its branch [{s['branch_start']:.4g}, ∞) at step "
                    f"{step} (a CR layer with ε ≤ −1?); entropy_branch/{name} is then H(Y | X∈B) by the pushforward, "
                    "not the change-of-variables formula.",
                )
        if plugin is not None:
            width = (self.hi - self.lo) / self.bins
            stats = entropy_from_counts(plugin, width)
            table = torch.stack([stats[k] for k in ("entropy", "differential_entropy", "out_of_range_fraction")]).cpu().tolist()
            for i, name in enumerate(self._names):
                h, hc, q = (table[j][i] for j in range(3))
                metrics[f"{prefix}{self.plugin_key}/{name}"] = h
                metrics[f"{prefix}out_of_range/{name}"] = q
                bias = (-(q * math.log(q) + (1 - q) * math.log1p(-q)) if 0 < q < 1 else 0.0) + q * abs(hc if math.isfinite(hc) else 0.0)
                if bias > self.truncation_tolerance:
                    self._warnings.warn(
                        "truncation", name,
                        f"{q:.2%} of layer {name!r}'s outputs lie outside [lo, hi) = [{self.lo}, {self.hi}) at step {step}: "
                        f"estimated truncation bias of {self.plugin_key} ≈ {bias:.3f} nats > {self.truncation_tolerance}. "
                        "Widen the range (the default estimators have none).",
                    )
        return metrics

    def _publish(self, trainer: Trainer, pl_module: LightningModule, metrics: Dict[str, float], step: int, on_step: bool) -> None:
        self.last_metrics = dict(metrics)
        # callback_metrics (for ModelCheckpoint/EarlyStopping); values are identical on every rank.
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=on_step, on_epoch=not on_step, logger=False, sync_dist=False)
        log_metrics(trainer, metrics, step=step)

    # ------------------------------------------------------------ pictures
    def _due(self, every: Optional[int], last: Optional[int], step: int) -> bool:
        return every is not None and (last is None or step - last >= every)

    def _log_pictures(self, trainer: Trainer, cells: torch.Tensor, step: int) -> None:
        if self._due(self.log_histograms_every_n_steps, self._last_hist_step, step):
            self._last_hist_step = step
            writers = writers_supporting(trainer, "add_histogram_raw")
            if writers:
                rows = cells.cpu().numpy()
                for i, name in enumerate(self._names):
                    kwargs = raw_histogram_from_cells(rows[i], self._last_stats[i]["bin_width"])
                    if kwargs is not None:
                        for w in writers:
                            w.add_histogram_raw(f"entropy_hist/{name}", global_step=step, **kwargs)
        if self._due(self.log_image_every_n_steps, self._last_image_step, step):
            self._last_image_step = step
            writers = writers_supporting(trainer, "add_image")
            if writers:
                rows = cells.cpu().numpy()
                fns = [self._f(i) for i in range(len(self._names))]
                fig = layer_figure(rows, self._names, fns, self._last_stats, title=f"step {step}", log_density=self.log_density)
                image = figure_to_rgb(fig)
                for w in writers:
                    w.add_image("entropy/distributions", image, global_step=step, dataformats="HWC")

    # --------------------------------------------------------------- resume
    def state_dict(self) -> Dict[str, Any]:
        """Step counters of the pictures. Counts never outlive their collection step, so nothing else is needed."""
        if self._taps is None and self._loaded is not None:
            return dict(self._loaded)
        if not hasattr(self, "_names"):
            return {}
        return {"version": _STATE_VERSION, "labels": list(self._names),
                "last_hist_step": self._last_hist_step, "last_image_step": self._last_image_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if hasattr(self, "_names") and self._taps is not None:
            self._apply_state(state_dict)
        else:  # loaded before setup(): apply once the per-run state exists
            self._loaded = dict(state_dict)

    def _apply_state(self, state: Dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION or state.get("labels") != self._names:
            rank_zero_warn(
                "ActivationEntropyMonitor: checkpoint state does not match this model/version "
                f"(layers {state.get('labels')}, version {state.get('version')} vs {self._names}, {_STATE_VERSION}); "
                "picture schedule starts afresh."
            )
            return
        self._last_hist_step = state["last_hist_step"]
        self._last_image_step = state["last_image_step"]
