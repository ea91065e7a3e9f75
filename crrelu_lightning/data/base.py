"""Shared base of the image datamodules: in-memory ``ArrayImageDataset`` and ``VisionDataModule``.

Extend by subclassing ``VisionDataModule`` (implement ``train_pool(augment)`` and ``test_set()``) or by
writing any ``LightningDataModule`` and naming it with ``class_path`` in YAML (see docs/vision.md).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from crrelu_lightning.data.resumable import ResumableDataLoader, ResumableSampler, sampler_seed
from crrelu_lightning.data.transforms import Augment, batch_crop_flip, check_augment, paper_train_transform


def _passthrough(batch):
    # ArrayImageDataset.__getitems__ already returns a collated (x, y) batch.
    return batch


class ArrayImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` + int64 labels held in memory.

    Without a per-image ``transform``, ``__getitems__`` builds a whole batch with tensor ops:
    ``x = (aug(img / 255) - mean) / std`` — no per-image PIL work (the fast path for small images).
    With ``transform`` (e.g. the paper's timm recipe), each image goes through PIL and the transform.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Optional[Callable] = None,
        batch_augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel), got {list(mean)} / {list(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.transform = transform
        self.batch_augment = batch_augment

    def __len__(self) -> int:
        return len(self.images)

    def _pil(self, i: int):
        from PIL import Image

        img = self.images[i]
        return Image.fromarray(img[0].numpy(), "L") if img.shape[0] == 1 else Image.fromarray(img.permute(1, 2, 0).numpy())

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.transform is not None:
            return self.transform(self._pil(i)), self.labels[i]
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.transform is not None:
            return default_collate([self[i] for i in indices])
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(255.0)
        if self.batch_augment is not None:
            x = self.batch_augment(x)  # before normalising, so padding is black as in the usual recipe
        return (x - self.mean) / self.std, self.labels[idx]


class VisionDataModule(LightningDataModule):
    """Base class: train/val/test/predict loaders, validation split, augmentation switch.

    Subclasses set ``num_classes``, ``img_size``, ``in_chans`` and, where known, ``class_names`` (class
    attributes or set in ``__init__``): LightningCLI links them into the model before it is built.

    Args:
        root: dataset folder. batch_size: per-device training batch; eval_batch_size defaults to it.
        val_split: fraction (< 1) or count (>= 1) of the training set held out for validation;
            0 validates on the test split (the usual CIFAR practice).
        augment: ``none`` | ``basic`` (random crop with padding + flip) | ``paper`` (timm RandAugment recipe).
        num_workers, pin_memory, persistent_workers: DataLoader settings. seed: fixes the validation split.
    """

    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    # What the model needs to know about the data; the CLI links these into the model (None: not known).
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    in_chans: Optional[int] = None
    class_names: Optional[List[str]] = None
    fetch_hint: str = ""

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        val_split: Union[float, int] = 0.0,
        augment: Augment = "basic",
        crop_padding: int = 4,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if val_split < 0:
            raise ValueError(f"val_split must be >= 0 (fraction < 1 or a count), got {val_split}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_split = val_split
        self.augment = check_augment(augment)
        self.crop_padding = crop_padding
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.train_set = self.val_set = self.test_set_ = None

    # --- to implement in subclasses -------------------------------------------------------------
    def train_pool(self, augment: bool) -> Dataset:
        """The full training split, with training augmentation when ``augment``."""
        raise NotImplementedError

    def test_set(self) -> Dataset:
        raise NotImplementedError

    # --- helpers for array-backed subclasses -----------------------------------------------------
    def array_dataset(self, images: torch.Tensor, labels: torch.Tensor, augment: bool) -> ArrayImageDataset:
        transform = batch_aug = None
        if augment and self.augment == "paper":
            transform = paper_train_transform(images.shape[-1], self.mean, self.std)
        elif augment and self.augment == "basic":
            batch_aug = functools.partial(batch_crop_flip, padding=self.crop_padding)  # picklable for workers
        return ArrayImageDataset(images, labels, self.mean, self.std, transform=transform, batch_augment=batch_aug)

    def missing_root_error(self, path: Path) -> FileNotFoundError:
        hint = f" Fetch it with: {self.fetch_hint}" if self.fetch_hint else ""
        return FileNotFoundError(f"{type(self).__name__}: dataset not found at {path.resolve()}.{hint}")

    # --- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            pool = self.train_pool(augment=True)
            n = len(pool)
            n_val = int(round(self.val_split * n)) if self.val_split < 1 else int(self.val_split)
            if not 0 <= n_val < n:
                raise ValueError(f"val_split={self.val_split} leaves no training data (training set has {n} images)")
            if n_val == 0:
                self.train_set, self.val_set = pool, self.test_set()
            else:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
                self.train_set = Subset(pool, perm[n_val:])
                self.val_set = Subset(self.train_pool(augment=False), perm[:n_val])
        if stage in (None, "test", "predict") and self.test_set_ is None:
            self.test_set_ = self.test_set()

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        batched = isinstance(ds.dataset if isinstance(ds, Subset) else ds, ArrayImageDataset)
        if train:  # the position inside an epoch goes into the checkpoint (exact mid-epoch resume)
            return ResumableDataLoader(
                ds,
                batch_size=self.batch_size,
                sampler=ResumableSampler(ds, shuffle=True, seed=sampler_seed(self.seed)),
                drop_last=len(ds) > self.batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers,
                collate_fn=_passthrough if batched else None,
            )
        return DataLoader(
            ds,
            batch_size=self.eval_batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=_passthrough if batched else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set_, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set_, train=False)
