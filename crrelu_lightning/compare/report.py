"""``results.csv`` (one row per run), ``summary.md`` (mean ± sd over seeds, n, failures per activation) and,
against a baseline, ``differences.csv`` (difference of means with its 95 % Welch interval, see ``stats``)."""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from crrelu_lightning.compare import stats
from crrelu_lightning.compare.collect import direction

FIXED_COLUMNS = ["activation", "name", "kwargs", "seed", "status", "error", "steps", "wall_time_s",
                 "test_wall_time_s", "metric", "best", "best_step", "final"]


def row(rec: Dict[str, Any]) -> Dict[str, Any]:
    """Flatten one run record: fixed columns, then ``final_<tag>``/``best_<tag>`` and test metrics."""
    m = dict(rec.get("metrics") or {})
    out = {
        "activation": rec["label"], "name": rec["activation"],
        "kwargs": json.dumps(rec["kwargs"]) if rec.get("kwargs") else "", "seed": rec["seed"],
        "status": rec["status"], "error": rec.get("error", ""), "steps": m.pop("steps", 0),
        "wall_time_s": rec.get("wall_time_s"), "test_wall_time_s": rec.get("test_wall_time_s", ""),
    }
    m.pop("mode", None)
    for key in ("metric", "best", "best_step", "final"):
        out[key] = m.pop(key, "")
    out.update(m)
    out.update(rec.get("test_metrics") or {})
    return out


def write_csv(records: Sequence[Dict[str, Any]], path: Path) -> List[Dict[str, Any]]:
    rows = [row(r) for r in records]
    extra = sorted({k for r in rows for k in r} - set(FIXED_COLUMNS))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIXED_COLUMNS + extra, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(v) for k, v in r.items()})
    return rows


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() and text != "nan" else v


def records_from_csv(path: Path) -> List[Dict[str, Any]]:
    """Run records rebuilt from a ``results.csv`` (the inverse of ``row``), for reports without the run folders."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: pass the results.csv of a finished comparison")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("activation", "name", "seed", "status", "metric", "best", "final") if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path} is not a compare results.csv: columns {missing} are missing")
    records = []
    for r in rows:
        metrics = {k: _number(v) for k, v in r.items() if k not in FIXED_COLUMNS and not k.startswith("test")}
        metrics.update(steps=_number(r["steps"]) or 0, metric=r["metric"], best=_number(r["best"]),
                       best_step=_number(r["best_step"]), final=_number(r["final"]))
        metrics["mode"] = direction(r["metric"]) or "" if r["metric"] else ""
        rec: Dict[str, Any] = {
            "label": r["activation"], "activation": r["name"], "kwargs": json.loads(r["kwargs"]) if r["kwargs"] else None,
            "seed": int(r["seed"]), "status": r["status"], "error": r["error"], "wall_time_s": _number(r["wall_time_s"]),
            "metrics": {k: (math.nan if v is None and k not in ("best_step",) else v) for k, v in metrics.items()},
            "test_metrics": {k: _number(v) for k, v in r.items()
                             if k.startswith("test") and k != "test_wall_time_s" and v != ""},
        }
        if r.get("test_wall_time_s"):
            rec["test_wall_time_s"] = _number(r["test_wall_time_s"])
        records.append(rec)
    return records


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def mean_sd(values: Iterable[Any]) -> Tuple[float, float, int]:
    """Mean and sample standard deviation (n−1) of the finite values; sd is NaN for n < 2."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan), len(xs)


def fmt(mean: float, sd: float, n: int, digits: int = 4) -> str:
    if n == 0:
        return "—"
    if n == 1 or math.isnan(sd):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {sd:.2g}"


def _labels(records: Sequence[Dict[str, Any]]) -> List[str]:
    return list(dict.fromkeys(r["label"] for r in records))


