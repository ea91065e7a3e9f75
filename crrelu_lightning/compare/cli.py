"""``crrelu-lightning compare``: every activation × seed as an ordinary fit run, then a table and plots.

    crrelu-lightning compare --config configs/demo.yaml --activations gelu,crrelu --seeds 0,1,2 \\
        [--out runs/compare/NAME] [--parallel K] [--threads-per-run T] [--max-steps N] [--test] \\
        [--activation-kwargs 'crrelu:{"eps_init": 0.05}'] [--extra=--trainer.max_epochs=3 ...] [-- EXTRA ARGS]

Rerunning the same command resumes: finished runs are skipped, unfinished ones restart from their
latest checkpoint. Exit code 0 when every run succeeded, 1 when some failed (the report is written anyway),
2 for bad arguments. See docs/compare.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from dataclasses import dataclass

from crrelu_lightning.compare import collect, commands, plots, report, runner, slurm

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crrelu-lightning compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", type=Path, action="append",
                   help="the fit config shared by every run (required); repeat to compose overlays, as for fit "
                        "(e.g. --config configs/demo.yaml --config configs/demo_eafo.yaml)")
    p.add_argument("--activations",
                   help="comma-separated registry names; LABEL=NAME gives a row its own label "
                        "(e.g. crrelu_e05=crrelu with --activation-kwargs crrelu_e05:{...})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds or ranges, e.g. 0,1,2 or 0-4 (default 0,1,2)")
    p.add_argument("--out", type=Path, help="output folder (default runs/compare/<config name>)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads-per-run", type=int, help="OMP/torch threads per run (default: cores // parallel)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids; run slot i sees gpus[i %% len] only")
    p.add_argument("--max-steps", type=int, help="same optimizer-step budget for every run (--trainer.max_steps)")
    p.add_argument("--test", action="store_true", help="after fit, run `test` on each run's best checkpoint")
    p.add_argument("--extra", action="append", default=[],
                   help="extra fit/test arguments, e.g. --extra=--trainer.max_epochs=3 (repeatable; shell-split)")
    p.add_argument("--activation-kwargs", action="append", default=[], metavar="LABEL:JSON",
                   help='keyword arguments for one activation, e.g. \'crrelu:{"eps_init": 0.05}\' (repeatable)')
    p.add_argument("--metric", help="validation tag to rank by (default: a val*acc* tag, else val*loss*)")
    p.add_argument("--mode", choices=("min", "max"), help="whether --metric is better low or high")
    p.add_argument("--baseline", metavar="LABEL[,LABEL]",
                   help="activation(s) to compare every other one with: difference of means, 95 %% Welch interval, "
                        "p and n in summary.md and differences.csv")
    p.add_argument("--diff-metrics", default="", metavar="COL,...",
                   help="more results.csv columns to compare with the baseline, e.g. final_val/reward_margin")
    p.add_argument("--report-csv", nargs="+", type=Path, metavar="CSV",
                   help="run nothing; write summary.md (and differences.csv) into --out (default: the first CSV's "
                        "folder) from these results.csv files, e.g. to regenerate a report without the run folders")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--run-timeout", type=float, help="seconds before a run is killed and recorded as failed")
    p.add_argument("--activation-key", default="model.activation", help="config key of the activation name")
    p.add_argument("--kwargs-key", default="model.activation_kwargs", help="config key of the activation kwargs")
    p.add_argument("--no-check-activations", action="store_true",
                   help="don't check names against the registry (activations registered by your own module)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs `-m crrelu_lightning fit` (default: this one)")
    p.add_argument("--report-only", action="store_true", help="run nothing; rebuild the table and plots")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's fit command (with --launcher slurm: the batch script) and exit")
    s = p.add_argument_group("SLURM", "submit the grid as one job array instead of running it here (docs/compare.md)")
    s.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run here (default); slurm: sbatch one array task per run, then return")
    s.add_argument("--collect", type=Path, metavar="DIR",
                   help="run nothing: gather the finished runs of the SLURM sweep in DIR into results.csv, "
                        "summary.md and plots, and report unfinished, failed and requeued tasks")
    s.add_argument("--slurm.partition", dest="slurm_partition", help="partition (sbatch --partition)")
    s.add_argument("--slurm.gpus-per-run", dest="slurm_gpus_per_run", type=int, default=0,
                   help="GPUs per run (--gres=gpu:G, G tasks = G Lightning ranks started by srun; default 0)")
    s.add_argument("--slurm.time", dest="slurm_time", help="time limit per run (sbatch --time, e.g. 1-00:00:00)")
    s.add_argument("--slurm.extra", dest="slurm_extra", action="append", default=[],
                   help="site-specific sbatch flags, e.g. --slurm.extra='--account=abc --qos=normal' (repeatable)")
    s.add_argument("--slurm.max-running", dest="slurm_max_running", type=int,
                   help="at most this many tasks of the array at once (--array=...%%N)")
    return p


def parse_activations(text: str, check: bool) -> List[Tuple[str, str]]:
    """``"gelu,lbl=crrelu"`` -> ``[("gelu", "gelu"), ("lbl", "crrelu")]``; labels must be unique and path-safe."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--activations is empty: {text!r}")
    out = []
    for item in items:
        label, _, name = item.partition("=")
        name = name.strip() or label.strip()
        label = label.strip()
        if not _LABEL.match(label):
            raise ValueError(f"bad activation label {label!r}: use letters, digits and _ . + - (it names a folder)")
        out.append((label, name))
    labels = [l for l, _ in out]
    dupes = sorted({l for l in labels if labels.count(l) > 1})
    if dupes:
        raise ValueError(f"activation labels repeated: {dupes}; give variants their own LABEL=NAME")
    if check:
        from crrelu_lightning.activations import UnknownActivationError, activation_class

        for _, name in out:  # registered names, entry points and import paths (mypkg.acts.MyAct)
            try:
                activation_class(name)
            except UnknownActivationError as err:
                raise ValueError(f"--activations: {err} (--no-check-activations skips this check)") from None
    return out


