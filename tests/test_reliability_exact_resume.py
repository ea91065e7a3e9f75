"""kill -9 mid-epoch, then ``fit --ckpt_path last``: the resumed run equals the uninterrupted one bit for bit.

Compared after the end of both runs: every parameter (ε included), the optimizer state, the callbacks' state
(entropy monitor counts, EAFO sums), and every scalar in TensorBoard -- the resumed run's version folder,
read as TensorBoard reads it (the killed run's events after the checkpoint hidden by ``purge_step``), holds
exactly the uninterrupted run's curves: same steps, same values, nothing twice. The run uses the paths that
draw random numbers: shuffling, random crop/flip augmentation, dropout, and the monitors' subsampling.
"""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from crrelu_lightning.checkpointing import load_checkpoint_file
from crrelu_lightning.cli import cli_main
from reliability_configs import STEPS_PER_EPOCH, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

EVERY = 3  # checkpoint every 3 optimizer steps (mid-epoch: an epoch has 8)
MAX_EPOCHS = 2
MONITORS = [
    {"class_path": "crrelu_lightning.callbacks.entropy_monitor.ActivationEntropyMonitor",
     "init_args": {"every_n_steps": 2, "max_samples_per_call": 512}},
    {"class_path": "crrelu_lightning.callbacks.eafo.EAFOCallback",
     "init_args": {"mode": "step", "lr": 0.05, "every_n_steps": 2, "warmup_steps": 1, "max_samples_per_call": 512}},
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
]


def _config(tmp_path: Path) -> Path:
    cfg = tiny_config(tmp_path, every_n_train_steps=EVERY, extra_callbacks=MONITORS, max_epochs=MAX_EPOCHS)
    raw = yaml.safe_load(cfg.read_text())
    raw["model"]["init_args"]["model_kwargs"].update({"drop_rate": 0.1, "drop_path_rate": 0.1})
    raw["data"]["init_args"].update({"augment": "basic", "crop_padding": 2})
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _scalars(version_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})  # purge_orphaned_data on by default
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_tree_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_tree_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_kill_mid_epoch_then_resume_last_is_bit_identical(tmp_path, monkeypatch):
    total = MAX_EPOCHS * STEPS_PER_EPOCH
    # A random step that is not a save step and not right after one (see docs/reliability.md on the flush).
    kill_at = random.Random(2026).choice([s for s in range(EVERY + 2, total - 1) if s % EVERY not in (0, 1)])
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_dir.mkdir(), run_dir.mkdir()

    monkeypatch.chdir(ref_dir)
    cli_main(["fit", "--config", str(_config(ref_dir))])

    cfg = _config(run_dir)
    kill = "--trainer.callbacks+=" + yaml.safe_dump(
        {"class_path": "reliability_configs.KillAtStep", "init_args": {"step": kill_at}}, default_flow_style=True).strip()
    tests_dir = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "crrelu_lightning", "fit", "--config", str(cfg), kill],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    version = run_dir / "logs" / "tiny" / "version_0"
    saved = load_checkpoint_file(version / "checkpoints" / "last.ckpt")
    resume_step = saved["global_step"]
    assert resume_step == kill_at - kill_at % EVERY and resume_step % STEPS_PER_EPOCH != 0  # mid-epoch

    monkeypatch.chdir(run_dir)
    cli = cli_main(["fit", "--config", str(cfg), "--ckpt_path", "last"])
    assert cli.trainer.global_step == total
    assert sorted(p.name for p in (run_dir / "logs" / "tiny").iterdir()) == ["version_0"]  # same folder

    ref_scalars, got_scalars = _scalars(ref_dir / "logs" / "tiny" / "version_0"), _scalars(version)
    assert ref_scalars.keys() == got_scalars.keys() and any(t.startswith("eafo/") for t in ref_scalars)
    for tag in ref_scalars:
        assert got_scalars[tag] == ref_scalars[tag], tag  # same steps (none twice, none lost), same float32 values
    ref = load_checkpoint_file(ref_dir / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    got = load_checkpoint_file(version / "checkpoints" / "last.ckpt")
    assert got["global_step"] == ref["global_step"] == total
    eps = [k for k in ref["state_dict"] if k.endswith("eps")]
    assert eps and any(not torch.equal(ref["state_dict"][k], saved["state_dict"][k]) for k in eps)  # ε moved after the resume
    _assert_tree_equal(got["state_dict"], ref["state_dict"], "state_dict")
    _assert_tree_equal(got["optimizer_states"], ref["optimizer_states"], "optimizer")
    monitor_keys = [k for k in ref["callbacks"] if k.startswith(("ActivationEntropyMonitor", "EAFOCallback"))]
    assert len(monitor_keys) == 2
    for k in monitor_keys:
        _assert_tree_equal(got["callbacks"][k], ref["callbacks"][k], k)

