"""benchmarks/eafo_speed.py: the multi-process step table aggregates what its children measured."""
import importlib.util
import os
import re

import numpy as np
from scipy import stats


def _load():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "eafo_speed.py")
    spec = importlib.util.spec_from_file_location("eafo_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_runs_mean_and_t_interval_follow_the_per_process_medians():
    bench = _load()
    args = bench.parse_args(["--part", "step", "--processes", "3", "--repeats", "2", "--warmup", "0",
                             "--batch-size", "2", "--modes", "eager"])
    table = bench.step_runs(args)
    row = next(line for line in table.splitlines() if line.startswith("| eager"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    meds = np.array([float(c.split()[0]) for c in cells[1:4]])
    assert all(0.2 < m < 5 for m in meds)  # a ratio of two step times, not garbage
    mean, interval = float(cells[4]), [float(v) for v in re.findall(r"-?\d+\.\d+", cells[5])]
    half = stats.t.ppf(0.975, 2) * meds.std(ddof=1) / np.sqrt(3)
    assert abs(mean - meds.mean()) < 2e-3  # medians are printed to 3 decimals
    assert abs(interval[0] - (meds.mean() - half)) < 5e-3 and abs(interval[1] - (meds.mean() + half)) < 5e-3


def test_processes_must_be_positive(capsys):
    bench = _load()
    try:
        bench.parse_args(["--processes", "0"])
    except SystemExit as err:
        assert err.code == 2
    assert "--processes must be >= 1, got 0" in capsys.readouterr().err
