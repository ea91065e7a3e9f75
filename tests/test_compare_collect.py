"""Comparison runner pieces without subprocesses: TensorBoard reading, summaries, tables, plots, arguments."""
from __future__ import annotations

import csv
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from compare_fake import write_scalars  # noqa: E402

from crrelu_lightning.compare import checkpoints, cli, collect, commands, plots, report, runner  # noqa: E402


def f32(x: float) -> float:  # TensorBoard stores simple_value as float32
    return float(np.float32(x))


def test_read_scalars_roundtrip_and_later_write_wins(tmp_path):
    write_scalars(tmp_path, {"val_acc": [(3, 0.25), (1, 0.5)], "train_loss": [(1, 2.0), (2, 1.5)]})
    # A resumed run appends a second file that re-logs step 3: its value must replace the first one.
    write_scalars(tmp_path, {"val_acc": [(3, 0.75), (5, 0.8)]})
    got = collect.read_scalars(tmp_path)
    assert got["val_acc"] == [(1, f32(0.5)), (3, f32(0.75)), (5, f32(0.8))]
    assert got["train_loss"] == [(1, 2.0), (2, 1.5)]
    assert collect.read_scalars(tmp_path / "missing") == {}


def test_summarize_best_final_and_direction():
    scalars = {
        "val_acc": [(1, 0.2), (2, 0.9), (3, math.nan), (4, 0.7)],
        "val_loss": [(1, 3.0), (2, 1.0), (4, 2.0)],
        "train_loss": [(4, 0.5)],
        "entropy/block0": [(4, 1.0)],
        "val_entropy/block0": [(4, 1.0)],
        "val_p0/block0": [(4, 0.5)],
        "eafo/eps/block0": [(4, 0.01)],
        "eafo/dH_deps/block0": [(4, 0.3)],
        "epoch": [(4, 1.0)],
    }
    s = collect.summarize(scalars)
    assert (s["metric"], s["mode"], s["best"], s["best_step"], s["final"]) == ("val_acc", "max", 0.9, 2, 0.7)
    assert s["best_val_loss"] == 1.0 and s["final_val_loss"] == 2.0 and s["final_train_loss"] == 0.5
    assert s["steps"] == 4
    tag_keys = {k for k in s if k.startswith(("final_", "best_")) and k != "best_step"}
    assert tag_keys == {"final_val_acc", "best_val_acc", "final_val_loss", "best_val_loss", "final_train_loss"}
    named = collect.summarize(scalars, metric="val_loss")
    assert (named["mode"], named["best"], named["best_step"]) == ("min", 1.0, 2)
    assert math.isnan(collect.summarize({}, None, None)["best"])


@pytest.mark.parametrize("tags, expected", [
    (["val_acc5", "val_acc1", "val_loss"], ("val_acc1", "max")),
    (["val/acc", "val/loss", "train_acc"], ("val/acc", "max")),
    (["val_loss", "train_acc"], ("val_loss", "min")),
    (["train_loss"], None),
])
def test_primary_metric(tags, expected):
    assert collect.primary_metric(tags) == expected


def test_trace_and_eps_tags():
    assert collect.is_eps_tag("eafo/eps/blocks.0.mlp.act") and collect.is_eps_tag("act_epsilon")
    assert not collect.is_eps_tag("steps") and not collect.is_eps_tag("val_reps")
    assert collect.is_entropy_tag("entropy/block1") and collect.is_entropy_tag("val_entropy/b1", "val_")
    assert not collect.is_entropy_tag("val_entropy/b1") and not collect.is_entropy_tag("val_acc")
    for tag in ("lr-AdamW/pg1", "train/lr", "val_nonfinite/b0", "out_of_range/b0", "eafo/sigma/b0", "epoch"):
        assert collect.is_trace_tag(tag), tag
    for tag in ("val_acc", "val/acc", "train_loss", "test/top1"):
        assert not collect.is_trace_tag(tag), tag
    assert not collect.is_eps_tag("eafo/dH_deps/b0")


def test_first_nonfinite_loss_names_tag_and_step():
    msg = collect.first_nonfinite_loss({"train_loss": [(1, 1.0), (7, math.inf), (9, math.nan)],
                                        "val_acc": [(1, math.nan)]})
    assert msg == "non-finite loss: train_loss=inf at step 7"
    assert collect.first_nonfinite_loss({"train_loss": [(1, 1.0)]}) is None