def parse_seeds(text: str) -> List[int]:
    seeds: List[int] = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed {part!r} in --seeds {text!r}: use integers or ranges like 0-4")
        lo, hi = int(m.group(1)), int(m.group(2)) if m.group(2) else int(m.group(1))
        if hi < lo:
            raise ValueError(f"empty seed range {part!r} in --seeds")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise ValueError(f"--seeds is empty: {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {seeds}")
    return seeds


def parse_kwargs(items: List[str], labels: List[str]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        label, sep, text = item.partition(":")
        if not sep:
            raise ValueError(f"--activation-kwargs {item!r} must look like LABEL:JSON, e.g. 'crrelu:{{\"eps\": 0.05}}'")
        if label not in labels:
            raise ValueError(f"--activation-kwargs names {label!r}, which is not in --activations {labels}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--activation-kwargs for {label!r}: {text!r} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"--activation-kwargs for {label!r} must be a JSON object, got {text!r}")
        out[label] = value
    return out


def settings_from_args(a: argparse.Namespace, extra_tail: List[str]) -> commands.Settings:
    configs = [c.expanduser().resolve() for c in a.config]
    for given, config in zip(a.config, configs):
        if not config.is_file():
            raise ValueError(f"--config {given} does not exist (looked at {config})")
    # The first config is the base; overlays (e.g. an EAFO callback appended with `callbacks+:`) go to every
    # fit/test command after the runner's own trainer overrides and before the run's activation (commands.cli_args).
    config, overlays = configs[0], [f"--config={c}" for c in configs[1:]]
    try:
        commands.config_callbacks(config)
    except Exception as exc:  # unreadable YAML: say so before any run starts
        raise ValueError(f"cannot read --config {config}: {exc}") from None
    for flag, value in (("--parallel", a.parallel), ("--threads-per-run", a.threads_per_run),
                        ("--max-steps", a.max_steps), ("--run-timeout", a.run_timeout)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    extra = [x for e in a.extra for x in shlex.split(e)] + extra_tail
    return commands.Settings(
        config=config, out=(a.out or Path("runs/compare") / "+".join(c.stem for c in configs)).expanduser().resolve(),
        parallel=a.parallel, threads_per_run=a.threads_per_run, max_steps=a.max_steps, extra=extra, overlays=overlays,
        test=a.test, activation_key=a.activation_key, kwargs_key=a.kwargs_key,
        gpus=[g.strip() for g in a.gpus.split(",") if g.strip()], retry_failed=a.retry_failed,
        run_timeout=a.run_timeout, metric=a.metric, mode=a.mode, python=a.python, baseline=a.baseline,
        diff_metrics=_split(a.diff_metrics),
    )


def _split(text: str) -> List[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def write_outputs(settings: commands.Settings, specs: List[commands.RunSpec], records: List[Dict[str, Any]],
                  header: Dict[str, str], pending: Optional[List[str]] = None) -> List:
    """results.csv, plots/*.png and summary.md under ``settings.out``; returns the plot paths."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    data: Dict[str, List[collect.Scalars]] = {}
    for spec, rec in zip(specs, records):
        scalars = collect.read_scalars(spec.run_dir / "tb" / "fit")
        if scalars:  # recomputed from the logs, so --metric/--mode also apply to runs finished earlier
            steps = rec["metrics"].get("steps")
            rec["metrics"] = collect.summarize(scalars, settings.metric, settings.mode)
            rec["metrics"]["steps"] = steps if steps is not None else rec["metrics"]["steps"]
        data.setdefault(spec.label, [])
        if rec["status"] == "ok":  # a crashed run's partial curve would bias the mean
            data[spec.label].append(scalars)
    report.write_csv(records, out / "results.csv")
    tags = sorted({t for runs in data.values() for s in runs for t in s})
    metric = next((r["metrics"]["metric"] for r in records if r["metrics"].get("metric")), None)
    val = [t for t in tags if re.match(r"^(val|valid|validation)[/_]", t) and not collect.is_trace_tag(t)]
    val.sort(key=lambda t: (t != metric, t))  # primary metric first
    train = [t for t in tags if t.startswith("train") and not collect.is_trace_tag(t)]
    made = [
        plots.plot_tags(data, val, out / "plots" / "validation.png", "validation metrics vs step"),
        plots.plot_tags(data, train, out / "plots" / "train.png", "training metrics vs step"),
        plots.plot_tags(data, [t for t in tags if collect.is_entropy_tag(t)], out / "plots" / "entropy.png",
                        "per-layer activation entropy (training)"),
        plots.plot_tags(data, [t for t in tags if collect.is_entropy_tag(t, "val_")],
                        out / "plots" / "val_entropy.png", "per-layer activation entropy (validation)"),
        plots.plot_tags(data, [t for t in tags if collect.is_eps_tag(t)], out / "plots" / "eps.png",
                        "ε over training"),
    ]
    made = [p for p in made if p is not None]
    diffs = _differences(settings.baseline, settings.diff_metrics, records, out)
    report.write_summary(records, out / "summary.md", header, plots=made, diffs=diffs, pending=pending)
    return made


def _differences(baseline: Optional[str], extra: List[str], records: List[Dict[str, Any]], out: Path):
    if not baseline:
        return None
    diffs = [d for b in _split(baseline) for d in report.differences(records, b, extra)]
    report.write_differences_csv(diffs, out / "differences.csv")
    return diffs


def _old_header(summary: Path) -> Dict[str, str]:
    """The ``- **key**: value`` context lines of an existing summary.md (so a regenerated one keeps them)."""
    if not summary.is_file():
        return {}
    out = {}
    for line in summary.read_text().splitlines():
        m = re.match(r"^- \*\*(.+?)\*\*: (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
        elif line.startswith("#") and out:
            break
    return out


def _report_from_csv(args: argparse.Namespace, argv: List[str]) -> int:
    """``--report-csv``: summary.md (+ differences.csv) from results.csv files alone; existing plots are kept."""
    try:
        records = [r for path in args.report_csv for r in report.records_from_csv(path)]
        if args.activations:  # keep and order these labels only
            keep = [t.strip().partition("=")[0] for t in args.activations.split(",") if t.strip()]
            unknown = [k for k in keep if k not in {r["label"] for r in records}]
            if unknown:
                raise ValueError(f"--activations {unknown} not found in {[str(p) for p in args.report_csv]}")
            records = sorted((r for r in records if r["label"] in keep), key=lambda r: keep.index(r["label"]))
        out = (args.out or args.report_csv[0].parent).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        header = _old_header(out / "summary.md")
        header.pop("report", None)
        header["report"] = ("regenerated from " + ", ".join(str(p) for p in args.report_csv) + " by `"
                            + shlex.join(["crrelu-lightning", "compare", *argv]) + "`")
        order = ["validation", "train", "entropy", "val_entropy", "eps"]  # as write_outputs makes them
        made = sorted((out / "plots").glob("*.png"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem))
        diffs = _differences(args.baseline, _split(args.diff_metrics), records, out)
    except ValueError as exc:
        print(f"crrelu-lightning compare: error: {exc}", file=sys.stderr)
        return 2
    report.write_summary(records, out / "summary.md", header, plots=made, diffs=diffs)
    print(f"compare: {len(records)} runs from {len(args.report_csv)} results.csv -> {out / 'summary.md'}")
    return 0


def _run_interruptibly(settings: commands.Settings, specs: List[commands.RunSpec]) -> List[Dict[str, Any]]:
    """``run_all`` with SIGTERM treated like Ctrl-C, so a killed runner stops its children too."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    try:
        return runner.run_all(settings, specs)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


@dataclass
class Plan:
    """A parsed compare command line: its settings, the runs, and the SLURM options."""

    args: argparse.Namespace
    argv: List[str]
    tail: List[str]
    settings: commands.Settings
    activations: List[Tuple[str, str]]
    seeds: List[int]
    specs: List[commands.RunSpec]
    slurm: slurm.SlurmOptions


def _split_tail(argv: List[str]) -> Tuple[List[str], List[str]]:
    if "--" in argv:  # everything after a bare -- goes to every fit/test command unchanged
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def prepare(full_argv: List[str], args: Optional[argparse.Namespace] = None) -> Plan:
    """Parse and check a compare command line into a ``Plan``; bad values raise ``ValueError``."""
    argv, tail = _split_tail(list(full_argv))
    args = args or build_parser().parse_args(argv)
    missing = [f for f, v in (("--config", args.config), ("--activations", args.activations)) if v is None]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")
    settings = settings_from_args(args, tail)
    activations = parse_activations(args.activations, check=not args.no_check_activations)
    seeds = parse_seeds(args.seeds)
    kwargs = parse_kwargs(args.activation_kwargs, [l for l, _ in activations])
    for b in _split(settings.baseline or ""):
        if b not in [l for l, _ in activations]:
            raise ValueError(f"--baseline {b!r} is not one of --activations {[l for l, _ in activations]}")
    for flag, value in (("--slurm.gpus-per-run", args.slurm_gpus_per_run), ("--slurm.max-running", args.slurm_max_running)):
        if value is not None and value < (0 if flag.endswith("run") else 1):
            raise ValueError(f"{flag} must be >= {0 if flag.endswith('run') else 1}, got {value}")
    opts = slurm.SlurmOptions(partition=args.slurm_partition, gpus_per_run=args.slurm_gpus_per_run,
                              time=args.slurm_time, extra=[x for e in args.slurm_extra for x in shlex.split(e)],
                              cpus_per_run=args.threads_per_run or (4 if args.slurm_gpus_per_run else 1),
                              max_running=args.slurm_max_running)
    specs = commands.plan(settings, activations, seeds, kwargs)
    return Plan(args, argv, tail, settings, activations, seeds, specs, opts)


def _header(plan: Plan) -> Dict[str, str]:
    settings, activations = plan.settings, plan.activations
    header = {
        "command": shlex.join(["crrelu-lightning", "compare", *plan.argv] + (["--", *plan.tail] if plan.tail else [])),
        "config": str(settings.config), "activations": ", ".join(l if l == n else f"{l}={n}" for l, n in activations),
        "seeds": ", ".join(map(str, plan.seeds)),
    }
    if plan.args.launcher == "slurm":
        o = plan.slurm
        header["launcher"] = (f"SLURM job array (partition {o.partition or 'default'}, {o.gpus_per_run} GPUs and "
                              f"{o.cpus_per_run} CPUs per run, time {o.time or 'default'})")
    else:
        header["machine"] = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()})"
        header["parallel"] = (f"{settings.parallel} runs × {settings.threads()} threads"
                              + (f", GPUs {','.join(settings.gpus)}" if settings.gpus else ""))
    header["generated"] = datetime.datetime.now().isoformat(timespec="seconds")
    return header


def _slurm(plan: Plan, dry_run: bool) -> int:
    """Submit the unfinished runs that SLURM is not already running as one array, then report."""
    settings, specs = plan.settings, plan.specs
    try:
        runner.check_compatible(settings, specs)
        states = slurm.task_states(settings.out)
        todo = [specs[i] for i in runner.runs_to_do(settings, specs)]
        queued = [s for s in todo if (st := states.get(slurm.relative(s, settings.out))) is not None and st.live]
        submit = [s for s in todo if s not in queued]
        if dry_run:
            if submit:
                k = len(slurm.submissions(settings.out)) + 1
                print(slurm.batch_script(settings, plan.slurm, submit, k, Path.cwd()), end="")
            print(f"# compare: dry run, nothing submitted: {len(submit)} runs to submit, {len(queued)} still "
                  f"queued or running, {len(specs) - len(todo)} finished", file=sys.stderr)
            return 0
        if submit:
            job, script = slurm.submit(settings, plan.slurm, submit, ["--launcher", "slurm", *_without(plan)], Path.cwd())
            print(f"compare: submitted job array {job} ({len(submit)} tasks; batch script {script}); "
                  f"{len(queued)} runs still queued or running, {len(specs) - len(todo)} finished. "
                  f"Collect with: crrelu-lightning compare --collect {settings.out}")
        else:
            print(f"compare: nothing to submit ({len(queued)} runs still queued or running, "
                  f"{len(specs) - len(todo)} finished)")
    except ValueError as exc:
        print(f"crrelu-lightning compare: error: {exc}", file=sys.stderr)
        return 2
    return _report_slurm(plan)


def _without(plan: Plan) -> List[str]:
    """The command line minus --launcher/--dry-run, so a task re-parses exactly the sweep's settings."""
    argv, skip = [], False
    for a in plan.argv:
        if skip:
            skip = False
            continue
        if a == "--launcher":
            skip = True
            continue
        if a.startswith("--launcher=") or a == "--dry-run":
            continue
        argv.append(a)
    return argv + (["--", *plan.tail] if plan.tail else [])


def _collect(out: Path, parser: argparse.ArgumentParser) -> int:
    subs = slurm.submissions(out)
    if not subs:
        print(f"crrelu-lightning compare: error: {out} has no SLURM submissions ({out / 'slurm' / 'submissions.json'} "
              "is missing); for a local sweep rerun its command with --report-only", file=sys.stderr)
        return 2
    stored = json.loads((slurm.slurm_dir(out) / f"submit_{subs[-1]['submission']}.json").read_text())
    try:
        plan = prepare(stored["argv"])
    except ValueError as exc:
        print(f"crrelu-lightning compare: error: the sweep's stored command no longer parses: {exc}", file=sys.stderr)
        return 2
    if plan.settings.out != out.expanduser().resolve():
        print(f"compare: warning: {out} was submitted as {plan.settings.out}", file=sys.stderr)
    return _report_slurm(plan)


def _describe_task(spec: commands.RunSpec, st: Optional[slurm.TaskState], out: Path) -> List[str]:
    """Lines for summary.md / stdout about one SLURM task that did not finish (or finished after a requeue)."""
    if st is None:
        return [f"`{spec.label}` seed {spec.seed}: never submitted"]
    step = None
    from crrelu_lightning.compare.checkpoints import checkpoint_step

    if not (spec.run_dir / runner.DONE).exists():
        step = checkpoint_step(spec.run_dir)
    text = f"`{spec.label}` seed {spec.seed}: SLURM {st.state}"
    details = [f"task {st.name}"]
    if st.reason and st.reason not in ("None", ""):
        details.append(f"reason {st.reason}")
    if st.exit_code:
        details.append(f"exit {st.exit_code}")
    n_starts = len(slurm.attempts(spec.run_dir))
    restarts = max(st.restarts, n_starts - 1)
    if restarts > 0:
        details.append(f"requeued {restarts}×")
    text += " (" + ", ".join(details) + ")"
    if step is not None:
        text += f"; resume checkpoint at step {step}"
    lines = [text]
    if not st.live:
        tail = slurm.log_tail(st.log)
        if tail:
            lines.append(f"  log {st.log}:")
            lines += [f"      {l}" for l in tail]
    return lines


def _report_slurm(plan: Plan) -> int:
    """results.csv, summary.md and plots from the finished runs; the state of every other task.

    Exit 0: all runs finished and succeeded; 1: some failed; 3: none failed but some are not finished."""
    settings, specs = plan.settings, plan.specs
    for problem in runner.incompatibilities(settings, specs):
        print(f"compare: warning: {problem}", file=sys.stderr)
    states = slurm.task_states(settings.out)
    done_specs, records, notes = [], [], []
    unfinished = 0
    for spec in specs:
        rec = runner.load_done(spec)
        st = states.get(slurm.relative(spec, settings.out))
        if rec is None:
            unfinished += 1
            notes += _describe_task(spec, st, settings.out)
            continue
        done_specs.append(spec)
        records.append(rec)
        requeued = st is not None and max(st.restarts, len(slurm.attempts(spec.run_dir)) - 1) > 0
        if rec["status"] != "ok" or requeued:
            notes += [("failed: " if rec["status"] != "ok" else "finished after a requeue: ") + l
                      if i == 0 else l for i, l in enumerate(_describe_task(spec, st, settings.out))]
    header = _header(plan)
    if records:
        write_outputs(settings, done_specs, records, header, pending=notes)
    n_failed = sum(r["status"] != "ok" for r in records)
    print(f"compare: {len(records) - n_failed} ok, {n_failed} failed, {unfinished} not finished of {len(specs)} runs"
          + (f" -> {settings.out / 'summary.md'}, {settings.out / 'results.csv'}" if records else ""))
    for line in notes:
        print(f"  {line}")
    if unfinished:
        print("compare: rerun the submit command to resubmit stopped runs (they resume from their resume "
              f"checkpoint), or `crrelu-lightning compare --collect {settings.out}` to look again")
    return 1 if n_failed else (3 if unfinished else 0)


def main(argv: Optional[List[str]] = None) -> int:
    full = list(sys.argv[1:] if argv is None else argv)
    argv, tail = _split_tail(full)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report_csv:
        return _report_from_csv(args, argv)
    if args.collect is not None:
        return _collect(args.collect, parser)
    try:
        plan = prepare(full, args)
    except ValueError as exc:
        print(f"crrelu-lightning compare: error: {exc}", file=sys.stderr)
        return 2
    settings, specs = plan.settings, plan.specs
    if args.launcher == "slurm":
        return _slurm(plan, dry_run=args.dry_run)
    if args.dry_run:
        for spec in specs:
            print(shlex.join(["crrelu-lightning", *commands.cli_args(settings, spec, "fit")]))
        return 0
    header = _header(plan)
    try:
        if args.report_only:  # nothing new is mixed in, so differences are only worth a warning
            for problem in runner.incompatibilities(settings, specs):
                print(f"compare: warning: {problem}", file=sys.stderr)
            records = [runner.load_done(s) for s in specs]
            missing = [s for s, r in zip(specs, records) if r is None]
            if missing:
                print(f"compare: {len(missing)} of {len(specs)} runs are not finished; reporting the rest")
            specs = [s for s, r in zip(specs, records) if r is not None]
            records = [r for r in records if r is not None]
        else:
            records = _run_interruptibly(settings, specs)
    except ValueError as exc:
        print(f"crrelu-lightning compare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compare: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    write_outputs(settings, specs, records, header)
    n_failed = sum(r["status"] != "ok" for r in records)
    print(f"compare: {len(records) - n_failed} ok, {n_failed} failed -> {settings.out / 'summary.md'}, "
          f"{settings.out / 'results.csv'}")
    return 1 if n_failed else 0
