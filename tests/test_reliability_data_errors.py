"""Bad or missing dataset files give errors that name the file and the fix; fallbacks are never silent;
a crafted CIFAR pickle is refused before any of it runs."""
import gzip
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

import crrelu_lightning.data.vision as vision
from crrelu_lightning.data.errors import CorruptDataError
from crrelu_lightning.data.safe_pickle import UnsafePickleError, load_restricted
from crrelu_lightning.data.vision import CIFAR10DataModule, FashionMNISTDataModule
from test_vision_data import write_cifar10, write_fashion_mnist, write_idx

FETCH = "crrelu-lightning data fetch fashion-mnist --root"


def test_missing_root_names_every_path_tried_and_the_fetch_command_for_that_root(tmp_path):
    root = tmp_path / "some" / "missing" / "dir"
    dm = FashionMNISTDataModule(root=str(root), use_system_package=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    for tried in (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte", root / "train-images-idx3-ubyte.gz"):
        assert str(tried) in msg
    assert f"{FETCH} {root}" in msg  # the hint uses the root the user gave, not always `data`


def test_debian_package_fallback_is_logged_with_its_path(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    write_fashion_mnist(system, n_train=12, n_test=6, compress=True)  # writes system/FashionMNIST/raw/*.gz
    monkeypatch.setattr(vision, "DEBIAN_FMNIST_DIR", system / "FashionMNIST" / "raw")
    dm = FashionMNISTDataModule(root=str(tmp_path / "typo"), augment="none", batch_size=4)
    with pytest.warns(UserWarning) as record:
        dm.setup("fit")
    msgs = [str(w.message) for w in record if "Debian package" in str(w.message)]
    assert len(msgs) == 1, msgs  # once, not once per file
    assert str(system / "FashionMNIST" / "raw") in msgs[0] and str((tmp_path / "typo").resolve()) in msgs[0]
    assert len(dm.train_set) == 12
    # Files in the given root: no warning.
    write_fashion_mnist(tmp_path / "good", n_train=12, n_test=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FashionMNISTDataModule(root=str(tmp_path / "good"), augment="none", batch_size=4).setup("fit")


@pytest.mark.parametrize("damage", ["truncated", "empty", "bad_gzip", "not_idx"])
def test_corrupt_idx_names_the_file_and_the_refetch_command(tmp_path, damage):
    write_fashion_mnist(tmp_path, n_train=12, n_test=6, compress=damage == "bad_gzip")
    raw = tmp_path / "FashionMNIST" / "raw"
    target = raw / ("train-images-idx3-ubyte.gz" if damage == "bad_gzip" else "train-images-idx3-ubyte")
    data = target.read_bytes()
    target.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "bad_gzip": data[: len(data) - 30],
                        "not_idx": b"<html>404 not found</html>"}[damage])
    dm = FashionMNISTDataModule(root=str(tmp_path), use_system_package=False, augment="none", batch_size=4)
    with pytest.raises(CorruptDataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(target) in msg and "damaged" in msg and f"{FETCH} {tmp_path}" in msg


def test_fetch_rewrites_a_damaged_file_instead_of_saying_already_present(tmp_path, monkeypatch, capsys):
    from crrelu_lightning.data import fetch

    src = tmp_path / "deb"
    arrays = write_fashion_mnist(src, n_train=12, n_test=6, compress=True)
    monkeypatch.setattr(fetch, "_locate_fashion_mnist_gz", lambda: src / "FashionMNIST" / "raw")
    root = tmp_path / "data"
    fetch.fetch_fashion_mnist(root)
    bad = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:100])
    fetch.fetch_fashion_mnist(root)
    assert "damaged" in capsys.readouterr().out
    dm = FashionMNISTDataModule(root=str(root), use_system_package=False, augment="none", batch_size=4)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_set.images[:, 0].numpy(), arrays["train"][0])


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong_shape"])
def test_corrupt_cifar_batch_names_the_file_and_the_refetch_command(tmp_path, damage):
    write_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if damage == "wrong_shape":
        with open(target, "wb") as f:
            pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f, protocol=2)
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    dm = CIFAR10DataModule(root=str(tmp_path), augment="none", batch_size=4)
    with pytest.raises(CorruptDataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(target) in msg and "damaged" in msg and "--data.download true" in msg


class _RunsCode:
    """Pickles as "call os.system(...)": what a crafted data file would do to a plain pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(target, "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f, protocol=2)
    # Control: the file really runs code under a plain pickle.load.
    control = tmp_path / "control.pkl"
    control.write_bytes(pickle.dumps({b"data": _RunsCode(tmp_path / "ctl"), b"labels": [0]}, protocol=2))
    with open(control, "rb") as f:
        pickle.load(f, encoding="bytes")
    assert (tmp_path / "ctl").exists()

    dm = CIFAR10DataModule(root=str(tmp_path), augment="none", batch_size=4)
    with pytest.raises(UnsafePickleError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(target) in msg and "system" in msg and "refused" in msg
    assert not marker.exists()  # nothing ran


def test_restricted_unpickler_reads_what_the_official_files_hold(tmp_path):
    # Independent reference: the same object written by pickle (py2 protocol and the newest protocol).
    obj = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 1, 4], b"filenames": [b"a.png"],
           b"data": np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072), b"meta": (1, 2.5, None, {b"x"})}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        p = tmp_path / f"p{protocol}"
        p.write_bytes(pickle.dumps(obj, protocol=protocol))
        got = load_restricted(p)
        assert got.keys() == obj.keys()
        np.testing.assert_array_equal(got[b"data"], obj[b"data"])
        assert got[b"labels"] == obj[b"labels"] and got[b"meta"] == obj[b"meta"]
