"""ImageNet-style ImageFolder trees: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``.

Per-image PIL transforms. Evaluation: resize to ``img_size / crop_pct`` then centre crop ``img_size``.
Training: ``none`` = evaluation transform, ``basic`` = RandomResizedCrop + flip, ``paper`` = timm recipe.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch.utils.data import Dataset

from crrelu_lightning.data.base import VisionDataModule
from crrelu_lightning.data.transforms import paper_train_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(VisionDataModule):
    """Datamodule over ``torchvision.datasets.ImageFolder`` trees (test split defaults to ``val_dir``)."""

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
        self.fetch_hint = f"point `root` at a folder holding {train_dir}/<class>/... and {val_dir}/<class>/..."

    def _folder(self, sub: str, transform):
        from torchvision.datasets import ImageFolder

        path = self.root / sub
        if not path.is_dir():
            raise self.missing_root_error(path)
        ds = ImageFolder(str(path), transform=transform)
        self.num_classes = len(ds.classes)
        return ds

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
