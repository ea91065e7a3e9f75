"""``compare --launcher slurm``: the grid as one SLURM job array, and the state of its tasks.

Files under ``OUT/slurm/``::

    submit_<k>.sbatch   the batch script of the k-th submission, exactly as given to ``sbatch``
    submit_<k>.json     the compare command line, working folder and run folders of that submission
    submissions.json    [{submission, job_id, runs, submitted}], one entry per ``sbatch``
    logs/<job>_<i>.out  each array task's log (appended to when SLURM requeues the task)

Array task i runs ``python -m crrelu_lightning.compare.slurm_task OUT RUN k``: the same per-run step as a
local sweep (``runner.run_one``: the ordinary ``crrelu-lightning fit`` command, resumed from the run's
resume checkpoint when one exists, then ``done.json``). Task states come from ``scontrol`` (jobs SLURM
still remembers) and ``sacct`` (where accounting is enabled).
"""
from __future__ import annotations

import datetime
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from crrelu_lightning.compare.commands import RunSpec, Settings

LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
        "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
LOG_TAIL = 8


@dataclass
class SlurmOptions:
    """The ``--slurm.*`` flags; see docs/compare.md ("On a cluster")."""

    partition: Optional[str] = None
    gpus_per_run: int = 0
    time: Optional[str] = None
    extra: List[str] = field(default_factory=list)
    cpus_per_run: int = 1
    max_running: Optional[int] = None


@dataclass
class TaskState:
    job_id: str
    index: int
    state: str
    reason: str = ""
    exit_code: str = ""
    restarts: int = 0
    log: Optional[Path] = None

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def name(self) -> str:
        return f"{self.job_id}_{self.index}"


def slurm_dir(out: Path) -> Path:
    return Path(out) / "slurm"


def submissions(out: Path) -> List[Dict]:
    path = slurm_dir(out) / "submissions.json"
    return json.loads(path.read_text()) if path.is_file() else []


def relative(spec: RunSpec, out: Path) -> str:
    return spec.run_dir.relative_to(out).as_posix()


def batch_script(settings: Settings, opts: SlurmOptions, runs: List[RunSpec], submission: int, cwd: Path) -> str:
    """The ``sbatch`` script for ``runs``: array index i -> run folder ``runs[i]``."""
    out = settings.out
    tasks = max(1, opts.gpus_per_run)
    head = [f"--job-name=compare-{out.name}",
            f"--array=0-{len(runs) - 1}" + (f"%{opts.max_running}" if opts.max_running else ""),
            f"--output={slurm_dir(out) / 'logs' / '%A_%a.out'}",
            "--open-mode=append",  # a requeued task appends its next attempt to the same log
            "--requeue",           # preempted or failed nodes: SLURM restarts the task, which resumes the run
            "--nodes=1", f"--ntasks-per-node={tasks}", f"--cpus-per-task={opts.cpus_per_run}"]
    if opts.gpus_per_run:
        head.append(f"--gres=gpu:{opts.gpus_per_run}")
    if opts.partition:
        head.append(f"--partition={opts.partition}")
    if opts.time:
        head.append(f"--time={opts.time}")
    head += opts.extra
    worker = [settings.python, "-m", "crrelu_lightning.compare.slurm_task", str(out)]
    lines = ["#!/bin/bash", *(f"#SBATCH {h}" for h in head), "",
             "# One array task = one run of the grid (array index -> run folder below). The task runs the",
             "# ordinary `crrelu-lightning fit` command a local sweep runs (saved as fit.cmd in the run folder),",
             "# from the run's resume checkpoint when it has one, then writes done.json. See docs/compare.md.",
             "set -euo pipefail",
             f"cd {shlex.quote(str(cwd))}  # where compare was run: configs may use relative data paths",
             "RUNS=("]
    lines += [f"  {shlex.quote(relative(s, out))}  # {i}: {s.label} seed {s.seed}" for i, s in enumerate(runs)]
    lines += [")", f'exec {shlex.join(worker)} "${{RUNS[$SLURM_ARRAY_TASK_ID]}}" {submission}', ""]
    return "\n".join(lines)


