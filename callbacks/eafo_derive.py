"""Dynamic EAFO in the paper's sense: re-derive each EAFO layer's correction from its measured inputs.

Every ``every_n_steps`` optimizer steps, for each ``EAFOActivation`` layer (docs/eafo_general.md §4):

1. the layer's inputs, histogrammed on the collection steps since the last derivation (integer counts,
   summed over micro-batches and ranks with one all-reduce per collection), are smoothed by a Gaussian
   kernel and the correction ĥ is derived from them (``crrelu_lightning.entropy.derive``);
2. the new table is swapped into the module in place (same grid size: compiled graphs stay valid);
3. ε is clipped into the new monotone interval (shrunk by ``eps_margin``) and, if ``eps_lr > 0``, stepped
   down the branch entropy: ε ← ε − η·dH_B/dε (computed by quadrature on the smoothed histogram).

The counts and moments are integers reduced across ranks, and the derivation is a deterministic function of
them, so every rank swaps in the bit-identical table. The histogram range of a layer is mean ± ``range_sigmas``
standard deviations of its inputs, set at the first collection (which only measures) and again from each
window's moments at every derivation. This is a separate callback from ``EAFOCallback`` (the CR family's ε
descent); both can run in one trainer.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from crrelu_lightning.activations.eafo_activation import EAFOActivation
from crrelu_lightning.callbacks._activation_taps import ActivationTaps, find_activation_modules
from crrelu_lightning.callbacks._collection import (
    CollectionSchedule,
    RateLimitedWarnings,
    SampleGenerators,
    log_metrics,
    reduce_sum,
)
from crrelu_lightning.entropy.derive import derive_correction
from crrelu_lightning.entropy.distributions import HistogramInput

# Fixed-point moments (exact, order-independent sums): x in units of 2^-20, |x| clipped at 2^10.
_X_SCALE = 2.0**20
_X2_SCALE = 2.0**10
_X_CLIP = 2.0**10


class EAFODeriveCallback(Callback):
    """Re-derive every ``EAFOActivation``'s table from its measured input distribution during training.

    Args:
        every_n_steps: optimizer steps between derivations (K).
        collect_every_n_steps: histogram the inputs on every n-th optimizer step.
        warmup_steps: optimizer steps before the first collection (which only calibrates the range).
        bins: histogram bins per layer.
        range_sigmas: the histogram covers mean ± this many standard deviations of the layer's inputs.
        max_samples_per_call: inputs subsampled per layer call (with replacement); None = all.
        bandwidth: kernel bandwidth of the smoothing (None: ``SmoothedHistogram``'s rule).
        min_samples: a layer with fewer histogrammed inputs in a window keeps its table.
        eps_lr: η of the optional ε step (0 = none; the optimizer alone trains ε).
        eps_margin: ε is clipped into (1 − margin)·(monotone interval) after each swap.
        include / exclude: glob patterns on module names.
        seed: seed of the subsampling generators (stream = f(seed, rank, step, micro-batch)).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        collect_every_n_steps: int = 5,
        warmup_steps: int = 0,
        bins: int = 256,
        range_sigmas: float = 6.0,
        max_samples_per_call: Optional[int] = 16384,
        bandwidth: Optional[float] = None,
        min_samples: int = 2000,
        eps_lr: float = 0.0,
        eps_margin: float = 0.05,
        include: Optional[List[str]] = None,
        exclude: Optional[List[str]] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.schedule = CollectionSchedule(collect_every_n_steps, warmup_steps)
        if int(every_n_steps) != every_n_steps or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if every_n_steps % self.schedule.every_n_steps:
            raise ValueError(
                f"every_n_steps ({every_n_steps}) must be a multiple of collect_every_n_steps "
                f"({collect_every_n_steps}), so that derivations fall on collection steps"
            )
        if int(bins) != bins or bins < 16:
            raise ValueError(f"bins must be an integer >= 16, got {bins!r}")
        for name, v, ok in (
            ("range_sigmas", range_sigmas, range_sigmas > 0),
            ("eps_lr", eps_lr, eps_lr >= 0),
            ("eps_margin", eps_margin, 0 <= eps_margin < 1),
        ):
            if not (math.isfinite(v) and ok):
                raise ValueError(f"{name} has an invalid value {v!r}")
        if max_samples_per_call is not None and int(max_samples_per_call) < 1:
            raise ValueError(f"max_samples_per_call must be >= 1 or None, got {max_samples_per_call!r}")
        self.every_n_steps, self.bins = int(every_n_steps), int(bins)
        self.range_sigmas, self.bandwidth, self.min_samples = float(range_sigmas), bandwidth, int(min_samples)
        self.max_samples_per_call = None if max_samples_per_call is None else int(max_samples_per_call)
        self.eps_lr, self.eps_margin = float(eps_lr), float(eps_margin)
        self.include, self.exclude, self.seed = include, exclude, int(seed)
        self.derivations = 0
        self.last_metrics: Dict[str, float] = {}
        self._loaded: Optional[Dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(include=self.include, exclude=self.exclude)

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        found = find_activation_modules(pl_module, self.include, self.exclude)
        self.layers: Dict[str, EAFOActivation] = {n: m for n, m in found.items() if isinstance(m, EAFOActivation)}
        if not self.layers:
            kinds = sorted(f"{n}: {type(m).__name__}" for n, m in found.items())
            raise ValueError(
                "EAFODeriveCallback found no EAFOActivation layer in the model; activation modules found: "
                f"{kinds or 'none'}. Use activation 'eafo_gelu' (or eafo_relu/eafo_silu/eafo_mish/eafo)."
            )
        self._names = list(self.layers)
        n = len(self._names)
        device = trainer.strategy.root_device
        self._acc = torch.zeros(n, self.bins + 5, dtype=torch.int64, device=device)  # bins | under over Σx Σx² n
        self._range_dev = torch.zeros(n, 2, dtype=torch.float64, device=device)  # (lo, 1/width) per layer
        # Reduced totals (Python ints: no overflow, identical on every rank) and the per-layer ranges.
        self.totals: List[List[int]] = [[0] * (self.bins + 5) for _ in range(n)]
        self.ranges: List[Optional[List[float]]] = [None] * n
        self.next_derivation = self.schedule.warmup_steps + self.every_n_steps
        self._rank = trainer.global_rank
        self._sampler = SampleGenerators(self.seed)
        self._warnings = RateLimitedWarnings("EAFODeriveCallback")
        self._taps = ActivationTaps(self.layers, self._collect)
        if self._loaded is not None:
            self._apply_loaded()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        taps = getattr(self, "_taps", None)
        if taps is not None:
            taps.remove()
            self._taps = None

    # ------------------------------------------------------------------ collection (hot path, tensor work only)
    def _collect(self, index: int, name: str, module: torch.nn.Module, x: Optional[torch.Tensor], out) -> None:
        if x is None:
            return
        x = x.reshape(-1)
        cap = self.max_samples_per_call
        if cap is not None and x.numel() > cap:
            x = x[torch.randint(x.numel(), (cap,), generator=self._sampler.get(x.device), device=x.device)]
        x = x.to(torch.float64)
        x = x[torch.isfinite(x)]
        row = self._acc[index]
        xc = x.clamp(-_X_CLIP, _X_CLIP)
        row[-3] += torch.round(xc * _X_SCALE).to(torch.int64).sum()
        row[-2] += torch.round(xc * xc * _X2_SCALE).to(torch.int64).sum()
        row[-1] += x.numel()
        if self.ranges[index] is None:
            return  # the calibration collection only measures the moments
        r = self._range_dev[index]
        pos = torch.floor((x - r[0]) * r[1])
        cat = torch.where(pos < 0, self.bins, torch.where(pos >= self.bins, self.bins + 1, pos)).to(torch.int64)
        row.scatter_add_(0, cat, torch.ones_like(cat))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._taps.enabled = self.schedule.batch_start(trainer.global_step)
        if self._taps.enabled:
            self._sampler.reseed(trainer.global_rank, trainer.global_step, self.schedule.micro_batch)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self._taps.enabled = False
        _, done = self.schedule.batch_end(trainer.global_step)
        if done is None:
            return
        totals = reduce_sum(trainer, self._acc).cpu().tolist()  # every rank, same hook
        self._acc.zero_()
        for i, row in enumerate(totals):
            self.totals[i] = [a + b for a, b in zip(self.totals[i], row)]
            if self.ranges[i] is None:
                self._set_range(i)
        if done + 1 >= self.next_derivation:
            self._derive_all(trainer, step=done + 1)
            self.next_derivation += self.every_n_steps

    # ------------------------------------------------------------------ range and derivation (host side)
    def _set_range(self, i: int) -> None:
        """Range for the next window from the moments of the last one; resets the layer's totals."""
        t = self.totals[i]
        n = t[-1]
        if n > 1:
            mean = t[-3] / _X_SCALE / n
            var = max(t[-2] / _X2_SCALE / n - mean * mean, 0.0)
            std = math.sqrt(var) if var > 0 else max(abs(mean), 1.0) * 1e-3
            lo, hi = mean - self.range_sigmas * std, mean + self.range_sigmas * std
            self.ranges[i] = [lo, hi]
            self._range_dev[i, 0] = lo
            self._range_dev[i, 1] = self.bins / (hi - lo)
        self.totals[i] = [0] * (self.bins + 5)

    def _derive_all(self, trainer: Trainer, step: int) -> None:
        metrics: Dict[str, float] = {}
        for i, (name, module) in enumerate(self.layers.items()):
            t, rng = self.totals[i], self.ranges[i]
            counts = t[: self.bins]
            inside, outside = sum(counts), t[self.bins] + t[self.bins + 1]
            if rng is not None and inside >= self.min_samples:
                metrics[f"eafo_derive/out_of_range/{name}"] = outside / max(1, inside + outside)
                if outside > 0.01 * (inside + outside):
                    self._warnings.warn(
                        "range", name, f"{100 * outside / (inside + outside):.1f} % of {name}'s inputs fell outside "
                        f"the histogram range {rng}; raise range_sigmas"
                    )
                self._derive_layer(name, module, counts, rng, metrics)
                if t[-1] > 0:
                    mean = t[-3] / _X_SCALE / t[-1]
                    metrics[f"eafo_derive/input_std/{name}"] = math.sqrt(max(t[-2] / _X2_SCALE / t[-1] - mean**2, 0.0))
            elif rng is not None:
                self._warnings.warn("samples", name, f"only {inside} inputs of {name} in the window; table kept")
            self._set_range(i)
        self.derivations += 1
        self.last_metrics = metrics
        log_metrics(trainer, metrics, step=step)

    def _derive_layer(self, name: str, module: EAFOActivation, counts: List[int], rng: List[float], metrics) -> None:
        edges = np.linspace(rng[0], rng[1], self.bins + 1)
        try:
            d = derive_correction(
                module.base, HistogramInput.from_arrays(counts, edges), module.taper_width, module.taper,
                module.grid_size, self.bandwidth,
            )
        except ValueError as err:
            self._warnings.warn("derive", name, f"derivation failed for {name} ({err}); table kept")
            return
        x, h, dh = d.table(normalized=True)
        lo, hi = (v * d.scale for v in d.eps_interval)
        module.set_table(x, h, dh, (lo, hi))
        module.input_description = d.input
        with torch.no_grad():
            eps = float(module.eps.double())
            # normalised units: ε̂ = s·ε_raw, so dH/dε̂ = (dH/dε_raw)/s
            if self.eps_lr > 0 and lo < eps < hi:
                eps -= self.eps_lr * d.d_entropy_d_eps(eps / d.scale) / d.scale
            eps = min(max(eps, (1 - self.eps_margin) * lo), (1 - self.eps_margin) * hi)
            module.eps.fill_(eps)
        metrics[f"eafo_derive/eps/{name}"] = eps
        metrics[f"eafo_derive/dH_deps/{name}"] = d.d_entropy_d_eps(eps / d.scale) / d.scale
        metrics[f"eafo_derive/delta_entropy/{name}"] = d.delta_entropy(eps / d.scale)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._warnings.summary()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> Dict[str, Any]:
        # The tables and ε live in the model (buffers, parameter); this is the window in progress.
        return {
            "derivations": self.derivations,
            "next_derivation": getattr(self, "next_derivation", None),
            "totals": [list(r) for r in getattr(self, "totals", [])],
            "ranges": list(getattr(self, "ranges", [])),
            "names": list(getattr(self, "_names", [])),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        self.derivations = int(state_dict["derivations"])
        if hasattr(self, "_acc"):  # Lightning restores callback state after setup(): apply to the live state
            self._apply_loaded()

    def _apply_loaded(self) -> None:
        s, self._loaded = self._loaded, None
        if s.get("names") != self._names:
            raise ValueError(
                f"EAFODeriveCallback checkpoint was saved for layers {s.get('names')}, this model has {self._names}"
            )
        self.next_derivation = int(s["next_derivation"])
        self.totals = [[int(v) for v in r] for r in s["totals"]]
        for i, rng in enumerate(s["ranges"]):
            self.ranges[i] = None if rng is None else [float(rng[0]), float(rng[1])]
            if rng is not None:
                self._range_dev[i, 0] = self.ranges[i][0]
                self._range_dev[i, 1] = self.bins / (self.ranges[i][1] - self.ranges[i][0])
