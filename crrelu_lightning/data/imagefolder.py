"""ImageNet-style ImageFolder trees: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``.

Per-image PIL transforms. Evaluation: resize to ``img_size / crop_pct`` then centre crop ``img_size``.
Training: ``none`` = evaluation transform, ``basic`` = RandomResizedCrop + flip, ``paper`` = timm recipe.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from torch.utils.data import Dataset

from crrelu_lightning.data.base import VisionDataModule
from crrelu_lightning.data.transforms import paper_train_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def folder_classes(path: Path) -> List[str]:
    """Sorted sub-folder names of ``path``: the classes ``torchvision.datasets.ImageFolder`` would find."""
    return sorted(e.name for e in path.iterdir() if e.is_dir() and not e.name.startswith("."))


class ImageFolderDataModule(VisionDataModule):
    """Datamodule over ``torchvision.datasets.ImageFolder`` trees (test split defaults to ``val_dir``).

    ``num_classes`` and ``class_names`` come from the training folder's sub-folders, read when first asked
    for, so the CLI can hand them to the model before it is built (and the names reach the checkpoint).
    """

    in_chans = 3

    def __init__(
        self,
        root: str = "data/imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: Optional[str] = None,
        img_size: int = 224,
        crop_pct: float = 0.875,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir or val_dir
        self.img_size, self.crop_pct = img_size, crop_pct
        self.mean, self.std = tuple(mean), tuple(std)
        self._class_names: Optional[List[str]] = None
        self.fetch_hint = f"point `root` at a folder holding {train_dir}/<class>/... and {val_dir}/<class>/..."

    def _folder(self, sub: str, transform):
        from torchvision.datasets import ImageFolder

        path = self.root / sub
        if not path.is_dir():
            raise self.missing_root_error(path)
        ds = ImageFolder(str(path), transform=transform)
        if ds.classes != self.class_names:
            raise ValueError(
                f"{path} has classes {ds.classes[:5]}... ({len(ds.classes)}) but {self.root / self.train_dir} has "
                f"{len(self.class_names)}: every split needs the same class folders"
            )
        return ds

    @property
    def class_names(self) -> List[str]:
        if self._class_names is None:
            path = self.root / self.train_dir
            if not path.is_dir():
                raise self.missing_root_error(path)
            self._class_names = folder_classes(path)
            if not self._class_names:
                raise ValueError(f"{path} has no class sub-folders; expected {path}/<class>/<image files>")
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def eval_transform(self):
        from torchvision import transforms as T

        return T.Compose([
            T.Resize(int(round(self.img_size / self.crop_pct))), T.CenterCrop(self.img_size),
            T.ToTensor(), T.Normalize(self.mean, self.std),
        ])

    def train_transform(self):
        from torchvision import transforms as T

        if self.augment == "paper":
            return paper_train_transform(self.img_size, self.mean, self.std)
        if self.augment == "basic":
            return T.Compose([
                T.RandomResizedCrop(self.img_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(self.mean, self.std),
            ])
        return self.eval_transform()

    def prepare_data(self) -> None:
        for sub in (self.train_dir, self.test_dir):
            if not (self.root / sub).is_dir():
                raise self.missing_root_error(self.root / sub)

    def train_pool(self, augment: bool) -> Dataset:
        return self._folder(self.train_dir, self.train_transform() if augment else self.eval_transform())

    def test_set(self) -> Dataset:
        return self._folder(self.test_dir, self.eval_transform())

    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)
        if stage in (None, "fit", "validate") and self.val_split == 0 and self.val_dir != self.test_dir:
            self.val_set = self._folder(self.val_dir, self.eval_transform())