def test_mean_sd_matches_numpy_and_ignores_nan():
    xs = [0.91, 0.88, 0.935, math.nan]
    m, sd, n = report.mean_sd(xs)
    ref = np.array(xs[:3])
    assert n == 3 and m == pytest.approx(ref.mean()) and sd == pytest.approx(ref.std(ddof=1))
    assert report.fmt(*report.mean_sd([])) == "—" and report.fmt(0.5, math.nan, 1) == "0.5"


def _rec(label, seed, status="ok", best=0.5, test=None):
    return {"label": label, "activation": label, "kwargs": None, "seed": seed, "status": status,
            "error": "" if status == "ok" else "exit code 1: RuntimeError: x", "wall_time_s": 2.0,
            "metrics": {"metric": "val_acc", "mode": "max", "best": best, "best_step": 3, "final": best - 0.1,
                        "steps": 3, "final_val_acc": best - 0.1},
            "test_metrics": {"test_acc": test} if test is not None else {}}


def test_csv_and_summary(tmp_path):
    recs = [_rec("gelu", 0, best=0.8, test=0.7), _rec("gelu", 1, best=0.9, test=0.8),
            _rec("crrelu", 0, best=0.85, test=0.75), _rec("crrelu", 1, status="failed", best=math.nan)]
    report.write_csv(recs, tmp_path / "results.csv")
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["activation"], r["seed"], r["status"]) for r in rows] == [
        ("gelu", "0", "ok"), ("gelu", "1", "ok"), ("crrelu", "0", "ok"), ("crrelu", "1", "failed")]
    assert float(rows[1]["best"]) == 0.9 and float(rows[0]["test_acc"]) == 0.7 and rows[3]["best"] == "nan"
    assert rows[3]["error"].startswith("exit code 1")
    text = report.write_summary(recs, tmp_path / "summary.md", {"config": "x.yaml"}, plots=[tmp_path / "p" / "v.png"])
    gelu = next(l for l in text.splitlines() if l.startswith("| gelu"))
    crrelu = next(l for l in text.splitlines() if l.startswith("| crrelu"))
    sd = np.std([0.8, 0.9], ddof=1)
    assert gelu.split(" | ")[1:4] == ["2", "0", f"0.85 ± {sd:.2g}"]
    assert crrelu.split(" | ")[1:4] == ["1", "1", "0.85"]
    assert "`crrelu` seed 1: exit code 1: RuntimeError: x" in text and "![v](p/v.png)" in text


def test_mean_band_and_plot(tmp_path):
    steps, mean, sd = plots.mean_band([[(0, 1.0), (1, 2.0)], [(0, 3.0), (1, 6.0)], [(1, 4.0)]])
    assert steps == [0, 1] and mean == [2.0, 4.0]
    assert sd == pytest.approx([np.std([1, 3], ddof=1), np.std([2, 6, 4], ddof=1)])
    data = {"gelu": [{"val_acc": [(0, 0.1), (1, 0.2)]}], "crrelu": [{"val_acc": [(0, 0.2), (1, 0.3)]}]}
    path = plots.plot_tags(data, ["val_acc", "absent"], tmp_path / "v.png", "val")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.plot_tags(data, ["absent"], tmp_path / "none.png", "x") is None


def test_run_callbacks_rewrites_checkpoint_dirs(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  callbacks:\n"
                   "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                   "      init_args: {monitor: val_acc, dirpath: shared, save_last: true}\n"
                   "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                   "      init_args: {dirpath: shared}\n"
                   "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                   "      init_args: {dirpath: elsewhere}\n"
                   "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n")
    run = tmp_path / "run"
    cbs = commands.run_callbacks(cfg, run)
    assert cbs[0]["init_args"] == {"monitor": "val_acc", "dirpath": str(run / "checkpoints"), "save_last": True}
    # checkpoints that shared a folder in the config (best + last) still share one; others get their own
    assert cbs[1]["init_args"] == {"dirpath": str(run / "checkpoints")}
    assert cbs[2]["init_args"] == {"dirpath": str(run / "checkpoints_1")}
    assert cbs[3] == {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}
    assert cbs[4] == commands.resume_callback(run) and len(cbs) == 5
    assert cbs[4]["init_args"]["dirpath"] == str(run / "resume") and cbs[4]["init_args"]["monitor"] is None
    # Lightning refuses two stateful callbacks with one state_key: the resume checkpoint must not clash
    # with an unmonitored ModelCheckpoint of the config (the configs' every-epoch last.ckpt).
    from lightning.pytorch.callbacks import ModelCheckpoint
    from crrelu_lightning.compare.resume_checkpoint import ResumeCheckpoint
    resume = ResumeCheckpoint(**cbs[4]["init_args"])
    assert resume.state_key != ModelCheckpoint(dirpath=str(run / "checkpoints"), save_top_k=1).state_key
    # trainer section in its own file, no callbacks: only the resume checkpoint
    (tmp_path / "t.yaml").write_text("max_epochs: 1\n")
    cfg.write_text("trainer: t.yaml\n")
    assert commands.run_callbacks(cfg, run) == [commands.resume_callback(run)]
    cfg.write_text("trainer: {enable_checkpointing: false}\n")
    assert commands.run_callbacks(cfg, run) is None


