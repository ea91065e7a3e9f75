"""CIFAR-10 / CIFAR-100 from the official python pickle layouts, held in memory as uint8.

``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (keys ``data`` N×3072, ``labels``) and
``ROOT/cifar-100-python/{train, test}`` (keys ``data``, ``fine_labels``). Rows are channel-major
(1024 R, 1024 G, 1024 B), so ``data.reshape(N, 3, 32, 32)`` is already NCHW.
Downloads (through torchvision) only when ``download=True``. The pickles are read with a restricted
unpickler (``data/safe_pickle.py``): a crafted file cannot run code.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from crrelu_lightning.data.base import VisionDataModule
from crrelu_lightning.data.errors import CorruptDataError
from crrelu_lightning.data.safe_pickle import UnsafePickleError, load_restricted

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


REFETCH_HINT = (
    "Re-fetch it: delete the file and run `crrelu-lightning fit ... --data.download true` where the network "
    "allows (torchvision checks every batch's md5 and downloads again), or copy the official file back."
)


def _read_batch(f: Path, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    try:
        d = load_restricted(f)  # written by Python 2: keys are bytes
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated (EOFError), garbage (UnpicklingError), ...
        raise CorruptDataError(f"{f} is damaged: not a complete CIFAR batch ({type(e).__name__}: {e}). {REFETCH_HINT}") from e
    if not isinstance(d, dict):
        raise CorruptDataError(f"{f} is damaged: holds a {type(d).__name__}, not a CIFAR batch dict. {REFETCH_HINT}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise CorruptDataError(f"{f} is damaged: keys {sorted(d)} lack 'data' / {label_key!r}. {REFETCH_HINT}")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(
            f"{f} is damaged: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072). {REFETCH_HINT}")
    labels = np.asarray(d[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise CorruptDataError(f"{f} is damaged: {len(data)} images but {labels.shape} labels. {REFETCH_HINT}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_batches(files: List[Path], label_key: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate official CIFAR pickle batches into ``(N, 3, 32, 32)`` uint8 and int64 labels."""
    xs, ys = zip(*(_read_batch(f, label_key) for f in files))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _CIFARBase(VisionDataModule):
    mean, std = CIFAR_MEAN, CIFAR_STD
    img_size, in_chans = 32, 3
    folder = ""
    train_files: Tuple[str, ...] = ()
    test_files: Tuple[str, ...] = ()
    label_key = ""

    def __init__(self, root: str = "data", download: bool = False, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.download = download
        self.fetch_hint = (
            f"set `download: true` where the network allows, or place the official {self.folder}/ under {root}"
        )

    def _files(self, names) -> List[Path]:
        return [self.root / self.folder / n for n in names]

    def prepare_data(self) -> None:
        missing = [f for f in self._files(self.train_files + self.test_files) if not f.is_file()]
        if missing and self.download:
            self._download()
        elif missing:
            raise self.missing_root_error(missing[0])

    def _download(self) -> None:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if self.num_classes == 10 else torchvision.datasets.CIFAR100
        cls(str(self.root), train=True, download=True)

    def train_pool(self, augment: bool) -> Dataset:
        if not hasattr(self, "_train_arrays"):
            self.prepare_data()
            self._train_arrays = read_cifar_batches(self._files(self.train_files), self.label_key)
        return self.array_dataset(*self._train_arrays, augment=augment)

    def test_set(self) -> Dataset:
        self.prepare_data()
        return self.array_dataset(*read_cifar_batches(self._files(self.test_files), self.label_key), augment=False)


class CIFAR10DataModule(_CIFARBase):
    """CIFAR-10 (50k/10k, 32×32 RGB, 10 classes) from ``ROOT/cifar-10-batches-py``."""

    num_classes = 10
    class_names = CIFAR10_CLASSES
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"


class CIFAR100DataModule(_CIFARBase):
    """CIFAR-100 (50k/10k, 32×32 RGB, 100 fine classes) from ``ROOT/cifar-100-python``."""

    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"

    @property
    def class_names(self) -> Optional[List[str]]:
        """The 100 fine label names from ``cifar-100-python/meta`` (None until the data is there)."""
        meta = self.root / self.folder / "meta"
        if not meta.is_file():
            return None
        d = load_restricted(meta)  # written by Python 2: keys and names are bytes
        names = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}.get("fine_label_names") or []
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return names if len(names) == self.num_classes else None
