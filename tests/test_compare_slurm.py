"""``compare --launcher slurm`` against a real single-node SLURM (slurmctld + slurmd + munged, tests/slurm_cluster.py).

2 activations × 2 seeds of the toy module as one job array: one task is scancel'led half-way and resumed by
re-submitting, one is requeued by SLURM and resumes by itself, one fails (the toy raises for crrelu seed 1),
``--collect`` reports all three, and the collected table matches a local run of the same grid. Skipped, with the reason, where SLURM/munge are not installed or
we are not root (``.ci/run`` installs them: ``apt-get install -y slurm-wlm munge``).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crrelu_lightning.compare import checkpoints, cli, slurm

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import slurm_cluster  # noqa: E402

CONFIG = """\
model:
  class_path: compare_toy.ToyClassifier
  init_args: {activation: gelu, step_sleep: 0.4, fail_when: "crrelu:1"}
data:
  class_path: compare_toy.ToyDataModule
  init_args: {n_train: 256, batch_size: 64}
trainer:
  max_epochs: 3
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
"""
GRID = ["--config", "toy.yaml", "--activations", "gelu,crrelu", "--seeds", "0,1", "--threads-per-run", "1"]


def test_dry_run_prints_the_batch_script_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(CONFIG)
    out = tmp_path / "sweep"
    argv = GRID + ["--out", str(out), "--launcher", "slurm", "--slurm.partition", "gpu", "--slurm.gpus-per-run", "2",
                   "--slurm.time", "1-00:00:00", "--slurm.extra=--account=abc --qos=high", "--dry-run"]
    assert cli.main(argv) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --array=0-3", "#SBATCH --requeue", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --time=1-00:00:00", "#SBATCH --account=abc",
                 "#SBATCH --qos=high", f"#SBATCH --output={out}/slurm/logs/%A_%a.out", "#SBATCH --cpus-per-task=1"):
        assert line in script.splitlines(), line
    # seed-major, like the local runner; array index i -> run folder i
    assert [l.split()[0] for l in script.splitlines() if "# " in l and " seed " in l and l.startswith("  ")] == [
        "runs/gelu/seed0", "runs/crrelu/seed0", "runs/gelu/seed1", "runs/crrelu/seed1"]
    assert '"${RUNS[$SLURM_ARRAY_TASK_ID]}" 1' in script
    assert not out.exists()  # nothing written, nothing submitted
    assert cli.main(GRID + ["--launcher", "slurm", "--slurm.gpus-per-run", "-1", "--dry-run"]) == 2
    assert cli.main(["--collect", str(tmp_path / "nothing")]) == 2
    assert "has no SLURM submissions" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2)
    c.start()  # installed but not starting is a failure, not a skip: the error carries the daemons' logs
    yield c
    c.stop()


def _queue(env, job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env=env, capture_output=True,
                          text=True).stdout.strip()


def _wait(cond, seconds: float, what: str, cluster) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def _resumable(run: Path) -> bool:
    return not (run / "done.json").exists() and checkpoints.checkpoint_step(run) is not None


def _rows(path: Path):
    return {(r["activation"], int(r["seed"])): r for r in csv.DictReader(open(path))}


@pytest.mark.timeout(600)
def test_slurm_sweep_cancel_requeue_resume_collect(cluster, tmp_path, monkeypatch, capsys):
    env = cluster.env
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(CONFIG)
    out = tmp_path / "sweep"
    submit = GRID + ["--out", str(out), "--launcher", "slurm", "--slurm.partition", "debug", "--slurm.time", "10"]

    assert cli.main(submit) == 3  # submitted; nothing finished yet
    said = capsys.readouterr().out
    assert "submitted job array" in said and "4 tasks" in said
    job = slurm.submissions(out)[0]["job_id"]
    assert (out / "slurm" / "submit_1.sbatch").read_text().startswith("#!/bin/bash\n#SBATCH --job-name=compare-sweep")

    # Cancel gelu seed 0 (task 0) once it has a readable resume checkpoint; requeue gelu seed 1 (task 2) likewise.
    g0, g1 = out / "runs/gelu/seed0", out / "runs/gelu/seed1"
    _wait(lambda: _resumable(g0), 120, "gelu seed 0's first resume checkpoint", cluster)
    subprocess.run(["scancel", f"{job}_0"], env=env, check=True)
    _wait(lambda: _resumable(g1), 180, "gelu seed 1's first resume checkpoint", cluster)
    subprocess.run(["scontrol", "requeue", f"{job}_2"], env=env, check=True)
    # SLURM holds a requeued job back for a while (its BeginTime); release it now to keep the test short.
    _wait(lambda: "PENDING" in _queue(env, f"{job}_2"), 30, "the requeued task to be pending", cluster)
    subprocess.run(["scontrol", "update", f"JobId={job}_2", "StartTime=now"], env=env, check=True)
    _wait(lambda: not _queue(env, job), 240, f"job {job} to leave the queue", cluster)

    capsys.readouterr()
    assert cli.main(["--collect", str(out)]) == 1  # one run failed, one is not finished
    said = capsys.readouterr().out
    assert "2 ok, 1 failed, 1 not finished of 4 runs" in said
    failed = next(l for l in said.splitlines() if "`crrelu` seed 1" in l)
    assert failed.strip().startswith("failed:") and "SLURM FAILED" in failed and f"task {job}_3" in failed
    assert "RuntimeError: toy failure requested for crrelu:1" in said.split(failed, 1)[1]  # its log tail
    cancelled = next(l for l in said.splitlines() if "`gelu` seed 0" in l)
    assert "SLURM CANCELLED" in cancelled and f"task {job}_0" in cancelled and "resume checkpoint at step" in cancelled
    assert "CANCELLED" in said.split(cancelled, 1)[1]  # the log tail: slurmstepd's "*** JOB ... CANCELLED ***"
    assert any("finished after a requeue: `gelu` seed 1" in l and "requeued 1×" in l for l in said.splitlines())
    assert len(_rows(out / "results.csv")) == 3
    assert "## Not finished" in (out / "summary.md").read_text()
    assert len(slurm.attempts(g1)) == 2 and json.loads((g1 / "done.json").read_text())["resumed_from"]

    # Re-submitting the same command submits only the cancelled run, which resumes from its checkpoint.
    step_before = checkpoints.checkpoint_step(g0)
    assert cli.main(submit) == 1
    said = capsys.readouterr().out
    assert "(1 tasks" in said and "3 finished" in said  # the failed run is not resubmitted (no --retry-failed)
    job2 = slurm.submissions(out)[1]["job_id"]
    assert slurm.submissions(out)[1]["runs"] == ["runs/gelu/seed0"]
    _wait(lambda: not _queue(env, job2), 180, f"job {job2}", cluster)
    assert f"--ckpt_path={g0 / 'resume' / 'resume.ckpt'}" in (g0 / "fit.cmd").read_text()
    assert 0 < step_before < 12
    assert cli.main(["--collect", str(out)]) == 1
    slurm_rows = _rows(out / "results.csv")
    assert {k: r["status"] for k, r in slurm_rows.items()} == {
        ("gelu", 0): "ok", ("crrelu", 0): "ok", ("gelu", 1): "ok", ("crrelu", 1): "failed"}
    assert slurm_rows[("crrelu", 1)]["error"] == "exit code 1: RuntimeError: toy failure requested for crrelu:1"
    assert {int(r["steps"]) for r in slurm_rows.values() if r["status"] == "ok"} == {12}  # 3 epochs × 4 batches

    # The same grid run locally: same per-run fit arguments, same table for the runs that were never stopped.
    local = tmp_path / "local"
    assert cli.main(GRID + ["--out", str(local), "--parallel", "2"]) == 1
    local_rows = _rows(local / "results.csv")
    assert set(local_rows) == set(slurm_rows) and list(next(iter(local_rows.values()))) == list(
        next(iter(slurm_rows.values())))
    for label, seed in local_rows:
        a = json.loads((out / "runs" / label / f"seed{seed}" / "done.json").read_text())
        b = json.loads((local / "runs" / label / f"seed{seed}" / "done.json").read_text())
        assert json.loads(json.dumps(a["fit_args"]).replace(str(out), str(local))) == b["fit_args"]
    skip = {"wall_time_s", "test_wall_time_s"}
    for key in [("crrelu", 0), ("crrelu", 1)]:  # never interrupted: bit-identical rows (CPU, 1 thread, same seed)
        assert {k: v for k, v in slurm_rows[key].items() if k not in skip} == \
               {k: v for k, v in local_rows[key].items() if k not in skip}
    for key in [("gelu", 0), ("gelu", 1)]:  # resumed: the data order after the restart differs, the budget not
        assert abs(float(slurm_rows[key]["final"]) - float(local_rows[key]["final"])) < 0.15