def test_resume_checkpoint_is_fresh_where_last_ckpt_is_not(tmp_path):
    """Lightning refreshes a monitored ``last.ckpt`` only on improvement; the runner's checkpoint is current."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    sys.path.insert(0, str(Path(__file__).parent))
    from compare_toy import ToyClassifier, ToyDataModule

    run = tmp_path / "run"
    cb = commands.resume_callback(run)["init_args"]
    trainer = pl.Trainer(max_epochs=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", monitor="val_loss", mode="max",
                                                    save_last=True), ModelCheckpoint(**cb)])
    # mode="max" on a falling loss: only the first epoch "improves", so last.ckpt stays at epoch 0
    trainer.fit(ToyClassifier(lr=0.2), ToyDataModule(n_train=128))
    assert trainer.global_step == 6 * 2
    assert checkpoints.checkpoint_step(run) == trainer.global_step
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] < trainer.global_step
    assert checkpoints.best_checkpoint(run) == Path(trainer.checkpoint_callbacks[0].best_model_path)


def test_error_message_prefers_exception_line():
    tail = ["Traceback (most recent call last):", '  File "a.py"', "ValueError: bad lr -1", "", "warning: x"]
    assert runner.error_message(tail) == "ValueError: bad lr -1"
    assert runner.error_message(["usage: x", "main.py: error: Parser key 'model.foo' not found"]).endswith(
        "error: Parser key 'model.foo' not found")
    assert runner.error_message([]) == "no output on stderr"


@pytest.mark.parametrize("argv, needle", [
    (["--activations", "gelu", "--seeds", "0,x"], "bad seed 'x'"),
    (["--activations", "gelu", "--seeds", "1,1"], "repeats a seed"),
    (["--activations", "gelu,nosuchact"], "Unknown activation 'nosuchact'"),
    (["--activations", "gelu,gelu"], "activation labels repeated: ['gelu']"),
    (["--activations", "gelu", "--activation-kwargs", "crrelu:{}"], "not in --activations"),
    (["--activations", "gelu", "--activation-kwargs", "gelu:{eps: 1}"], "is not valid JSON"),
    (["--activations", "gelu", "--activation-kwargs", "gelu:[1]"], "must be a JSON object"),
    (["--activations", "gelu", "--parallel", "0"], "--parallel must be >= 1, got 0"),
])
def test_cli_bad_input(tmp_path, capsys, argv, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {}\n")
    assert cli.main(["--config", str(cfg), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err
    if "Unknown activation" in needle:
        assert "crrelu" in err and "gelu" in err  # the registry is listed


def test_cli_unreadable_config(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer: [unclosed\n")
    assert cli.main(["--config", str(cfg), "--activations", "gelu"]) == 2
    assert f"cannot read --config {cfg}" in capsys.readouterr().err


def test_cli_missing_config_and_dry_run(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "nope.yaml"), "--activations", "gelu"]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {}\n")
    rc = cli.main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--activations", "gelu,e5=crrelu",
                   "--seeds", "3-4", "--max-steps", "7", "--activation-kwargs", 'e5:{"eps": 0.5}',
                   "--dry-run", "--", "--trainer.max_epochs=2"])
    lines = [shlex.split(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert rc == 0 and len(lines) == 4
    assert lines[0][:4] == ["crrelu-lightning", "fit", "--config", str(cfg)]
    assert "--model.activation=crrelu" in lines[1] and "--seed_everything=3" in lines[1]
    assert '--model.activation_kwargs={"eps": 0.5}' in lines[1]
    assert "--trainer.max_steps=7" in lines[3] and lines[3][-1] == "--trainer.max_epochs=2"
    callbacks = json.loads(next(a for a in lines[3] if a.startswith("--trainer.callbacks=")).split("=", 1)[1])
    assert callbacks[0]["init_args"]["dirpath"] == str(tmp_path / "o" / "runs" / "e5" / "seed4" / "resume")
    assert not (tmp_path / "o").exists()  # a dry run writes nothing
