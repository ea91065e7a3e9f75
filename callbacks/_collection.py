"""Plumbing shared by the callbacks that collect activation statistics on a schedule.

``ActivationEntropyMonitor`` and ``EAFOCallback`` both tap activations on some optimizer steps, sum
what they saw over micro-batches and ranks, and log scalars. This module is the one place where that
is decided, so both callbacks collect on the same steps, reduce the same way and log the same way::

    schedule = CollectionSchedule(every_n_steps=10, warmup_steps=50)
    sampler = SampleGenerators(seed)
    warnings = RateLimitedWarnings("EAFOCallback")

    # on_train_batch_start (every micro-batch)
    taps.enabled = schedule.batch_start(trainer.global_step)
    sampler.reseed(trainer.global_rank, trainer.global_step, schedule.micro_batch)

    # inside the forward pass (tensor work only)
    pick = torch.randint(n, (k,), generator=sampler.get(x.device), device=x.device)

    # on_train_batch_end (every micro-batch)
    stepped, done = schedule.batch_end(trainer.global_step)
    if done is not None:                                   # same answer on every rank
        totals = reduce_sum(trainer, estimator.state_tensor())  # every rank, same hook
        estimator.reset()
        log_metrics(trainer, {"eafo/eps/act": 0.1}, step=done)  # rank zero, any Lightning logger

    # on_train_end
    warnings.summary()

Rules these helpers encode:

- **Schedule.** Optimizer step ``s`` (``trainer.global_step`` when its first micro-batch starts) is a
  collection step iff ``s >= warmup_steps`` and ``(s - warmup_steps) % every_n_steps == 0``. All
  micro-batches of that step are collected (gradient accumulation sees the same data as one big batch);
  the collection is complete once ``global_step`` has advanced, i.e. after that step's optimizer step.
  ``global_step`` is the same on every rank, so every rank reaches the reduction in the same hook.
- **Reduction.** ``reduce_sum`` goes through ``trainer.strategy.reduce(..., reduce_op="sum")``, which is
  the identity on one device and an all-reduce under DDP/FSDP. Integer state tensors sum exactly and
  in any order, so the totals are bit-identical to one process seeing all ranks' data.
- **Sampling.** Subsampling generators are reseeded from integers such as (seed, rank, step,
  micro-batch). The stream is a pure function of them: ranks never draw the same indices, nothing has
  to be saved in a checkpoint, and a resumed run draws exactly what the uninterrupted run drew.
  The global RNG is never touched, so the callbacks do not change data order, dropout or init.
- **Logging.** ``log_metrics`` writes plain floats through each logger's ``log_metrics`` (TensorBoard,
  CSV, W&B, MLflow, ...) on global rank zero only; values must already be reduced (identical on every
  rank). Logger-specific extras (histograms, images) use ``writers_supporting``, which returns only
  the experiments that implement them, so other loggers are skipped, never an error.
- **Warnings.** ``RateLimitedWarnings`` warns once per (kind, layer) per run and counts the rest;
  ``summary()`` reports the counts at the end of the run.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from lightning.pytorch.utilities import rank_zero_warn

__all__ = [
    "CollectionSchedule",
    "RateLimitedWarnings",
    "SampleGenerators",
    "log_metrics",
    "mix_seed",
    "reduce_sum",
    "writers_supporting",
]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class CollectionSchedule:
    """Which optimizer steps collect, and when a collection (all its micro-batches) is complete.

    Args:
        every_n_steps: collect on every n-th optimizer step (n >= 1).
        warmup_steps: optimizer steps before the first collection (>= 0).

    Drive it from the two batch hooks of a callback: ``batch_start`` on every micro-batch start,
    ``batch_end`` on every micro-batch end. It keeps no state worth saving: everything follows from
    ``trainer.global_step``, so a resumed run continues on the same schedule.
    """

    def __init__(self, every_n_steps: int = 1, warmup_steps: int = 0) -> None:
        self.every_n_steps = _check_int("every_n_steps", every_n_steps, 1)
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        self.micro_batch = 0  # index of the current micro-batch within its optimizer step
        self._batch_step: Optional[int] = None  # global_step when the current micro-batch started
        self._collect_step: Optional[int] = None  # collection step whose micro-batches are being collected

    def is_collection_step(self, step: int) -> bool:
        """True iff optimizer step ``step`` (a ``global_step`` value) collects."""
        return step >= self.warmup_steps and (step - self.warmup_steps) % self.every_n_steps == 0

    def batch_start(self, global_step: int) -> bool:
        """Record a micro-batch start; True iff it belongs to a collection step (so taps should be on)."""
        self.micro_batch = self.micro_batch + 1 if global_step == self._batch_step else 0
        self._batch_step = global_step
        if self.is_collection_step(global_step):
            self._collect_step = global_step
            return True
        return False

    def batch_end(self, global_step: int) -> Tuple[bool, Optional[int]]:
        """After a micro-batch: ``(stepped, done)``.

        ``stepped`` is True iff an optimizer step happened during this micro-batch (False while
        gradients accumulate). ``done`` is the collection step that this optimizer step completed
        (reduce and log it now, on every rank), else None.
        """
        if self._batch_step is None or global_step == self._batch_step:
            return False, None
        stepped_at = self._batch_step
        self._batch_step = None
        if self._collect_step == stepped_at:
            self._collect_step = None
            return True, stepped_at
        return True, None

    def __repr__(self) -> str:
        return f"CollectionSchedule(every_n_steps={self.every_n_steps}, warmup_steps={self.warmup_steps})"


_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64-style mixing), e.g. ``mix_seed(seed, rank, step)``.

    Nearby inputs give unrelated seeds, so streams for (rank 0, step 1) and (rank 1, step 0) differ.
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


class SampleGenerators:
    """One ``torch.Generator`` per device for subsampling, seeded from ``mix_seed(seed, *parts)``.

    Call ``reseed(rank, step, micro_batch, ...)`` at the start of every collected batch (host-side, no
    device sync) and ``get(x.device)`` inside the forward pass. A generator made on a device later
    (model moved after setup) starts from the current seed, so the stream does not depend on when
    devices first appear.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.current_seed = mix_seed(self.seed)
        self._gens: Dict[Tuple[str, int], torch.Generator] = {}

    def reseed(self, *parts: int) -> int:
        """Reseed every generator from (seed, *parts); returns the seed used."""
        self.current_seed = mix_seed(self.seed, *parts)
        for gen in self._gens.values():
            gen.manual_seed(self.current_seed)
        return self.current_seed

    def get(self, device: Union[str, torch.device]) -> torch.Generator:
        device = torch.device(device)
        # "cuda" and "cuda:0" are one device: key on (type, index or 0).
        key = (device.type, device.index or 0)
        gen = self._gens.get(key)
        if gen is None:
            gen = self._gens[key] = torch.Generator(device=device)
            gen.manual_seed(self.current_seed)
        return gen


