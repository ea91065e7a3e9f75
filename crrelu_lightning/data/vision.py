"""Image datamodules for configs: ``crrelu_lightning.data.vision.<Class>``.

Defined here: ``FashionMNISTDataModule`` and ``SyntheticImageDataModule``; re-exported: the CIFAR and
ImageFolder datamodules and the ``VisionDataModule`` base (see ``data/base.py`` for extending).
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset

from crrelu_lightning.data.base import ArrayImageDataset, VisionDataModule
from crrelu_lightning.data.transforms import Augment
from crrelu_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from crrelu_lightning.data.idx import read_idx
from crrelu_lightning.data.imagefolder import ImageFolderDataModule


class SyntheticImageDataModule(VisionDataModule):
    """Learnable random images for tests: class template ``t_k ~ U(0, 1)`` plus noise ``σ·N(0, 1)``, clipped."""

    def __init__(
        self,
        num_train: int = 256,
        num_test: int = 64,
        num_classes: int = 4,
        img_size: int = 16,
        in_chans: int = 1,
        noise: float = 0.2,
        augment: Augment = "none",
        **kwargs,
    ) -> None:
        # `augment` is explicit (not kwargs.setdefault) so LightningCLI shows and passes this default.
        super().__init__(augment=augment, **kwargs)
        self.num_train, self.num_test, self.num_classes = num_train, num_test, num_classes
        self.img_size, self.in_chans, self.noise = img_size, in_chans, noise
        self.mean, self.std = (0.5,) * in_chans, (0.25,) * in_chans
        self.class_names = [f"class{k}" for k in range(num_classes)]

    def _make(self, n: int, offset: int) -> Tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        templates = torch.rand(self.num_classes, self.in_chans, self.img_size, self.img_size, generator=g)
        g.manual_seed(self.seed + offset)
        y = torch.randint(0, self.num_classes, (n,), generator=g)
        x = templates[y] + self.noise * torch.randn(n, *templates.shape[1:], generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    def train_pool(self, augment: bool) -> Dataset:
        return self.array_dataset(*self._make(self.num_train, 1), augment=augment)

    def test_set(self) -> Dataset:
        return self.array_dataset(*self._make(self.num_test, 2), augment=False)


FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class FashionMNISTDataModule(VisionDataModule):
    """Fashion-MNIST (60k train / 10k test, 28×28 grey, 10 classes), all in memory as uint8.

    Reads ``ROOT/FashionMNIST/raw/<name>`` (torchvision layout, uncompressed or ``.gz``), ``ROOT/<name>[.gz]``,
    or the Debian package's ``/usr/share/datasets/fashion-mnist/<name>.gz`` (used only when ROOT lacks the
    files, and then with a warning naming the folder). Pixel mean/std 0.2860/0.3530.
    """

    mean = (0.2860,)
    std = (0.3530,)
    num_classes, img_size, in_chans = 10, 28, 1
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    def __init__(self, root: str = "data", use_system_package: bool = True, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.use_system_package = use_system_package
        self.fetch_hint = f"crrelu-lightning data fetch fashion-mnist --root {root}"
        self._warned_system = False

    def _find(self, name: str) -> Path:
        dirs = [self.root / "FashionMNIST" / "raw", self.root]
        if self.use_system_package:
            dirs.append(DEBIAN_FMNIST_DIR)
        tried = [c for d in dirs for c in (d / name, d / f"{name}.gz")]
        for cand in tried:
            if cand.is_file():
                if cand.parent == DEBIAN_FMNIST_DIR and not self._warned_system:
                    self._warned_system = True
                    rank_zero_warn(
                        f"{type(self).__name__}: no Fashion-MNIST files under root {self.root.resolve()}; using the "
                        f"Debian package's files in {DEBIAN_FMNIST_DIR} instead (set use_system_package: false to "
                        f"forbid this, or fetch into the root: {self.fetch_hint})")
                return cand
        listed = "\n".join(f"  {c.resolve() if not c.is_absolute() else c}" for c in tried)
        raise FileNotFoundError(
            f"{type(self).__name__}: {name} not found. Paths tried:\n{listed}\nFetch it with: {self.fetch_hint}")

    def prepare_data(self) -> None:
        for train in (True, False):  # fail at once, before the trainer does anything else
            for name in FMNIST_FILES[train]:
                self._find(name)

    def _load(self, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        img_f, lab_f = FMNIST_FILES[train]
        refetch = f"{self.fetch_hint}  (the fetch re-writes damaged files)"
        images, labels = read_idx(self._find(img_f), refetch), read_idx(self._find(lab_f), refetch)
        return images.unsqueeze(1), labels.long()

    def train_pool(self, augment: bool) -> Dataset:
        if not hasattr(self, "_train_arrays"):
            self._train_arrays = self._load(True)
        return self.array_dataset(*self._train_arrays, augment=augment)

    def test_set(self) -> Dataset:
        return self.array_dataset(*self._load(False), augment=False)


__all__ = [
    "ArrayImageDataset",
    "VisionDataModule",
    "SyntheticImageDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
]
