"""Reading a run's checkpoints: where to resume from, how many steps were taken, which one to test."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional


def _checkpoint(path: Path) -> Dict[str, Any]:
    """A Lightning checkpoint's top-level dict ({} if unreadable); mmap so big weights aren't read."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # custom objects inside, or an old format: callers fall back to file names
        return {}


def resume_path(run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume an unfinished run from: the runner's resume checkpoint, else a ``last.ckpt``."""
    for path in (run_dir / "resume" / "resume.ckpt", run_dir / "checkpoints" / "last.ckpt"):
        if path.exists():
            return path
    return None


def checkpoint_step(run_dir: Path) -> Optional[int]:
    """``global_step`` (optimizer steps taken) stored in the resume checkpoint, or ``None``."""
    path = resume_path(run_dir)
    step = _checkpoint(path).get("global_step") if path else None
    return int(step) if step is not None else None


def best_checkpoint(run_dir: Path) -> Optional[Path]:
    """Checkpoint to test: the ``best_model_path`` of the config's monitored ModelCheckpoint (read from the
    resume checkpoint's callback state), else the newest ``checkpoints/*.ckpt`` that is not ``last``, else
    the resume checkpoint (the final weights); ``None`` when there is none."""
    resume = resume_path(run_dir)
    if resume is not None:
        for key, cb in (_checkpoint(resume).get("callbacks") or {}).items():
            if (key.startswith("ModelCheckpoint") and isinstance(cb, dict) and cb.get("monitor")
                    and cb.get("best_model_path") and Path(cb["best_model_path"]).exists()):
                return Path(cb["best_model_path"])
    others = sorted((p for p in (run_dir / "checkpoints").glob("*.ckpt") if not p.name.startswith("last")),
                    key=lambda p: p.stat().st_mtime)
    if others:
        return others[-1]
    return resume
