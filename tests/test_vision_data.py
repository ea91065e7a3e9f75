"""Image datamodules read the official on-disk formats (written here byte by byte) and augment correctly."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from crrelu_lightning.data.idx import read_idx
from crrelu_lightning.data.transforms import batch_crop_flip
from crrelu_lightning.data.vision import (
    ArrayImageDataset,
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticImageDataModule,
)

# ---------------------------------------------------------------------------------------------------------
# Writers of the official formats (also used by test_vision_configs.py / test_cli_vision.py).


def write_idx(path: Path, arr: np.ndarray, compress: bool = False) -> None:
    """IDX: 0x0000, dtype 0x08 (uint8), ndim, big-endian int32 dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20, compress: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / "FashionMNIST" / "raw" / f"{prefix}-images-idx3-ubyte", x, compress)
        write_idx(root / "FashionMNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", y, compress)
        out[prefix] = (x, y)
    return out


def _pickle_py2_style(path: Path, d: dict) -> None:
    # The official files were pickled by Python 2 (protocol 2): str keys arrive as bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in d.items()}, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 8, seed: int = 0):
    """``cifar-10-batches-py``: data_batch_1..5 + test_batch, ``data`` (N, 3072) uint8 rows R|G|B, ``labels``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    batches = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        _pickle_py2_style(folder / name, {
            "batch_label": f"batch {i}".encode(), "labels": labels, "data": data,
            "filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        })
        batches.append((data, labels))
    _pickle_py2_style(folder / "batches.meta", {"label_names": [f"c{k}".encode() for k in range(10)], "num_vis": 3072})
    return batches


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 8, seed: int = 0):
    """``cifar-100-python``: train/test with ``data``, ``fine_labels``, ``coarse_labels``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _pickle_py2_style(folder / name, {
            "filenames": [f"f{j}.png".encode() for j in range(n)], "batch_label": name.encode(),
            "fine_labels": fine, "coarse_labels": [v // 5 for v in fine], "data": data,
        })
        out[name] = (data, fine)
    _pickle_py2_style(folder / "meta", {"fine_label_names": [], "coarse_label_names": []})
    return out


def write_image_folder(root: Path, classes=("cat", "dog", "fish"), per_class: int = 3, size=(40, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{j}.png")


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a", arr, compress)
    got = read_idx(tmp_path / ("a.gz" if compress else "a"))
    assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(arr))


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_raw_folder(tmp_path, compress):
    ref = write_fashion_mnist(tmp_path, compress=compress)
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=8, val_split=0.25, augment="none", use_system_package=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set_)) == (30, 10, 20)
    x, y = next(iter(dm.test_dataloader()))
    expected = (torch.from_numpy(ref["t10k"][0][:8]).float() / 255 - 0.2860) / 0.3530
    assert x.shape == (8, 1, 28, 28)
    torch.testing.assert_close(x[:, 0], expected)
    assert y.tolist() == ref["t10k"][1][:8].tolist()
    # train and val are disjoint and together the full training set
    seen = sorted(dm.train_set.indices + dm.val_set.indices)
    assert seen == list(range(40))


def test_missing_root_fails_at_once_with_path_and_fetch_command(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path / "nowhere"), use_system_package=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str((tmp_path / "nowhere").resolve()) in msg and "crrelu-lightning data fetch fashion-mnist" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR10DataModule(root=str(tmp_path)).prepare_data()  # download defaults to False: no network attempt
    with pytest.raises(FileNotFoundError, match="train"):
        ImageFolderDataModule(root=str(tmp_path)).prepare_data()


def test_cifar10_official_pickles(tmp_path):
    batches = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=4, augment="none")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 8  # val_split=0: validate on the test batch
    ds = dm.train_set
    row = batches[1][0][2]  # data_batch_2, third image: 1024 red, 1024 green, 1024 blue values
    img = ds.images[6 + 2]
    for c in range(3):
        assert torch.equal(img[c], torch.from_numpy(row[c * 1024:(c + 1) * 1024].reshape(32, 32)))
    assert ds.labels[8].item() == batches[1][1][2]
    x, _ = ds[8]
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    assert x[1, 0, 0].item() == pytest.approx((row[1024] / 255 - mean[1]) / std[1], rel=1e-5)


def test_cifar100_official_pickles_fine_labels(tmp_path):
    ref = write_cifar100(tmp_path)
    dm = CIFAR100DataModule(root=str(tmp_path), batch_size=4, augment="none", val_split=4)
    dm.setup("fit")
    dm.setup("test")
    assert dm.num_classes == 100
    assert dm.test_set_.labels.tolist() == ref["test"][1]
    assert torch.equal(dm.test_set_.images.reshape(8, -1), torch.from_numpy(ref["test"][0]))
    assert len(dm.train_set) == 8 and len(dm.val_set) == 4


@pytest.mark.parametrize("augment", ["none", "basic", "paper"])
def test_augmentation_output_size(tmp_path, augment):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=5, augment=augment)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (5,)
    assert torch.isfinite(x).all()


def test_image_folder_tree(tmp_path):
    write_image_folder(tmp_path)
    for augment in ("basic", "paper"):
        dm = ImageFolderDataModule(root=str(tmp_path), img_size=24, batch_size=4, augment=augment, val_split=0)
        dm.prepare_data()
        dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))
        assert x.shape == (4, 3, 24, 24)
        assert dm.num_classes == 3 and len(dm.train_set) == 9 and len(dm.val_set) == 9
        xv, yv = next(iter(dm.val_dataloader()))
        assert xv.shape == (4, 3, 24, 24) and yv.tolist() == [0, 0, 0, 1]  # sorted class folders


def test_batch_crop_flip_matches_per_image_reference():
    x = torch.rand(6, 2, 5, 7)
    g = torch.Generator().manual_seed(3)
    out = batch_crop_flip(x, padding=2, generator=g)
    g.manual_seed(3)  # replay the same draws in the same order
    oy = torch.randint(0, 5, (6,), generator=g)
    ox = torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    for n in range(6):
        padded = torch.zeros(2, 9, 11)
        padded[:, 2:7, 2:9] = x[n]
        ref = padded[:, oy[n]:oy[n] + 5, ox[n]:ox[n] + 7]
        if flip[n]:
            ref = ref.flip(-1)
        assert torch.equal(out[n], ref)


def test_array_dataset_validates_inputs():
    with pytest.raises(ValueError, match="uint8"):
        ArrayImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="one per channel"):
        ArrayImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), (0.5,), (0.5,))


def test_bad_datamodule_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="'fancy'"):
        SyntheticImageDataModule(augment="fancy")
    with pytest.raises(ValueError, match="val_split=300"):
        dm = SyntheticImageDataModule(num_train=256, val_split=300)
        dm.setup("fit")


def test_synthetic_is_learnable_and_deterministic():
    a, b = SyntheticImageDataModule(seed=1), SyntheticImageDataModule(seed=1)
    a.setup("fit")
    b.setup("fit")
    assert torch.equal(a.train_set.images, b.train_set.images)
    # class templates differ far more than the noise: nearest-template classifies the test set
    imgs, labels = a.train_set.images.float(), a.train_set.labels
    centroids = torch.stack([imgs[labels == k].mean(0) for k in range(4)])
    t = a.val_set
    pred = torch.cdist(t.images.float().flatten(1), centroids.flatten(1)).argmin(1)
    assert (pred == t.labels).float().mean() > 0.95
