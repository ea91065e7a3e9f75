"""``crrelu-lightning data``: list, fetch fashion-mnist (from a package folder the test writes), bad names."""
import gzip

import numpy as np
import pytest

from crrelu_lightning.cli import main
from crrelu_lightning.data import fetch
from crrelu_lightning.data.vision import FashionMNISTDataModule
from test_vision_data import write_idx


def test_data_list_names_fashion_mnist(capsys):
    assert main(["data", "list"]) == 0
    assert "fashion-mnist" in capsys.readouterr().out


def test_unknown_dataset_lists_available(capsys):
    assert main(["data", "fetch", "imagenet-21k"]) == 2
    err = capsys.readouterr().err
    assert "'imagenet-21k'" in err and "fashion-mnist" in err


def test_fetch_fashion_mnist_decompresses_into_torchvision_layout(tmp_path, monkeypatch):
    # Stand-in for /usr/share/datasets/fashion-mnist: the package ships the four IDX files gzip-compressed.
    pkg = tmp_path / "pkg"
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 6, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(pkg / name, arr, compress=True)
    monkeypatch.setattr(fetch, "FASHION_MNIST_SYSTEM_DIR", pkg)
    root = tmp_path / "data"
    assert main(["data", "fetch", "fashion-mnist", "--root", str(root)]) == 0
    raw = root / "FashionMNIST" / "raw"
    for name in arrays:
        with gzip.open(pkg / f"{name}.gz", "rb") as f:
            assert (raw / name).read_bytes() == f.read()  # uncompressed, byte for byte
    assert not list(raw.glob("*.part"))
    dm = FashionMNISTDataModule(root=str(root), use_system_package=False, augment="none", batch_size=6)
    dm.setup("test")
    assert dm.test_set_.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # a second fetch is a no-op that reports the existing folder
    assert main(["data", "fetch", "fashion-mnist", "--root", str(root)]) == 0


@pytest.mark.skipif(not fetch.FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_installed_debian_package_is_the_standard_data():
    # Debian recompressed the files; decompressed they are the standard 60k/10k set (mean 0.2860).
    dm = FashionMNISTDataModule(root="/nonexistent", augment="none")
    dm.setup("fit")
    imgs = dm.train_set.images
    assert imgs.shape == (60000, 1, 28, 28) and len(dm.val_set) == 10000
    assert imgs.float().mean().item() / 255 == pytest.approx(0.2860, abs=5e-4)
    assert np.bincount(dm.train_set.labels.numpy()).tolist() == [6000] * 10
