"""A training DataLoader whose position inside an epoch is part of the checkpoint (exact mid-epoch resume).

Lightning saves the ``state_dict()`` of every training loader that has ``state_dict`` / ``load_state_dict``
and restores it before it iterates again. ``ResumableDataLoader`` stores:

- the sampler's seed and epoch (``ResumableSampler`` shuffles with ``randperm(n, seed + epoch)``, never the
  global RNG, so the order of an epoch is a pure function of those two numbers);
- how many batches of the epoch were handed out (the resumed epoch skips them at the sampler, loading nothing);
- the global RNG states (torch, CUDA, numpy, python), restored just before the first batch after a resume,
  so augmentation and dropout draw the same numbers as in the uninterrupted run.

Exact with ``num_workers=0`` (the default). With worker processes, each worker's RNG is seeded when the
epoch's iterator starts, so after a resume the augmentation of the remaining batches differs (the order of
samples still matches). See docs/reliability.md.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (one replica when not distributed) that can start ``start_index`` samples in.

    Being a ``DistributedSampler``, Lightning leaves it in place under DDP (each rank takes its own slice of
    the same permutation) and calls ``set_epoch`` every epoch.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0) -> None:
        replicas, rank = _world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start_index = self.start_index, 0  # only the first pass after a resume is shortened
        return iter(indices[start:])


def _rng_states() -> Dict[str, Any]:
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key as a tensor: checkpoints must load with torch.load(weights_only=True)
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a ``ResumableSampler`` with ``state_dict`` / ``load_state_dict`` for Lightning."""

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self._batches = 0  # batches of the current epoch handed out so far (skipped ones included)
        self._resume: Optional[Dict[str, Any]] = None

    @property
    def _sampler(self) -> ResumableSampler:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}")
        return sampler

    def state_dict(self) -> Dict[str, Any]:
        s = self._sampler
        return {"seed": s.seed, "epoch": s.epoch, "batches": self._batches, "num_samples": s.num_samples,
                "num_replicas": s.num_replicas, "rng": _rng_states()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        s = self._sampler
        if (state["num_samples"], state["num_replicas"]) != (s.num_samples, s.num_replicas):
            raise ValueError(
                f"The checkpoint's training loader had {state['num_samples']} samples per replica on "
                f"{state['num_replicas']} replica(s); this run has {s.num_samples} on {s.num_replicas}. Resume with "
                f"the same data and number of devices, or start a new run.")
        s.seed = state["seed"]
        s.set_epoch(state["epoch"])
        self._resume = state

    def __iter__(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["batches"] < len(self) else 0
        if skip:
            self._sampler.start_index = skip * self.batch_size
        return self._count(super().__iter__(), skip, resume["rng"] if resume is not None else None)

    def _count(self, it: Iterator[Any], start: int, rng: Optional[Dict[str, Any]]) -> Iterator[Any]:
        self._batches = start
        if rng is not None:
            _set_rng_states(rng)  # right before the first batch: nothing between can draw from it
        for batch in it:
            self._batches += 1
            yield batch


def sampler_seed(default: int) -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``, as Lightning's DDP sampler reads it), else ``default``."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))
