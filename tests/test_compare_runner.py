"""Runner scheduling, resume, failures, timeouts and Ctrl-C, against a fake ``crrelu_lightning`` (fast).

``compare_fake.py`` writes closed-form metrics of (activation, seed); see its docstring.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crrelu_lightning.compare import cli

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from compare_fake import base  # noqa: E402


def f32(x: float) -> float:
    return float(np.float32(x))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    shim = tmp_path / "fakepython"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TESTS / "compare_fake.py"}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer: {max_epochs: 3}\n")
    common = ["--config", str(cfg), "--out", str(tmp_path / "out"), "--python", str(shim), "--no-check-activations"]
    return common, log, tmp_path / "out"


def starts(log: Path):
    if not log.exists():
        return []
    return [l.split() for l in log.read_text().splitlines() if l.startswith("start")]


def max_concurrency(log: Path) -> int:
    events = []
    for kind, t, *_ in (l.split() for l in log.read_text().splitlines()):
        events.append((float(t), 1 if kind == "start" else -1))
    live = peak = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        live += d
        peak = max(peak, live)
    return peak


def read_rows(out: Path):
    return {(r["activation"], int(r["seed"])): r for r in csv.DictReader(open(out / "results.csv"))}


def test_parallel_failures_resume_and_retry(fake, capsys):
    common, log, out = fake
    argv = common + ["--activations", "good_a,good_bb,nan,crash", "--seeds", "0,1", "--parallel", "2",
                     "--threads-per-run", "3", "--gpus", "5,6", "--test"]
    assert cli.main(argv) == 1  # some runs failed
    rows = read_rows(out)
    assert len(rows) == 8
    for name in ("good_a", "good_bb"):
        for seed in (0, 1):
            r, b = rows[(name, seed)], base(name, seed)
            assert r["status"] == "ok" and r["metric"] == "val_acc"
            assert (float(r["best"]), int(r["best_step"]), float(r["final"])) == (f32(b + 0.3), 20, f32(b + 0.2))
            assert float(r["test_acc"]) == f32(b + 0.5) and int(r["steps"]) == 30
    for seed in (0, 1):
        assert rows[("nan", seed)]["status"] == "failed"
        assert rows[("nan", seed)]["error"] == "non-finite loss: train_loss=nan at step 20"
        assert rows[("crash", seed)]["status"] == "failed"
        assert rows[("crash", seed)]["error"] == f"exit code 3: ValueError: boom {seed}"
    # K=2 runs at a time, and they did overlap; seed-major order; threads and GPU slots per run
    assert max_concurrency(log) == 2
    assert [s[3] for s in starts(log)[:4]] == ["0"] * 4
    envs = [json.loads(p.read_text()) for p in out.glob("runs/*/seed*/env_fit.json")]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"3"} and {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {"5", "6"}
    summary = (out / "summary.md").read_text()
    assert "| good_a | 2 | 0 |" in summary and "| nan | 0 | 2 |" in summary and "| crash | 0 | 2 |" in summary
    assert "`crash` seed 1: exit code 3: ValueError: boom 1" in summary
    assert {p.name for p in (out / "plots").iterdir()} == {"validation.png", "train.png", "entropy.png"}

    # Second invocation: everything is finished (failed runs included), nothing runs.
    n = len(starts(log))
    capsys.readouterr()
    assert cli.main(argv) == 1
    assert len(starts(log)) == n and "8 already finished, 0 to run" in capsys.readouterr().out

    # An unfinished run (no done.json) with a resume checkpoint is resumed from it; only that run runs.
    run = out / "runs" / "good_a" / "seed1"
    (run / "done.json").unlink()
    (run / "resume").mkdir()
    (run / "resume" / "resume.ckpt").write_bytes(b"interrupted")
    assert cli.main(argv) == 1
    assert [s[2:4] for s in starts(log)[n:]] == [["good_a", "1"], ["good_a", "1"]]  # fit + test
    assert f"--ckpt_path={run / 'resume' / 'resume.ckpt'}" in (run / "fit.cmd").read_text()
    assert read_rows(out)[("good_a", 1)]["status"] == "ok"

    # --retry-failed reruns exactly the failed ones.
    n = len(starts(log))
    assert cli.main(argv + ["--retry-failed"]) == 1
    assert sorted(tuple(s[2:4]) for s in starts(log)[n:]) == [("crash", "0"), ("crash", "1"), ("nan", "0"), ("nan", "1")]

    # A different budget would mix incomparable runs into one table: refused.
    assert cli.main(argv + ["--max-steps", "5"]) == 2
    assert "was finished with different arguments" in capsys.readouterr().err


def test_test_added_later_and_changed_config(fake, capsys):
    common, log, out = fake
    argv = common + ["--activations", "good_a", "--seeds", "2"]
    assert cli.main(argv) == 0
    assert "test_acc" not in read_rows(out)[("good_a", 2)]
    assert cli.main(argv + ["--test"]) == 0  # only the test phase runs now
    assert [s[2:4] for s in starts(log)] == [["good_a", "2"], ["good_a", "2"]]
    run = out / "runs" / "good_a" / "seed2"
    assert "--ckpt_path=" + str(run / "checkpoints" / "epoch=2-step=30.ckpt") in (run / "test.cmd").read_text()
    assert float(read_rows(out)[("good_a", 2)]["test_acc"]) == f32(base("good_a", 2) + 0.5)
    before = (out / "results.csv").read_text()
    (out / "results.csv").unlink()
    assert cli.main(argv + ["--report-only", "--seeds", "2,3"]) == 0  # seed 3 never ran: reported as missing
    assert (out / "results.csv").read_text() == before and len(starts(log)) == 2
    assert cli.main(argv + ["--report-only", "--metric", "val_acc", "--mode", "min"]) == 0
    row = read_rows(out)[("good_a", 2)]
    assert (float(row["best"]), int(row["best_step"])) == (f32(base("good_a", 2) + 0.1), 10)
    cfg = Path(common[common.index("--config") + 1])
    cfg.write_text("trainer: {max_epochs: 4}\n")
    capsys.readouterr()
    assert cli.main(argv) == 2 and "different version" in capsys.readouterr().err
    assert cli.main(argv + ["--report-only"]) == 0  # rebuilding the table only warns
    assert "warning:" in capsys.readouterr().err and len(starts(log)) == 2


def alive(pid: int) -> bool:
    """Running (zombies count as dead: an orphan's reaper may be slow in a container)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_dead(pids, seconds=10.0) -> bool:
    deadline = time.time() + seconds
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def test_timeout_is_a_failure_and_kills_the_process_group(fake):
    common, log, out = fake
    t0 = time.perf_counter()
    assert cli.main(common + ["--activations", "slow", "--seeds", "0", "--run-timeout", "3"]) == 1
    assert time.perf_counter() - t0 < 30
    assert read_rows(out)[("slow", 0)]["error"] == "timed out after 3 s"
    grandchild = out / "runs" / "slow" / "seed0" / "grandchild_fit.pid"
    assert grandchild.exists() and wait_dead([int(grandchild.read_text())])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_children_and_leaves_runs_unfinished(fake, sig):
    common, log, out = fake
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "crrelu_lightning", "compare", *common,
                             "--activations", "slow", "--seeds", "0,1", "--parallel", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(starts(log)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    pid_files = [out / "runs" / "slow" / f"seed{i}" / "grandchild_fit.pid" for i in (0, 1)]
    while not all(p.exists() for p in pid_files) and time.time() < deadline:
        time.sleep(0.1)
    assert len(starts(log)) == 2, proc.communicate(timeout=5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    assert not list(out.glob("runs/*/*/done.json"))  # interrupted runs are not "finished"
    assert wait_dead([int(s[4]) for s in starts(log)] + [int(p.read_text()) for p in pid_files])
