"""``crrelu-lightning data``: fetch offline datasets through the package clients (apt-get / pip only).

    crrelu-lightning data list
    crrelu-lightning data fetch fashion-mnist [--root data]

Fetchers register with ``crrelu_lightning.data.fetch_registry.register_fetcher``; text fetchers live in
``crrelu_lightning.data.text_fetch`` and are imported here when present.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from crrelu_lightning.data.fetch_registry import DESCRIPTIONS, FETCHERS, register_fetcher

try:  # the language side's fetchers (shakespeare, sentiment) register themselves on import
    import crrelu_lightning.data.text_fetch  # noqa: F401
except ImportError:  # pragma: no cover - module owned by another package part, may not exist yet
    pass

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _run(cmd: List[str], cwd: Optional[Path] = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def _locate_fashion_mnist_gz() -> Path:
    """Directory holding the four ``*.gz`` IDX files: installed package, else apt-get install / download."""
    if all((FASHION_MNIST_SYSTEM_DIR / f"{f}.gz").exists() for f in FASHION_MNIST_FILES):
        return FASHION_MNIST_SYSTEM_DIR
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            f"apt-get not found: install the Debian package {FASHION_MNIST_PACKAGE!r} another way, or place the "
            f"uncompressed IDX files {list(FASHION_MNIST_FILES)} in <root>/FashionMNIST/raw/"
        )
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        print(f"+ apt-get install -y --no-install-recommends {FASHION_MNIST_PACKAGE}", flush=True)
        res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", FASHION_MNIST_PACKAGE], env=env)
        if res.returncode != 0:  # stale package lists on a fresh machine: update once and retry
            _run(["apt-get", "update"])
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", FASHION_MNIST_PACKAGE], env=env, check=True)
        return FASHION_MNIST_SYSTEM_DIR
    # Not root: download the .deb and unpack it without installing (docs/vision.md).
    tmp = Path(tempfile.mkdtemp(prefix="fmnist-deb-"))
    _run(["apt-get", "download", FASHION_MNIST_PACKAGE], cwd=tmp)
    deb = sorted(tmp.glob(f"{FASHION_MNIST_PACKAGE}_*.deb"))
    if not deb:
        raise RuntimeError(f"apt-get download produced no {FASHION_MNIST_PACKAGE}_*.deb in {tmp}")
    _run(["dpkg", "-x", str(deb[-1]), str(tmp / "x")])
    return tmp / "x" / str(FASHION_MNIST_SYSTEM_DIR).lstrip("/")


def _valid_idx(path: Path) -> bool:
    """True if ``path`` is a complete IDX file; a damaged one is reported and re-fetched."""
    from crrelu_lightning.data.errors import CorruptDataError
    from crrelu_lightning.data.idx import read_idx

    if not path.exists():
        return False
    try:
        read_idx(path)
    except CorruptDataError as e:
        print(f"{e} -- fetching it again")
        return False
    return True


@register_fetcher("fashion-mnist", "Fashion-MNIST 60k/10k 28x28 (Debian dataset-fashion-mnist) -> ROOT/FashionMNIST/raw")
def fetch_fashion_mnist(root: Path) -> Path:
    """Fashion-MNIST via apt; writes the uncompressed IDX files torchvision expects in ``root/FashionMNIST/raw``.

    Debian recompressed the .gz files (torchvision's md5 check fails on them) but the decompressed bytes are
    the standard data, so we decompress ourselves.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    todo = [f for f in FASHION_MNIST_FILES if not _valid_idx(raw / f)]
    if not todo:
        print(f"Fashion-MNIST already present in {raw}")
        return raw
    src = _locate_fashion_mnist_gz()
    raw.mkdir(parents=True, exist_ok=True)
    for name in todo:
        gz = src / f"{name}.gz"
        if not gz.exists():
            raise FileNotFoundError(f"expected {gz} from package {FASHION_MNIST_PACKAGE!r}, not found")
        tmp_out = raw / f"{name}.part"
        with gzip.open(gz, "rb") as fin, open(tmp_out, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        tmp_out.replace(raw / name)  # atomic: a killed fetch never leaves a truncated file under the real name
    print(f"Fashion-MNIST written to {raw}")
    return raw


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="crrelu-lightning data", description="Fetch offline datasets (apt-get / pip only).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the datasets that can be fetched")
    p_fetch = sub.add_parser("fetch", help="fetch a dataset into --root")
    p_fetch.add_argument("name", help="dataset name (see `crrelu-lightning data list`)")
    p_fetch.add_argument("--root", default="data", help="folder the configs read (default: data)")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name in sorted(FETCHERS):
            print(f"{name:20s} {DESCRIPTIONS[name]}")
        return 0
    if args.name not in FETCHERS:
        print(f"unknown dataset {args.name!r}; available: {', '.join(sorted(FETCHERS))}", file=sys.stderr)
        return 2
    out = FETCHERS[args.name](Path(args.root))
    print(out)
    return 0
