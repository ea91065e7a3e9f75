"""One SLURM array task of ``compare --launcher slurm``: ``python -m crrelu_lightning.compare.slurm_task OUT RUN K``.

Re-reads the compare command line of submission K (``OUT/slurm/submit_K.json``), finds the run folder RUN
in its plan and runs it exactly as a local sweep does (``runner.run_one``). A task stopped by SLURM
(scancel, preemption, time limit) leaves no ``done.json``, so the next submission resumes the run from
its resume checkpoint instead of recording it as failed. Runs of several GPUs start ``fit`` under
``srun``, one rank per task, so Lightning's SLURM environment sets the ranks.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import List, Optional

EXIT_STOPPED = 143  # what a shell reports for SIGTERM: SLURM marks the task CANCELLED/PREEMPTED anyway


def _record_attempt(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {"job": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
             "task": os.environ.get("SLURM_ARRAY_TASK_ID"), "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
             "host": socket.gethostname(), "started": datetime.datetime.now().isoformat(timespec="seconds")}
    with open(run_dir / "slurm_attempts.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    from crrelu_lightning.compare import cli, runner

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3:
        print("usage: python -m crrelu_lightning.compare.slurm_task OUT RUN_FOLDER SUBMISSION", file=sys.stderr)
        return 2
    out, rel, k = Path(argv[0]), argv[1], argv[2]
    stored = json.loads((out / "slurm" / f"submit_{k}.json").read_text())
    plan = cli.prepare(stored["argv"])
    settings, specs, opts = plan.settings, plan.specs, plan.slurm
    spec = next((s for s in specs if s.run_dir == settings.out / rel), None)
    if spec is None:
        print(f"slurm_task: {rel} is not a run of {out / 'slurm' / f'submit_{k}.json'}", file=sys.stderr)
        return 2
    settings.parallel = 1
    settings.threads_per_run = int(os.environ.get("SLURM_CPUS_PER_TASK") or opts.cpus_per_run)
    settings.gpus = []  # SLURM already restricts CUDA_VISIBLE_DEVICES to the task's GPUs
    if opts.gpus_per_run > 1:
        settings.launch_prefix = ["srun", "--kill-on-bad-exit=1", f"--ntasks={opts.gpus_per_run}"]
    _record_attempt(spec.run_dir)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    procs = runner._Processes()
    print(f"slurm_task: {spec.label} seed {spec.seed} -> {spec.run_dir}", flush=True)
    try:
        rec = runner.run_one(settings, spec, 0, procs)
    except KeyboardInterrupt:
        procs.stop_all()
        print(f"slurm_task: stopped by a signal; no done.json in {spec.run_dir}: a requeued task or the next "
              "submission resumes it from its resume checkpoint", flush=True)
        return EXIT_STOPPED
    print(f"slurm_task: {runner._describe(rec)}", flush=True)
    for line in rec.get("stderr_tail") or []:
        print(f"  | {line}", flush=True)
    return 0 if rec["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
