"""Baseline differences: the runner's own Student-t and Welch interval against scipy, the words a report may
use, results.csv round trip, and ``compare --baseline`` writing the interval columns."""
from __future__ import annotations

import csv
import math
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from crrelu_lightning.compare import cli, report, stats

scipy_stats = pytest.importorskip("scipy.stats")

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from compare_fake import base  # noqa: E402


@pytest.mark.parametrize("df", [0.7, 1.0, 2.0, 2.53, 3.95, 10.0, 57.3, 1e4])
def test_t_cdf_and_quantile_match_scipy(df):
    for t in (-40.0, -2.0, -0.3, 0.0, 0.3, 1.5, 4.0, 100.0):
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-10)
    for p in (0.001, 0.025, 0.5, 0.6, 0.975, 0.995):
        ref = scipy_stats.t.ppf(p, df)
        assert stats.t_quantile(p, df) == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("a, b", [
    ([0.8589, 0.8561, 0.8617], [0.8530, 0.8555, 0.8502]),   # n = 3 / 3, unequal spreads
    ([1.0, 2.0, 4.0, 8.0, 3.5], [2.0, 2.1]),               # unequal n
    ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]),                      # identical samples: diff 0, p 1
])
def test_welch_matches_scipy(a, b):
    d = stats.welch(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.diff == pytest.approx(np.mean(a) - np.mean(b), abs=1e-15)
    assert (d.lo, d.hi) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert d.p == pytest.approx(ref.pvalue, abs=1e-10) and d.df == pytest.approx(ref.df, rel=1e-12)
    assert (d.n_a, d.n_b) == (len(a), len(b))
    assert d.resolved == (ci.low > 0 or ci.high < 0)


def test_welch_degenerate_cases_and_reading():
    one = stats.welch([1.0], [0.0, 1.0])
    assert one.diff == 0.5 and math.isnan(one.lo) and stats.reading(one, "max") == "n < 2"
    assert stats.reading(stats.welch([], [1.0, 2.0]), "max") == "no data"
    flat = stats.welch([2.0, 2.0, float("nan")], [1.0, 1.0])  # NaN ignored; no spread: the point itself
    assert (flat.lo, flat.hi, flat.n_a, flat.p) == (1.0, 1.0, 2, 0.0)
    up = stats.welch([10.0, 11.0, 12.0], [0.0, 1.0, 2.0])
    assert up.resolved and stats.reading(up, "max") == "better" and stats.reading(up, "min") == "worse"
    assert stats.reading(up, None) == "higher"
    near = stats.welch([0.0, 1.0, 2.0], [0.5, 1.5, 2.5])
    assert not near.resolved and stats.reading(near, "max") == "not resolved"


def _records():
    recs = []
    for label, shift in (("gelu", 0.0), ("crrelu", 0.02), ("relu", 0.001)):
        for seed in range(3):
            acc = 0.80 + shift + 0.003 * (seed - 1) * (1 + seed if label == "relu" else 1)
            recs.append({"label": label, "activation": label, "kwargs": {"eps": 0.1} if label == "crrelu" else None,
                         "seed": seed, "status": "ok", "error": "", "wall_time_s": 10.0 + seed,
                         "metrics": {"steps": 30, "metric": "val_acc", "mode": "max", "best": acc, "best_step": 20,
                                     "final": acc - 0.01, "final_val_loss": 1.0 - acc, "best_val_acc": acc},
                         "test_metrics": {"test_loss": 1.2 - acc}})
    recs.append(dict(recs[0], seed=9, status="failed", error="exit code 1: boom",
                     metrics=dict(recs[0]["metrics"], best=math.nan, final=math.nan)))
    return recs


def test_differences_against_scipy_and_csv_roundtrip(tmp_path):
    recs = _records()
    rows = report.differences(recs, "gelu", extra=["final_val_loss"])
    by = {(r["activation"], r["quantity"]): r for r in rows}
    assert set(by) == {(a, q) for a in ("crrelu", "relu")
                       for q in ("best val_acc", "final val_acc", "test_loss", "final_val_loss")}
    for (label, quantity), r in by.items():
        get = {"best val_acc": lambda x: x["metrics"]["best"], "final val_acc": lambda x: x["metrics"]["final"],
               "test_loss": lambda x: x["test_metrics"]["test_loss"],
               "final_val_loss": lambda x: x["metrics"]["final_val_loss"]}[quantity]
        a = [get(x) for x in recs if x["label"] == label and x["status"] == "ok"]
        b = [get(x) for x in recs if x["label"] == "gelu" and x["status"] == "ok"]  # the failed run is left out
        ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert (r["n"], r["n_baseline"]) == (3, 3)
        assert r["ci_low"] == pytest.approx(ci.low, abs=1e-12) and r["ci_high"] == pytest.approx(ci.high, abs=1e-12)
    # +0.02 accuracy at sd 0.003 is resolved (better); lower loss is better; relu's +0.001 is not resolved
    assert by[("crrelu", "best val_acc")]["reading"] == "better" and by[("crrelu", "test_loss")]["reading"] == "better"
    assert by[("crrelu", "final_val_loss")]["mode"] == "min" and by[("relu", "best val_acc")]["reading"] == "not resolved"
    with pytest.raises(ValueError, match="--baseline 'silu' is not one of"):
        report.differences(recs, "silu")

    # results.csv -> records -> results.csv is the identity, and the summary table is the same
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    report.write_csv(recs, first)
    again = report.records_from_csv(first)
    report.write_csv(again, second)
    assert second.read_text() == first.read_text()
    assert report.summary_table(again) == report.summary_table(recs)
    with pytest.raises(ValueError, match="does not exist"):
        report.records_from_csv(tmp_path / "nope.csv")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    shim = tmp_path / "fakepython"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TESTS / "compare_fake.py"}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer: {max_epochs: 3}\n")
    return ["--config", str(cfg), "--out", str(tmp_path / "out"), "--python", str(shim), "--no-check-activations"]


def test_compare_baseline_writes_interval_columns(fake, tmp_path, capsys):
    out = tmp_path / "out"
    argv = fake + ["--activations", "good_gelu,good_crrelu", "--seeds", "0,1,2", "--baseline", "good_gelu"]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader(open(out / "differences.csv")))
    assert list(rows[0]) == ["activation", "baseline", "quantity", "mode", "n", "n_baseline", "diff", "ci_low",
                             "ci_high", "df", "p", "reading"]
    best = next(r for r in rows if r["quantity"] == "best val_acc")
    f32 = lambda x: float(np.float32(x))  # noqa: E731  (TensorBoard stores float32)
    a = [f32(base("good_crrelu", s) + 0.3) for s in range(3)]
    b = [f32(base("good_gelu", s) + 0.3) for s in range(3)]
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (best["activation"], best["n"], best["n_baseline"]) == ("good_crrelu", "3", "3")
    assert float(best["ci_low"]) == pytest.approx(ci.low, abs=1e-9)
    assert float(best["ci_high"]) == pytest.approx(ci.high, abs=1e-9)
    assert best["reading"] == "not resolved"  # +0.002 against a seed spread of 0.01
    summary = (out / "summary.md").read_text()
    assert "## Difference from `good_gelu`" in summary and "95 % CI (Welch)" in summary

    # the same report from results.csv alone, into another folder
    assert cli.main(["--report-csv", str(out / "results.csv"), "--baseline", "good_gelu",
                     "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "differences.csv").read_text() == (out / "differences.csv").read_text()
    capsys.readouterr()
    assert cli.main(argv[:-1] + ["relu"]) == 2
    assert "--baseline 'relu' is not one of --activations" in capsys.readouterr().err
