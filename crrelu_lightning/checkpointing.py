"""Checkpoints that survive a kill at any moment, and errors that say which file is damaged.

``AtomicCheckpointIO`` writes every checkpoint to a temporary file *in the destination folder*, flushes and
fsyncs it, then ``os.replace``s it over the target and fsyncs the folder. ``os.replace`` within one folder is
an atomic rename on POSIX filesystems, so a reader (or the next run) sees either the previous complete file
or the new complete file, never a fragment, whatever ``TMPDIR`` points at. (Lightning's default goes through
an fsspec transaction that stages the file in ``TMPDIR`` and *moves* it: across filesystems that is a copy
that a kill can cut short.)

``AtomicModelCheckpoint`` is ``ModelCheckpoint`` that installs ``AtomicCheckpointIO`` on the trainer when it
still has Lightning's default IO, removes temporary files that killed runs left in its folder, and, when it
saves every N steps, also saves at the end of training so the final state is never older than the last
multiple of N. The CLI installs the IO for every run (``crrelu_lightning.cli``); configs use this callback.

``load_checkpoint_file`` is ``torch.load(weights_only=True)`` with an error that names the file, says that it
is damaged and lists the other checkpoints beside it (docs/reliability.md).
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info

TEMP_PREFIX = ".ckpt-partial."  # never contains "last": Lightning's `ckpt_path="last"` globs for that word
_PathLike = Union[str, os.PathLike]


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (empty, truncated or overwritten)."""


# --- writing --------------------------------------------------------------------------------------------
def _temp_name(target: Path) -> Path:
    # host and pid let the cleanup tell a live writer's file from a killed one's.
    return target.parent / f"{TEMP_PREFIX}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: _PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` holds either its old complete content or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # an exception (not a kill) leaves nothing behind
        raise
    _fsync_dir(target.parent)  # make the rename itself durable across a power cut


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: _PathLike) -> List[Path]:
    """Delete temporary checkpoint files left in ``folder`` by killed writers; returns what was removed.

    A file written by a process still alive on this host is kept (it may be mid-save); files from other
    hosts are removed, since a run folder has one writer and a preempted job restarts elsewhere.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, host = [], socket.gethostname()
    for p in folder.glob(TEMP_PREFIX + "*"):
        parts = p.name[len(TEMP_PREFIX):].rsplit(".", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and _pid_alive(int(parts[1])):
            if int(parts[1]) != os.getpid():
                continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


# --- reading --------------------------------------------------------------------------------------------
def _other_checkpoints(path: Path) -> List[Path]:
    try:
        return sorted((p for p in path.parent.glob("*.ckpt") if p.name != path.name), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []


def damaged_checkpoint_error(path: _PathLike, cause: Optional[BaseException] = None) -> DamagedCheckpointError:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    what = "is empty (0 bytes)" if size == 0 else f"is damaged (truncated or not a checkpoint, {size} bytes)"
    others = _other_checkpoints(path)
    if others:
        hint = "Other checkpoints in that folder (newest last), resume from one with --ckpt_path:\n" + "\n".join(
            f"  {p}" for p in others)
    else:
        hint = f"No other checkpoint in {path.parent}; start the run again without --ckpt_path."
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return DamagedCheckpointError(f"Checkpoint {path} {what} and cannot be loaded{detail}.\n{hint}")


def load_checkpoint_file(path: _PathLike, map_location: Any = "cpu", **kwargs: Any) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)``; a damaged file raises ``DamagedCheckpointError`` naming it.

    A file that loads but holds pickled code (``weights_only`` refuses it) is *not* called damaged: that
    error is re-raised as torch words it, since it names the offending global.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise damaged_checkpoint_error(path)
    kwargs["weights_only"] = True
    try:
        return torch.load(path, map_location=map_location, **kwargs)
    except Exception as e:  # torch raises EOFError, RuntimeError, UnpicklingError, ... for a damaged file
        if _is_weights_only_refusal(e):
            raise
        raise damaged_checkpoint_error(path, e) from e


def _is_weights_only_refusal(e: BaseException) -> bool:
    # torch's refusal names the global it would not import ("Unsupported global: GLOBAL os.system ...").
    return "Unsupported global" in str(e)


# --- Lightning glue -------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local saves and named errors for damaged files."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set = set()

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: _PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if "://" in str(path):  # remote (s3://, gs://): let fsspec do it, renames do not exist there
            return super().save_checkpoint(checkpoint, path)
        folder = Path(path).parent
        if folder not in self._cleaned:  # also covers plain ModelCheckpoint users of the CLI
            remove_stale_temp_files(folder)
            self._cleaned.add(folder)
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: _PathLike, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return load_checkpoint_file(path, map_location=map_location)


def install_atomic_io(trainer) -> None:
    """Give ``trainer`` an ``AtomicCheckpointIO`` unless it already has a non-default IO plugin."""
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def _restore_loader_position(trainer) -> None:
    """Hand the checkpoint's training-loader state to the loader if Lightning did not.

    Lightning restores loader state when it builds the training loader *after* the checkpoint is read. A model
    that asks for ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (ours do, for the LR
    schedule) makes Lightning build the loader earlier, and the saved position is then never applied: the
    resumed epoch would start again from its first batch. Apply it here and restart the loader's iterator.
    """
    fit_loop = trainer.fit_loop
    states = getattr(fit_loop, "_combined_loader_states_to_load", None)
    if states and fit_loop._combined_loader is not None and fit_loop._data_fetcher is not None:
        fit_loop._combined_loader._load_state_dicts(states)
        fit_loop._combined_loader_states_to_load = []
        iter(fit_loop._data_fetcher)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` + atomic writes + stale temp cleanup + a final save for step-based schedules, and
    the saved position of a stateful training loader applied on resume (see ``_restore_loader_position``).

    Args are ``ModelCheckpoint``'s. With ``every_n_train_steps`` the final state is also saved when training
    ends between two multiples (Lightning does not allow ``every_n_epochs`` beside it), so ``last.ckpt``
    always holds the finished run.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        install_atomic_io(trainer)
        if trainer.is_global_zero and self.dirpath:
            removed = remove_stale_temp_files(self.dirpath)
            if removed:
                rank_zero_info(f"Removed {len(removed)} partial checkpoint file(s) left by a killed run in {self.dirpath}")

    def on_train_start(self, trainer, pl_module) -> None:
        _restore_loader_position(trainer)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._flush_logs_at_next_step = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The scalars of the step just checkpointed are logged after the save; flush them now, so a kill
        # later on loses only what the checkpoint does not hold (the resumed run logs it again).
        if getattr(self, "_flush_logs_at_next_step", False):
            self._flush_logs_at_next_step = False
            for logger in trainer.loggers:
                logger.save()

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if (self._every_n_train_steps and self.monitor is None and trainer.global_step > self._last_global_step_saved
                and not trainer.sanity_checking and not self._should_skip_saving_checkpoint(trainer)):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
