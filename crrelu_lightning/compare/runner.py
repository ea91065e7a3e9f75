"""Run every activation × seed as an ordinary ``crrelu-lightning fit`` subprocess, resumably, K at a time.

Layout under ``OUT``::

    runs/<label>/seed<S>/   fit.cmd, fit.stdout.log, fit.stderr.log, tb/fit/ (TensorBoard), checkpoints/,
                            resume/resume.ckpt, [test.cmd, test.*.log, tb/test/], done.json (when finished)

A run with ``done.json`` is finished and skipped next time (failed ones too, unless ``retry_failed``);
a run without it is (re)started, from ``resume/resume.ckpt`` when one exists. Command lines come from
``commands``, checkpoint lookups from ``checkpoints``.
"""
from __future__ import annotations

import json
import math
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from crrelu_lightning.compare import collect
from crrelu_lightning.compare.checkpoints import best_checkpoint, checkpoint_step, resume_path
from crrelu_lightning.compare.commands import RunSpec, Settings, cli_args, command

DONE = "done.json"
TAIL_LINES = 20

_ERROR_LINE = re.compile(r"^\s*([\w.]*(Error|Exception|Interrupt|Exit)\b.*|.*\berror:.*)$")


def error_message(tail: List[str]) -> str:
    """The most telling line of a failed run's stderr: the last exception / ``error:`` line."""
    for line in reversed(tail):
        if _ERROR_LINE.match(line):
            return line.strip()
    lines = [l.strip() for l in tail if l.strip()]
    return lines[-1] if lines else "no output on stderr"


class _Processes:
    """Live child processes, so Ctrl-C in the runner can stop them all."""

    def __init__(self) -> None:
        self.lock, self.live, self.stopping = threading.Lock(), set(), False

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.live)
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the run's whole process group (dataloader workers, DDP ranks), not just its leader."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _execute(cmd: List[str], run_dir: Path, name: str, env: Dict[str, str], timeout: Optional[float],
             procs: _Processes) -> Tuple[Optional[int], float, List[str]]:
    """Run ``cmd`` with stdout/stderr into ``<name>.stdout.log``/``<name>.stderr.log``.

    Returns (exit code or ``None`` on timeout, wall seconds, last lines of stderr)."""
    (run_dir / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
    err_path = run_dir / f"{name}.stderr.log"
    t0 = time.perf_counter()
    with open(run_dir / f"{name}.stdout.log", "w") as out, open(err_path, "w") as err:
        with procs.lock:
            if procs.stopping:
                raise KeyboardInterrupt
            # Own session: a terminal Ctrl-C reaches only the runner, which marks the stop *before*
            # terminating children, so an interrupted run is never recorded as a failure.
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            procs.live.add(proc)
        try:
            rc: Optional[int] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            rc = None
        finally:
            with procs.lock:
                procs.live.discard(proc)
    wall = time.perf_counter() - t0
    with open(err_path, errors="replace") as fh:
        tail = fh.read().splitlines()[-TAIL_LINES:]
    if procs.stopping:
        raise KeyboardInterrupt
    return rc, wall, tail


def _env(settings: Settings, slot: int) -> Dict[str, str]:
    env = dict(os.environ)
    t = str(settings.threads())
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, TORCHINDUCTOR_COMPILE_THREADS=t, PYTHONUNBUFFERED="1")
    if settings.gpus:
        env["CUDA_VISIBLE_DEVICES"] = settings.gpus[slot % len(settings.gpus)]
    return env


def _failure(rc: Optional[int], tail: List[str], timeout: Optional[float]) -> str:
    if rc is None:
        return f"timed out after {timeout:g} s"
    return f"exit code {rc}: {error_message(tail)}"