def reduce_sum(trainer: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks through ``trainer.strategy.reduce``; returns the totals.

    Call it on every rank in the same hook (it is a collective under DDP); the identity on one
    process. The reduction may happen in place. Use integer tensors where results must not depend on
    the order of the sum (bit-identical DDP).
    """
    out = trainer.strategy.reduce(tensor, reduce_op="sum")
    return tensor if out is None else out


def log_metrics(trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
    """Write scalars to every logger of ``trainer`` via ``Logger.log_metrics``, on global rank zero only.

    Works for every Lightning logger (TensorBoard, CSV, W&B, MLflow, ...). Values are converted to
    Python floats (0-d tensors are detached first); they must be identical on every rank. Writing
    straight to the loggers, rather than through ``LightningModule.log``, keeps sparse updates that
    would otherwise be dropped when they miss the trainer's ``log_every_n_steps`` phase.
    """
    if not metrics or not getattr(trainer, "is_global_zero", True):
        return
    clean = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in metrics.items()}
    for logger in getattr(trainer, "loggers", []):
        logger.log_metrics(clean, step=step)


def writers_supporting(trainer: Any, *methods: str) -> List[Any]:
    """Experiments (e.g. a TensorBoard ``SummaryWriter``) of the trainer's loggers that have all ``methods``.

    Empty on ranks other than zero and for loggers without them (CSV, ...), so logger-specific output
    such as histograms or images is skipped there instead of failing.
    """
    if not getattr(trainer, "is_global_zero", True):
        return []
    out = []
    for logger in getattr(trainer, "loggers", []):
        exp = getattr(logger, "experiment", None)
        if exp is not None and all(callable(getattr(exp, m, None)) for m in methods):
            out.append(exp)
    return out


class RateLimitedWarnings:
    """At most one warning per (kind, layer) per run; later occurrences are only counted.

    Args:
        owner: prefix of every message (the callback's name).

    ``warn(kind, layer, message)`` emits ``message`` through ``rank_zero_warn`` the first time and
    counts every call; ``count(kind, layer)`` reads the count; ``summary()`` warns once per (kind,
    layer) that occurred more than once, with its count (call it at the end of a run); ``reset()``
    starts a new run.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.counts: Dict[Tuple[str, str], int] = {}

    def warn(self, kind: str, layer: str, message: str) -> bool:
        """Count one occurrence; warn if it is the first of (kind, layer). Returns True if it warned."""
        key = (kind, layer)
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n == 1:
            rank_zero_warn(f"{self.owner}: {message} (warned once per layer; later occurrences are counted)")
            return True
        return False

    def count(self, kind: str, layer: str) -> int:
        return self.counts.get((kind, layer), 0)

    def summary(self) -> None:
        for (kind, layer), n in sorted(self.counts.items()):
            if n > 1:
                rank_zero_warn(f"{self.owner}: {kind!r} happened {n} times for layer {layer!r} in this run")

    def reset(self) -> None:
        self.counts.clear()