def submit(settings: Settings, opts: SlurmOptions, runs: List[RunSpec], argv: List[str], cwd: Path) -> Tuple[str, Path]:
    """Write the script and its record, ``sbatch`` it, return (job id, script path)."""
    d = slurm_dir(settings.out)
    (d / "logs").mkdir(parents=True, exist_ok=True)
    subs = submissions(settings.out)
    k = len(subs) + 1
    rels = [relative(s, settings.out) for s in runs]
    (d / f"submit_{k}.json").write_text(json.dumps({"argv": argv, "cwd": str(cwd), "runs": rels}, indent=2))
    script = d / f"submit_{k}.sbatch"
    script.write_text(batch_script(settings, opts, runs, k, cwd))
    try:
        res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ValueError("sbatch not found: run --launcher slurm on a machine that can submit SLURM jobs "
                         f"(a login node), or add --dry-run to print the script (written to {script})") from None
    if res.returncode != 0:
        raise ValueError(f"sbatch {script} failed (exit {res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    job_id = res.stdout.strip().split(";")[0]
    subs.append({"submission": k, "job_id": job_id, "runs": rels,
                 "submitted": datetime.datetime.now().isoformat(timespec="seconds")})
    tmp = d / "submissions.json.tmp"
    tmp.write_text(json.dumps(subs, indent=2))
    tmp.replace(d / "submissions.json")
    return job_id, script


def _indices(text: str) -> List[int]:
    """``"3"``, ``"2-5"``, ``"1,4-6%2"`` or ``"[1-3]"`` -> the task indices."""
    out: List[int] = []
    for part in text.strip("[]").split("%")[0].split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _scontrol(job_id: str) -> Dict[int, TaskState]:
    try:
        res = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    states: Dict[int, TaskState] = {}
    for line in res.stdout.splitlines() if res.returncode == 0 else []:
        kv = dict(re.findall(r"(\w+)=(\S*)", line))
        if kv.get("ArrayJobId") != job_id or "ArrayTaskId" not in kv:
            continue
        for i in _indices(kv["ArrayTaskId"]):
            states[i] = TaskState(job_id, i, kv.get("JobState", "UNKNOWN"), kv.get("Reason", ""),
                                  kv.get("ExitCode", ""), int(kv.get("Restarts", "0") or 0))
    return states


def _sacct(job_id: str) -> Dict[int, TaskState]:
    try:
        res = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode"],
                             capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    states: Dict[int, TaskState] = {}
    for line in res.stdout.splitlines() if res.returncode == 0 else []:
        parts = line.split("|")
        if len(parts) < 3 or "_" not in parts[0]:
            continue
        job, _, idx = parts[0].partition("_")
        if job != job_id:
            continue
        for i in _indices(idx):
            states[i] = TaskState(job_id, i, parts[1].split()[0] if parts[1] else "UNKNOWN", exit_code=parts[2])
    return states


def task_states(out: Path) -> Dict[str, TaskState]:
    """Run folder (relative to ``out``) -> the state of its latest submitted task."""
    latest: Dict[str, Tuple[str, int]] = {}
    for sub in submissions(out):
        for i, rel in enumerate(sub["runs"]):
            latest[rel] = (str(sub["job_id"]), i)
    by_job: Dict[str, Dict[int, TaskState]] = {}
    for job in {j for j, _ in latest.values()}:
        by_job[job] = _scontrol(job) or _sacct(job)
    result = {}
    for rel, (job, i) in latest.items():
        st = by_job[job].get(i) or TaskState(job, i, "UNKNOWN", "no longer known to scontrol/sacct")
        st.log = slurm_dir(out) / "logs" / f"{job}_{i}.out"
        result[rel] = st
    return result


def log_tail(path: Optional[Path], lines: int = LOG_TAIL) -> List[str]:
    if path is None or not path.is_file():
        return []
    text = path.read_text(errors="replace").splitlines()
    return [l for l in text if l.strip()][-lines:]


def attempts(run_dir: Path) -> List[Dict]:
    """The task starts recorded by ``slurm_task`` for one run (one line per start, requeues included)."""
    path = Path(run_dir) / "slurm_attempts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