def run_one(settings: Settings, spec: RunSpec, slot: int, procs: Optional[_Processes] = None) -> Dict[str, Any]:
    """Fit (and test) one run, collect its metrics and write ``done.json``; returns that record."""
    procs = procs or _Processes()
    env = _env(settings, slot)
    previous = load_done(spec)
    if settings.test and previous and previous["status"] == "ok" and "test_command" not in previous:
        # Finished fit, --test asked for only now: run just the test phase.
        record = {k: v for k, v in previous.items() if k != "ran"}
        _run_test(settings, spec, slot, env, record, procs)
        _write_json(spec.run_dir / DONE, record)
        return record
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / DONE).unlink(missing_ok=True)
    fit_args = cli_args(settings, spec, "fit")
    last = resume_path(spec.run_dir)
    cmd = command(settings, fit_args + ([f"--ckpt_path={last}"] if last else []))
    rc, wall, tail = _execute(cmd, spec.run_dir, "fit", env, settings.run_timeout, procs)

    scalars = collect.read_scalars(spec.run_dir / "tb" / "fit")
    record: Dict[str, Any] = {
        "label": spec.label, "activation": spec.activation, "kwargs": spec.kwargs, "seed": spec.seed,
        "status": "ok", "error": "", "stderr_tail": [], "returncode": rc, "wall_time_s": round(wall, 3),
        "resumed_from": str(last) if last else None, "fit_args": fit_args,
        "config_sha256": config_digest(settings.config), "fit_command": shlex.join(cmd),
        "metrics": collect.summarize(scalars, settings.metric, settings.mode), "test_metrics": {},
    }
    step = checkpoint_step(spec.run_dir)
    if step is not None:  # optimizer steps taken; the last *logged* step can lag by log_every_n_steps
        record["metrics"]["steps"] = step
    if rc != 0:
        record.update(status="failed", error=_failure(rc, tail, settings.run_timeout), stderr_tail=tail)
    elif not scalars:
        record.update(status="failed", error=f"no TensorBoard scalars under {spec.run_dir / 'tb' / 'fit'}")
    elif collect.first_nonfinite_loss(scalars):
        record.update(status="failed", error=collect.first_nonfinite_loss(scalars))
    elif settings.test:
        _run_test(settings, spec, slot, env, record, procs)
    _write_json(spec.run_dir / DONE, record)
    return record


def _run_test(settings: Settings, spec: RunSpec, slot: int, env: Dict[str, str], record: Dict[str, Any],
              procs: _Processes) -> None:
    ckpt = best_checkpoint(spec.run_dir)
    if ckpt is None:
        record.update(status="failed", error=f"test: no checkpoint under {spec.run_dir}")
        return
    cmd = command(settings, cli_args(settings, spec, "test") + [f"--ckpt_path={ckpt}"])
    rc, wall, tail = _execute(cmd, spec.run_dir, "test", env, settings.run_timeout, procs)
    record.update(test_command=shlex.join(cmd), test_checkpoint=str(ckpt), test_wall_time_s=round(wall, 3))
    if rc != 0:
        record.update(status="failed", error="test: " + _failure(rc, tail, settings.run_timeout), stderr_tail=tail)
        return
    scalars = collect.read_scalars(spec.run_dir / "tb" / "test")
    record["test_metrics"] = {
        (tag if tag.startswith("test") else f"test_{tag}"): series[-1][1]
        for tag, series in sorted(scalars.items())
        if series and not collect.is_trace_tag(tag)
    }


def _write_json(path: Path, obj: Any) -> None:
    def clean(x: Any) -> Any:  # JSON has no NaN: store it as null
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean(obj), indent=2))
    tmp.replace(path)  # atomic: a half-written done.json would make a run look finished


def load_done(spec: RunSpec) -> Optional[Dict[str, Any]]:
    path = spec.run_dir / DONE
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    for key, value in rec.get("metrics", {}).items():  # null -> NaN for the report
        if value is None and key not in ("best_step",):
            rec["metrics"][key] = math.nan
    return rec


def config_digest(config: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(config).read_bytes()).hexdigest()


def incompatibilities(settings: Settings, specs: List[RunSpec]) -> List[str]:
    """Finished runs made with a different fit command or config contents than ``settings`` would use."""
    problems = []
    digest = config_digest(settings.config)
    for spec in specs:
        rec = load_done(spec)
        if rec is None:
            continue
        new = cli_args(settings, spec, "fit")
        if rec.get("config_sha256") != digest:
            problems.append(f"{spec.run_dir} was finished with a different version of {settings.config} "
                            "(its contents changed).")
        elif rec.get("fit_args") != new:
            problems.append(f"{spec.run_dir} was finished with different arguments:\n  was: "
                            f"{shlex.join(rec.get('fit_args') or [])}\n  now: {shlex.join(new)}")
    return problems


