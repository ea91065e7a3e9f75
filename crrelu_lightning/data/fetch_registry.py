"""Registry of offline dataset fetchers used by ``crrelu-lightning data fetch NAME``.

A fetcher is ``fn(root: Path) -> Path``: it puts the dataset under ``root`` (default ``data/``)
using only apt-get / pip (see docs/vision.md) and returns the folder the configs read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

FETCHERS: Dict[str, Callable[[Path], Path]] = {}
DESCRIPTIONS: Dict[str, str] = {}


def register_fetcher(name: str, description: str = ""):
    def decorator(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        FETCHERS[name] = fn
        DESCRIPTIONS[name] = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        return fn

    return decorator
