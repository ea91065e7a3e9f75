"""The image workflow through the CLI: fit writes checkpoints; validate/test/predict with --ckpt_path;
fit --ckpt_path resumes at the saved global step, also after the training process was SIGKILLed."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from crrelu_lightning.cli import cli_main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

STEPS_PER_EPOCH = 8  # 256 synthetic images / batch 32

HELPERS = '''
import json, time
from lightning.pytorch.callbacks import Callback


class StartRecorder(Callback):
    """Appends the global step at which each fit starts to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        with open(self.path, "a") as f:
            f.write(json.dumps({"start": trainer.global_step}) + "\\n")


class SlowDown(Callback):
    """Sleeps after each batch so a test can kill the process mid-training."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, *args):
        time.sleep(self.seconds)
'''


def _config(tmp_path: Path, ckpt_dir: Path, every_n_train_steps=None) -> Path:
    # Same two-callback layout as the shipped configs: best by val/acc, and last.ckpt rewritten every save.
    last_args = {"dirpath": str(ckpt_dir), "filename": "last", "save_top_k": 1, "enable_version_counter": False}
    if every_n_train_steps:
        last_args["every_n_train_steps"] = every_n_train_steps
    best_args = {"dirpath": str(ckpt_dir), "monitor": "val/acc", "mode": "max", "filename": "best-{epoch}", "save_top_k": 1}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": a} for a in (best_args, last_args)]
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 2, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "crrelu_lightning.models.vision.ImageClassifier",
            "init_args": {
                "model_name": "vit_fmnist",
                "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2},
                "activation": "crrelu",
            },
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2, "weight_decay": 0.0}},
        "lr_scheduler": {"class_path": "crrelu_lightning.models.optim.WarmupCosineLR", "init_args": {"warmup_steps": 2}},
        "data": {
            "class_path": "crrelu_lightning.data.vision.SyntheticImageDataModule",
            "init_args": {"num_train": 256, "num_test": 32, "batch_size": 32, "noise": 0.1},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    (tmp_path / "cli_helpers_vision.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _recorder(path: Path) -> str:
    return "--trainer.callbacks+=" + yaml.safe_dump(
        {"class_path": "cli_helpers_vision.StartRecorder", "init_args": {"path": str(path)}}, default_flow_style=True
    ).strip()


def _starts(path: Path):
    return [yaml.safe_load(line)["start"] for line in path.read_text().splitlines()]


def test_fit_checkpoints_then_validate_test_predict_and_resume(tmp_path, helpers, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    cfg = str(_config(tmp_path, ckpt_dir))
    starts = tmp_path / "starts.jsonl"

    fitted = cli_main(["fit", "--config", cfg, _recorder(starts)])
    last = ckpt_dir / "last.ckpt"
    best = list(ckpt_dir.glob("best-*.ckpt"))
    assert last.is_file() and len(best) == 1
    saved = torch.load(last, weights_only=True)  # loads without trusting pickled code
    assert saved["global_step"] == 2 * STEPS_PER_EPOCH

    cli = cli_main(["validate", "--config", cfg, "--ckpt_path", str(last)])
    # The trained weights were loaded: the same accuracy as the fit's final validation, well above chance (0.25).
    assert cli.trainer.callback_metrics["val/acc"] == fitted.trainer.callback_metrics["val/acc"] >= 0.5
    cli = cli_main(["test", "--config", cfg, "--ckpt_path", str(best[0])])
    assert cli.trainer.callback_metrics["test/acc"] >= 0.5  # twice chance
    cli = cli_main(["predict", "--config", cfg, "--ckpt_path", str(last)])
    probs = torch.cat(cli.trainer.predict_loop.predictions)
    assert probs.shape == (32, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(32))

    cli = cli_main(["fit", "--config", cfg, "--ckpt_path", str(last), "--trainer.max_epochs", "3", _recorder(starts)])
    assert _starts(starts) == [0, 2 * STEPS_PER_EPOCH]  # resumed at the saved step, not from scratch
    assert cli.trainer.global_step == 3 * STEPS_PER_EPOCH
    assert torch.load(last, weights_only=True)["global_step"] == 3 * STEPS_PER_EPOCH


def test_sigkill_then_resume_to_completion(tmp_path, helpers, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    cfg = str(_config(tmp_path, ckpt_dir, every_n_train_steps=2))
    slow = "--trainer.callbacks+=" + yaml.safe_dump(
        {"class_path": "cli_helpers_vision.SlowDown", "init_args": {"seconds": 0.5}}, default_flow_style=True).strip()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crrelu_lightning", "fit", "--config", cfg, "--trainer.max_epochs", "3", slow],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    last = ckpt_dir / "last.ckpt"
    try:
        deadline = time.time() + 150
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert last.exists(), "training process wrote no checkpoint"
        time.sleep(0.3)  # let the write finish; the next save is >= 1 s away (2 steps x 0.5 s)
        assert proc.poll() is None, "training finished before it could be killed; slow it down"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < saved_step < 3 * STEPS_PER_EPOCH

    starts = tmp_path / "starts.jsonl"
    cli = cli_main(["fit", "--config", cfg, "--trainer.max_epochs", "3", "--ckpt_path", str(last), _recorder(starts)])
    assert _starts(starts) == [saved_step]
    assert cli.trainer.global_step == 3 * STEPS_PER_EPOCH
    assert torch.load(last, weights_only=True)["global_step"] == 3 * STEPS_PER_EPOCH
