"""Read a run's TensorBoard scalars and reduce them to final / best metrics.

A run's scalars are ``{tag: [(step, value), ...]}`` sorted by step. "Best" needs a direction, which is
guessed from the tag name (``loss``/``err``/``ppl`` … lower is better; ``acc``/``top``/``f1`` …
higher is better) unless the caller names the metric and its mode.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

Scalars = Dict[str, List[Tuple[int, float]]]

# Per-layer groups written by crrelu_lightning.callbacks.ActivationEntropyMonitor (``[val_]entropy[_branch|_input]/<layer>``, ``p0/``,
# ``out_of_range/``, ``nonfinite/``) and crrelu_lightning.callbacks.EAFOCallback (``eafo/eps/<layer>``, ``eafo/sigma/`` …):
# traces of the training state, plotted but kept out of the results table.
_MONITOR_GROUPS = {"entropy", "entropy_hist", "p0", "out_of_range", "nonfinite", "eafo"}
_TRACE = re.compile(r"(^|[/_.])eps(ilon)?([/_.]|$)|^lr[-_/]|(^|[/_])lr$|(^|/)epoch$|^hp_metric$")
_EPS = re.compile(r"(^|[/_.])eps(ilon)?([/_.]|$)")
_LOWER = ("loss", "err", "ppl", "perplexity", "nll", "bpc", "bpb")
_HIGHER = ("acc", "top1", "top5", "f1", "auc", "precision", "recall", "margin", "reward")


def read_scalars(logdir: Path) -> Scalars:
    """All scalar series in the event files directly inside ``logdir`` (empty dict if there are none).

    A resumed run appends a second event file to the same folder; if a step was logged twice the later
    write wins, so the series describes the run that finished.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    logdir = Path(logdir)
    if not logdir.is_dir() or not any(p.name.startswith("events.out.tfevents") for p in logdir.iterdir()):
        return {}
    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0 = keep every point
    acc.Reload()
    out: Scalars = {}
    for tag in acc.Tags().get("scalars", []):
        by_step: Dict[int, Tuple[float, float]] = {}
        for ev in acc.Scalars(tag):
            prev = by_step.get(ev.step)
            if prev is None or ev.wall_time >= prev[0]:
                by_step[ev.step] = (ev.wall_time, float(ev.value))
        out[tag] = [(step, by_step[step][1]) for step in sorted(by_step)]
    return out


def _group(tag: str) -> str:
    """First path component without a ``val_``/``train_`` prefix: ``val_entropy/blk0`` -> ``entropy``."""
    head = tag.split("/", 1)[0] if "/" in tag else ""
    return re.sub(r"^(val|train|test)_", "", head)


def is_trace_tag(tag: str) -> bool:
    """Monitor / EAFO / ε / learning-rate / epoch tags: shown in plots, kept out of the results table."""
    group = _group(tag)  # entropy_branch, entropy_input, entropy_plugin_d<Δ>: the monitor's estimators
    return group in _MONITOR_GROUPS or group.startswith("entropy_") or bool(_TRACE.search(tag))


def is_entropy_tag(tag: str, prefix: str = "") -> bool:
    """``<prefix>entropy/<layer>``: per-layer training (prefix "") or validation ("val_") entropy."""
    return tag.startswith(f"{prefix}entropy/")


def is_eps_tag(tag: str) -> bool:
    return bool(_EPS.search(tag))


def direction(tag: str) -> Optional[str]:
    """``"min"``/``"max"`` guessed from the tag name, ``None`` when the name says nothing."""
    name = tag.lower()
    if any(k in name for k in _LOWER):
        return "min"
    if any(k in name for k in _HIGHER):
        return "max"
    return None


def _is_val(tag: str) -> bool:
    return bool(re.match(r"^(val|valid|validation)([/_]|$)", tag.lower()))


def primary_metric(tags: List[str]) -> Optional[Tuple[str, str]]:
    """The validation metric to rank runs by: a ``val*acc*`` tag (top-1 preferred), else ``val*loss*``."""
    val = [t for t in tags if _is_val(t)]
    acc = [t for t in val if "acc" in t.lower()]
    if acc:
        top1 = [t for t in acc if re.search(r"(acc|top)_?1|acc$", t.lower())]
        return min(top1 or acc, key=len), "max"
    loss = [t for t in val if "loss" in t.lower()]
    if loss:
        return min(loss, key=len), "min"
    return None


def best_point(series: List[Tuple[int, float]], mode: str) -> Tuple[Optional[int], float]:
    """(step, value) of the best finite value; NaN when no value is finite."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    finite = [(s, v) for s, v in series if math.isfinite(v)]
    if not finite:
        return None, math.nan
    pick = min if mode == "min" else max
    return pick(finite, key=lambda sv: sv[1])


def first_nonfinite_loss(scalars: Scalars) -> Optional[str]:
    """A message naming the first loss tag that went NaN/inf and the step, or ``None`` if all are finite."""
    hits = []
    for tag, series in scalars.items():
        if "loss" not in tag.lower():
            continue
        for step, value in series:
            if not math.isfinite(value):
                hits.append((step, tag, value))
                break
    if not hits:
        return None
    step, tag, value = min(hits)
    return f"non-finite loss: {tag}={value} at step {step}"


def summarize(scalars: Scalars, metric: Optional[str] = None, mode: Optional[str] = None) -> Dict[str, object]:
    """Reduce one run's scalars to a flat dict for the results table.

    Keys: ``steps`` (largest logged step), ``metric``/``mode``/``best``/``best_step``/``final`` for the
    primary metric, ``final_<tag>`` for every non-trace tag and ``best_<tag>`` for validation tags with a
    known direction. Missing metric -> NaN values (the run is still reported).
    """
    out: Dict[str, object] = {}
    out["steps"] = max((s for series in scalars.values() for s, _ in series), default=0)
    if metric is None:
        guess = primary_metric(list(scalars))
        metric, guessed_mode = guess if guess else (None, None)
        mode = mode or guessed_mode
    elif mode is None:
        mode = direction(metric) or "max"
    out["metric"], out["mode"] = metric or "", mode or ""
    series = scalars.get(metric, []) if metric else []
    if series:
        out["best_step"], out["best"] = best_point(series, mode)
        out["final"] = series[-1][1]
    else:
        out["best_step"], out["best"], out["final"] = None, math.nan, math.nan
    for tag in sorted(scalars):
        if is_trace_tag(tag) or not scalars[tag]:
            continue
        out[f"final_{tag}"] = scalars[tag][-1][1]
        d = direction(tag)
        if _is_val(tag) and d:
            out[f"best_{tag}"] = best_point(scalars[tag], d)[1]
    return out
