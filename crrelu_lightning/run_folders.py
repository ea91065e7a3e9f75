"""Which run folder a ``fit`` writes to: resumed runs continue in the folder of their checkpoint.

``fit --ckpt_path last`` finds the newest ``<save_dir>/<name>/version_K/checkpoints/last*.ckpt`` of the
configured logger; ``fit --ckpt_path <save_dir>/<name>/version_K/checkpoints/x.ckpt`` is recognised too.
Either way the logger is pinned to ``version_K``, so TensorBoard curves continue in one folder, and the
TensorBoard writer gets ``purge_step = global_step of the checkpoint``: TensorBoard then hides the events of
the killed run at steps >= that step (logged after the checkpoint, and logged again by the resumed run), so
no step shows twice (docs/reliability.md).

A ``fit`` that fails before its first optimizer step removes the version folder it created, if that folder
holds no checkpoint: no empty ``version_N`` is left to confuse ``--ckpt_path last`` or a comparison.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Optional, Tuple

from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

_VERSION = re.compile(r"^version_(\d+)$")
VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")


def _get(ns: Any, key: str, default: Any = None) -> Any:
    if ns is None:
        return default
    if isinstance(ns, dict):
        return ns.get(key, default)
    return getattr(ns, key, default)


def _logger_init_args(trainer_cfg: Any) -> Optional[Any]:
    """The ``init_args`` of a single TensorBoard/CSV logger in the trainer config, else ``None``."""
    logger = _get(trainer_cfg, "logger")
    if isinstance(logger, list):
        logger = logger[0] if len(logger) == 1 else None
    cls = str(_get(logger, "class_path", ""))
    if not cls.split(".")[-1] in VERSIONED_LOGGERS:
        return None
    return _get(logger, "init_args")


def _run_root(init_args: Any) -> Path:
    save_dir = _get(init_args, "save_dir") or "lightning_logs"
    name = _get(init_args, "name")
    name = "lightning_logs" if name is None else name
    return Path(save_dir) / name if name else Path(save_dir)


def newest_last_checkpoint(run_root: Path) -> Optional[Path]:
    """``version_K/checkpoints/last*.ckpt`` with the highest K under ``run_root`` (newest file within K)."""
    best: Optional[Tuple[int, float, Path]] = None
    for vdir in run_root.glob("version_*"):
        m = _VERSION.match(vdir.name)
        if not m:
            continue
        for ckpt in (vdir / "checkpoints").glob("last*.ckpt"):
            key = (int(m.group(1)), ckpt.stat().st_mtime, ckpt)
            best = key if best is None or key[:2] > best[:2] else best
    return best[2] if best else None


def version_of(ckpt: Path, run_root: Path) -> Optional[int]:
    """K if ``ckpt`` is ``run_root/version_K/checkpoints/<file>``."""
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name != "checkpoints" or ckpt.parent.parent.parent != run_root.resolve():
        return None
    m = _VERSION.match(ckpt.parent.parent.name)
    return int(m.group(1)) if m else None


def resolve_last(cfg: Any) -> None:
    """``validate``/``test``/``predict --ckpt_path last``: the newest ``last*.ckpt`` of the configured logger."""
    init_args = _logger_init_args(_get(cfg, "trainer"))
    if _get(cfg, "ckpt_path") == "last" and init_args is not None:
        found = newest_last_checkpoint(_run_root(init_args))
        if found is not None:
            cfg.ckpt_path = str(found)


def pin_resumed_version(fit_cfg: Any) -> Optional[Path]:
    """Point ``ckpt_path`` ``last`` at a real file and pin the logger's version to the checkpoint's folder.

    ``fit_cfg`` is the parsed ``fit`` namespace (``trainer``, ``ckpt_path``); edited in place. Returns the
    checkpoint resumed from, or ``None`` when nothing is resumed or the logger layout is not versioned.
    """
    ckpt_path = _get(fit_cfg, "ckpt_path")
    init_args = _logger_init_args(_get(fit_cfg, "trainer"))
    if not ckpt_path or init_args is None or _get(init_args, "version") is not None:
        return None
    run_root = _run_root(init_args)
    if ckpt_path == "last":
        found = newest_last_checkpoint(run_root)
        if found is None:
            rank_zero_warn(f"--ckpt_path last: no version_*/checkpoints/last*.ckpt under {run_root.resolve()}; "
                           "training starts from scratch")
            return None
        fit_cfg.ckpt_path = str(found)
        ckpt_path = found
    version = version_of(Path(ckpt_path), run_root)
    if version is None:
        return None
    init_args.version = version
    rank_zero_info(f"Resuming from {ckpt_path}; logging continues in {run_root / f'version_{version}'}")
    return Path(ckpt_path)


def purge_tensorboard_after(logger: Any, step: int) -> None:
    """Make a TensorBoard logger's writer hide earlier events at steps >= ``step`` (``SummaryWriter(purge_step)``)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    # The writer is created lazily from `_kwargs`; nothing has been written yet before `fit` starts.
    if isinstance(logger, TensorBoardLogger) and getattr(logger, "_experiment", None) is None:
        logger._kwargs["purge_step"] = int(step)
        logger._default_hp_metric = False  # its placeholder is logged at step 0, below the purge: not twice


def remove_failed_empty_run(log_dir: Optional[str], existed_before: bool) -> Optional[Path]:
    """Delete ``log_dir`` if this run created it and it holds no checkpoint; returns the removed path."""
    if not log_dir or existed_before:
        return None
    folder = Path(log_dir)
    if not folder.is_dir() or any(folder.rglob("*.ckpt")):
        return None
    shutil.rmtree(folder, ignore_errors=True)
    rank_zero_info(f"The run failed before its first step: removed its empty run folder {folder}")
    return folder
