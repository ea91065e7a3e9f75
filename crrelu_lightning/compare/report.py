"""``results.csv`` (one row per run) and ``summary.md`` (mean ± sd over seeds, n, failures per activation)."""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

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
    metrics = Counter(r["metrics"].get("metric") for r in records if r["metrics"].get("metric"))
    metric = metrics.most_common(1)[0][0] if metrics else None
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


def write_summary(records: Sequence[Dict[str, Any]], path: Path, header: Dict[str, str],
                  plots: Optional[Sequence[Path]] = None) -> str:
    """``summary.md``: context lines, the table, failures with their errors, then the plots."""
    parts = ["# Activation comparison", ""]
    parts += [f"- **{k}**: {v}" for k, v in header.items()]
    parts += ["", "Mean ± sample sd over seeds (n = successful runs); failed runs are excluded from the "
              "statistics and listed below.", "", summary_table(records), ""]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        parts += ["## Failed runs", ""]
        parts += [f"- `{r['label']}` seed {r['seed']}: {r.get('error') or 'unknown error'}" for r in failed]
        parts.append("")
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{p.stem}]({Path(p).relative_to(path.parent).as_posix()})" for p in plots]
        parts.append("")
    text = "\n".join(parts)
    path.write_text(text)
    return text
