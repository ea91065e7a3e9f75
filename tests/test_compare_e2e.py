"""End to end: ``crrelu-lightning compare`` runs real Lightning fit/test subprocesses on a toy config.

2 activations × 2 seeds, 2 at a time, with ``--test``; the toy module raises for crrelu seed 1. Metrics in
results.csv are checked against a second reader of the event files and against evaluating the tested
checkpoint in this process.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crrelu_lightning.compare import cli

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from compare_toy import ToyClassifier, ToyDataModule  # noqa: E402

CONFIG = """\
model:
  class_path: compare_toy.ToyClassifier
  init_args: {activation: gelu, fail_when: "crrelu:1"}
data:
  class_path: compare_toy.ToyDataModule
  init_args: {n_train: 256, batch_size: 64}
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val_acc, mode: max, dirpath: shared_ckpts}
"""


def raw_scalars(logdir: Path, tag: str):
    """Second reader: iterate the raw event protos (no EventAccumulator)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = {}
    for f in sorted(logdir.glob("events.out.tfevents*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == tag:
                    value = v.simple_value if v.HasField("simple_value") else float(
                        np.frombuffer(v.tensor.tensor_content, np.float32)[0] if v.tensor.tensor_content
                        else v.tensor.float_val[0])
                    out[ev.step] = value
    return out


@pytest.mark.timeout(240)
def test_compare_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(CONFIG)
    out = tmp_path / "out"
    argv = ["--config", "toy.yaml", "--activations", "gelu,crrelu", "--seeds", "0,1", "--parallel", "2",
            "--test", "--out", str(out)]
    assert cli.main(argv) == 1  # one run fails by design

    rows = {(r["activation"], int(r["seed"])): r for r in csv.DictReader(open(out / "results.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {
        ("gelu", 0): "ok", ("crrelu", 0): "ok", ("gelu", 1): "ok", ("crrelu", 1): "failed"}
    assert rows[("crrelu", 1)]["error"] == "exit code 1: RuntimeError: toy failure requested for crrelu:1"
    assert not (tmp_path / "shared_ckpts").exists()  # every run checkpointed into its own folder

    dm = ToyDataModule(n_train=256, batch_size=64)
    dm.setup("test")
    x, y = dm.splits["test"].tensors
    for (name, seed), r in rows.items():
        if r["status"] != "ok":
            continue
        run = out / "runs" / name / f"seed{seed}"
        assert int(r["steps"]) == 2 * (256 // 64)  # 2 epochs × 4 batches
        val = raw_scalars(run / "tb" / "fit", "val_acc")
        assert float(r["best"]) == pytest.approx(max(val.values()))
        assert float(r["final"]) == pytest.approx(val[max(val)])
        rec = json.loads((run / "done.json").read_text())
        model = ToyClassifier.load_from_checkpoint(rec["test_checkpoint"], map_location="cpu")
        assert model.hparams.activation == name  # the override reached the model
        with torch.no_grad():
            acc = (model(x).argmax(-1) == y).float().mean().item()
        assert float(r["test_acc"]) == pytest.approx(acc, abs=1e-6)
    # different seeds -> different initial weights -> different curves
    assert rows[("gelu", 0)]["final_train_loss"] != rows[("gelu", 1)]["final_train_loss"]

    summary = (out / "summary.md").read_text()
    assert "| gelu | 2 | 0 |" in summary and "| crrelu | 1 | 1 |" in summary
    assert {p.name for p in (out / "plots").iterdir()} == {"validation.png", "train.png", "entropy.png", "eps.png"}

    # Resume: a second invocation runs nothing and leaves the runs untouched.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*.cmd")}
    capsys.readouterr()
    assert cli.main(argv) == 1
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*.cmd")} == stamps