def check_compatible(settings: Settings, specs: List[RunSpec]) -> None:
    """Refuse to mix results made with a different fit command (config, budget, extras) into one table."""
    problems = incompatibilities(settings, specs)
    if problems:
        raise ValueError(f"{problems[0]}\nUse a new --out, or delete that run folder to rerun it"
                         + (f" ({len(problems) - 1} more runs differ)." if len(problems) > 1 else "."))


def runs_to_do(settings: Settings, specs: List[RunSpec]) -> List[int]:
    """Indices of the runs still to run: no ``done.json``, failed with ``retry_failed``, or ``--test`` added later."""
    out = []
    for i, spec in enumerate(specs):
        rec = load_done(spec)
        needs_test = settings.test and rec is not None and rec.get("status") == "ok" and "test_command" not in rec
        if rec is None or needs_test or (rec.get("status") != "ok" and settings.retry_failed):
            out.append(i)
    return out


def run_all(settings: Settings, specs: List[RunSpec], log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run the unfinished specs, ``settings.parallel`` at a time; return one record per spec (in order).

    Each record has ``ran`` = whether it was run in this call. Ctrl-C stops every child and re-raises;
    interrupted runs get no ``done.json`` and rerun (resuming from their checkpoint) next time.
    """
    check_compatible(settings, specs)
    todo = runs_to_do(settings, specs)
    records: Dict[int, Dict[str, Any]] = {i: dict(load_done(s), ran=False)
                                          for i, s in enumerate(specs) if i not in todo}
    log(f"compare: {len(specs)} runs, {len(specs) - len(todo)} already finished, {len(todo)} to run, "
        f"{settings.parallel} at a time with {settings.threads()} threads each")
    slots: "queue.Queue[int]" = queue.Queue()
    for s in range(settings.parallel):
        slots.put(s)
    procs, lock, n_done = _Processes(), threading.Lock(), [0]

    def work(i: int) -> Dict[str, Any]:
        slot = slots.get()
        try:
            spec = specs[i]
            log(f"  start {spec.label} seed={spec.seed} -> {spec.run_dir}")
            try:
                rec = run_one(settings, spec, slot, procs)
            except Exception as exc:  # a runner-side error (disk, bad config YAML) fails this run only
                rec = _runner_failure(settings, spec, exc)
        finally:
            slots.put(slot)
        with lock:
            n_done[0] += 1
            log(f"  [{n_done[0]}/{len(todo)}] {_describe(rec)}")
        return rec

    with ThreadPoolExecutor(max_workers=settings.parallel) as pool:
        futures = {pool.submit(work, i): i for i in todo}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    records[futures[fut]] = dict(fut.result(), ran=True)
        except BaseException:
            procs.stop_all()
            for fut in futures:
                fut.cancel()
            raise
    return [records[i] for i in range(len(specs))]


def _runner_failure(settings: Settings, spec: RunSpec, exc: Exception) -> Dict[str, Any]:
    rec = {"label": spec.label, "activation": spec.activation, "kwargs": spec.kwargs, "seed": spec.seed,
           "status": "failed", "error": f"runner: {type(exc).__name__}: {exc}", "stderr_tail": [],
           "returncode": None, "wall_time_s": 0.0, "metrics": collect.summarize({}, settings.metric, settings.mode),
           "test_metrics": {}}
    try:  # not written as done.json: the cause is outside the run, so the next invocation retries it
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(spec.run_dir / "runner_error.json", rec)
    except OSError:
        pass
    return rec


def _describe(rec: Dict[str, Any]) -> str:
    head = f"{rec['label']} seed={rec['seed']}: {rec['status']} in {rec['wall_time_s']:.1f} s"
    if rec["status"] != "ok":
        return f"{head} ({rec['error']})"
    m = rec["metrics"]
    if m.get("metric"):
        return f"{head}, best {m['metric']}={m['best']:.4g} at step {m['best_step']}"
    return head