def summary_table(records: Sequence[Dict[str, Any]]) -> str:
    """Markdown table, one line per activation; statistics over its successful runs only."""
    metric = _metric(records)
    test_tags = sorted({t for r in records if r["status"] == "ok" for t in (r.get("test_metrics") or {})})
    head = ["activation", "n", "failed"]
    if metric:
        head += [f"best {metric}", f"final {metric}"]
    head += test_tags + ["steps", "wall time / run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in _labels(records):
        runs = [r for r in records if r["label"] == label]
        ok = [r for r in runs if r["status"] == "ok"]
        cells = [label, str(len(ok)), str(len(runs) - len(ok))]
        if metric:
            same = [r for r in ok if r["metrics"].get("metric") == metric]
            cells += [fmt(*mean_sd(r["metrics"]["best"] for r in same)),
                      fmt(*mean_sd(r["metrics"]["final"] for r in same))]
        cells += [fmt(*mean_sd((r.get("test_metrics") or {}).get(t) for r in ok)) for t in test_tags]
        steps = sorted({int(r["metrics"].get("steps") or 0) for r in ok})
        cells.append("—" if not steps else "/".join(map(str, steps)))
        cells.append(fmt(*mean_sd(r.get("wall_time_s") for r in ok), digits=3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _quantities(records: Sequence[Dict[str, Any]], extra: Sequence[str]) -> List[Tuple[str, str, Any]]:
    """(name shown, mode, getter) of every quantity compared with the baseline: best and final of the ranking
    metric, each test metric, then ``extra`` results.csv columns (e.g. ``final_val/reward_margin``)."""
    metric = _metric(records)
    out: List[Tuple[str, str, Any]] = []
    if metric:
        mode = next((r["metrics"].get("mode") for r in records if r["metrics"].get("metric") == metric
                     and r["metrics"].get("mode")), None) or direction(metric) or ""
        for key in ("best", "final"):
            out.append((f"{key} {metric}", mode, lambda r, k=key: r["metrics"].get(k)
                        if r["metrics"].get("metric") == metric else None))
    for tag in sorted({t for r in records if r["status"] == "ok" for t in (r.get("test_metrics") or {})}):
        out.append((tag, direction(tag) or "", lambda r, t=tag: (r.get("test_metrics") or {}).get(t)))
    for col in extra:
        tag = col.split("_", 1)[1] if col.startswith(("final_", "best_")) else col
        out.append((col, direction(tag) or "", lambda r, c=col: (r.get("test_metrics") or {}).get(c)
                    if c.startswith("test") else r["metrics"].get(c)))
    return out


def _metric(records: Sequence[Dict[str, Any]]) -> Optional[str]:
    metrics = Counter(r["metrics"].get("metric") for r in records if r["metrics"].get("metric"))
    return metrics.most_common(1)[0][0] if metrics else None


def differences(records: Sequence[Dict[str, Any]], baseline: str,
                extra: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """For every other activation and quantity: mean(activation) − mean(baseline) over successful runs,
    with its 95 % Welch interval, p-value, n of both sides and the words that interval allows."""
    labels = _labels(records)
    if baseline not in labels:
        raise ValueError(f"--baseline {baseline!r} is not one of the compared activations {labels}")
    ok = [r for r in records if r["status"] == "ok"]
    rows = []
    for name, mode, get in _quantities(records, extra):
        base = [get(r) for r in ok if r["label"] == baseline]
        for label in labels:
            if label == baseline:
                continue
            d = stats.welch([get(r) for r in ok if r["label"] == label], base)
            rows.append({"activation": label, "baseline": baseline, "quantity": name, "mode": mode,
                         "n": d.n_a, "n_baseline": d.n_b, "diff": d.diff, "ci_low": d.lo, "ci_high": d.hi,
                         "df": d.df, "p": d.p, "reading": stats.reading(d, mode or None)})
    return rows


def write_differences_csv(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    head = ["activation", "baseline", "quantity", "mode", "n", "n_baseline", "diff", "ci_low", "ci_high", "df", "p",
            "reading"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=head)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r[k]) for k in head})


def _signed(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:+.3g}".replace("-", "−")


def differences_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown: one line per activation × quantity, the interval and what it allows a doc to say."""
    if not rows:
        return ""
    base = rows[0]["baseline"]
    head = ["activation", "quantity", "n / n(base)", f"Δ mean (− {base})", "95 % CI (Welch)", "p", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = "—" if not math.isfinite(r["ci_low"]) else f"[{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]"
        p = "—" if not math.isfinite(r["p"]) else f"{r['p']:.2g}"
        reading = f"**{r['reading']}**" if r["reading"] in ("better", "worse") else r["reading"]
        lines.append("| " + " | ".join([r["activation"], r["quantity"], f"{r['n']} / {r['n_baseline']}",
                                         _signed(r["diff"]), ci, p, reading]) + " |")
    return "\n".join(lines)


def write_summary(records: Sequence[Dict[str, Any]], path: Path, header: Dict[str, str],
                  plots: Optional[Sequence[Path]] = None, diffs: Optional[Sequence[Dict[str, Any]]] = None,
                  pending: Optional[Sequence[str]] = None) -> str:
    """``summary.md``: context lines, the table, differences from the baseline, failures with their errors,
    runs not finished yet, then the plots."""
    parts = ["# Activation comparison", ""]
    parts += [f"- **{k}**: {v}" for k, v in header.items()]
    parts += ["", "Mean ± sample sd over seeds (n = successful runs); failed runs are excluded from the "
              "statistics and listed below.", "", summary_table(records), ""]
    for base in dict.fromkeys(d["baseline"] for d in diffs or []):
        parts += [f"## Difference from `{base}`", "",
                  "Mean of the activation minus mean of the baseline over their successful runs, with the 95 % "
                  "Welch t interval (unequal variances) and its two-sided p-value. *better*/*worse* only where the "
                  "interval excludes 0 (direction from the metric's name); otherwise the data do not resolve a "
                  "difference at this n. Each interval is for one comparison (no correction for the number of "
                  "comparisons in this table).", "",
                  differences_table([d for d in diffs if d["baseline"] == base]), ""]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        parts += ["## Failed runs", ""]
        parts += [f"- `{r['label']}` seed {r['seed']}: {r.get('error') or 'unknown error'}" for r in failed]
        parts.append("")
    if pending:
        parts += ["## Not finished", ""] + [f"- {line}" for line in pending] + [""]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{p.stem}]({Path(p).relative_to(path.parent).as_posix()})" for p in plots]
        parts.append("")
    text = "\n".join(parts)
    path.write_text(text)
    return text
