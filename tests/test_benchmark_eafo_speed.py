"""benchmarks/eafo_speed.py (the multi-process step table aggregates what its children measured; the rounds and
the optimizer) and benchmarks/after_kernel_latency.py (its table)."""
import importlib.util
import os
import re

import numpy as np
from scipy import stats


def _load(name="eafo_speed"):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
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


def test_rounds_call_every_case_once_per_round_in_shuffled_orders():
    bench = _load()
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    times = bench.round_robin(fns, warmup=2, repeats=6)
    assert {k: len(v) for k, v in times.items()} == {k: 6 for k in "abcd"}  # warm-up rounds are not timed
    first, rounds = calls[:4], [calls[4 + 4 * r: 8 + 4 * r] for r in range(8)]
    assert first == list("abcd") and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not one fixed order


def test_step_optimizer_is_the_demo_configs():
    import timm
    import torch
    import yaml

    import crrelu_lightning.models.presets  # noqa: F401
    from crrelu_lightning.activations import get_activation

    bench = _load()
    with open(bench.DEMO_CONFIG) as fh:
        init = yaml.safe_load(fh)["optimizer"]["init_args"]
    model = timm.create_model("vit_fmnist", act_layer=get_activation("eafo_gelu"))
    opt = bench.demo_optimizer(model)
    assert type(opt).__name__ == "AdamW" and all(g["lr"] == init["lr"] for g in opt.param_groups)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    eps = [p for n, p in model.named_parameters() if n.endswith(".act.eps")]
    assert len(eps) == 4 and all(decays[id(p)] == 0.0 for p in eps)  # ε is never decayed, as in the demo
    assert decays[id(model.blocks[0].mlp.fc1.weight)] == init["weight_decay"]
    assert len(decays) == sum(1 for _ in model.parameters())


def test_after_kernel_latency_prints_a_row_per_preceding_call(capsys):
    _load("after_kernel_latency").main(["--repeats", "3", "--numel", "4096", "--threads", "1"])  # conftest restores
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "µs" not in line]
    labels = [r.split("|")[1].strip() for r in rows]
    assert labels[:4] == ["nothing", "a tiny op (torch.empty(16))", "ATen GELU forward", "ATen GELU backward"]
    assert all(float(c) > 0 for r in rows for c in r.strip("|").split("|")[1:])
