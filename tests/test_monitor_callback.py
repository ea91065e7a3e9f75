"""ActivationEntropyMonitor in one process: wiring, logging (TensorBoard and CSV), NaN handling, resume."""
from __future__ import annotations

import copy
import csv
import math
import warnings

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from test_monitor_support import MemoryLogger, TinyNet, regression_data
from torch import nn

from crrelu_lightning.callbacks import ActivationEntropyMonitor
from crrelu_lightning.entropy import CellHistogram, HistogramEstimator, entropies_from_cells


def _trainer(tmp_path, monitor, logger=None, **kw):
    kw.setdefault("max_steps", 6)
    return Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[monitor] if monitor is not None else [],
        logger=logger if logger is not None else False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **kw,
    )


def _loader(batch_size=16, n=96):
    return torch.utils.data.DataLoader(regression_data(n), batch_size=batch_size, shuffle=False)


def _np_f(module):
    module = copy.deepcopy(module).double()

    def f(x):
        with torch.no_grad():
            return module.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()

    return f


def test_logged_values_match_a_hand_computation_of_step_0(tmp_path):
    # Step 0 (weights untouched yet): recompute every layer's inputs and outputs by hand.
    seed_everything(0)
    model = TinyNet(act1="relu", act2="gelu")
    reference = copy.deepcopy(model)
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=3, max_samples_per_call=None, estimators=["whole_line", "branch", "plugin"],
                                   lo=-4, hi=4, bins=80)
    _trainer(tmp_path, mon, logger, max_steps=6).fit(model, _loader())
    logged = logger.by_step("")
    assert sorted(s for s in logged if any(k.startswith("entropy/") for k in logged[s])) == [0, 3]
    x, _ = next(iter(_loader()))
    with torch.no_grad():
        pre1 = reference.fc1(x)
        out1 = reference.act1(pre1)
        pre2 = reference.fc2(out1)
        out2 = reference.act2(pre2)
    for name, pre, out, act, b in (("act1", pre1, out1, reference.act1, 0.0), ("act2", pre2, out2, reference.act2, -0.7517916243)):
        cells = CellHistogram(1)
        cells.update(pre)
        ref = entropies_from_cells(cells.state_tensor()[0].numpy(), _np_f(act), branch_start=b)
        assert logged[0][f"entropy/{name}"] == pytest.approx(ref["whole_line"], rel=1e-9)
        assert logged[0][f"entropy_branch/{name}"] == pytest.approx(ref["branch"], rel=1e-9)
        assert logged[0][f"entropy_input/{name}"] == pytest.approx(ref["input"], rel=1e-9)
        plug = HistogramEstimator(-4, 4, bins=80)
        plug.update(out)
        assert logged[0][f"entropy_plugin_d0.1/{name}"] == pytest.approx(float(plug.compute()["entropy"]), rel=1e-9)
    assert logged[0]["p0/act1"] > 0.2  # ReLU's atom is seen
    assert logged[0]["p0/act2"] == 0.0


def test_training_is_bit_identical_with_the_monitor(tmp_path):
    # Dropout draws from the global RNG: any use of it by the monitor would change the weights.
    params = []
    for with_monitor in (False, True):
        seed_everything(0)
        model = TinyNet(dropout=0.3)
        mon = ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=8, estimators=["whole_line", "plugin"]) if with_monitor else None
        _trainer(tmp_path, mon, max_steps=6).fit(model, _loader())
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_tensorboard_event_files_hold_scalars_histograms_and_one_image_per_due_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    mon = ActivationEntropyMonitor(every_n_steps=2, log_histograms_every_n_steps=2, log_image_every_n_steps=4)
    _trainer(tmp_path, mon, logger, max_steps=6).fit(TinyNet(), _loader())
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for layer in ("act1", "act2"):
        for kind in ("entropy", "entropy_branch", "entropy_input", "p0", "nonfinite"):
            assert f"{kind}/{layer}" in tags["scalars"]
        assert f"entropy_hist/{layer}" in tags["histograms"]
    assert [e.step for e in acc.Scalars("entropy/act1")] == [0, 2, 4]
    assert [e.step for e in acc.Histograms("entropy_hist/act2")] == [0, 2, 4]
    images = acc.Images("entropy/distributions")
    assert [e.step for e in images] == [0, 4]
    assert 0.5 <= images[0].width / images[0].height <= 2.0  # near-square, not a strip
    # One collection's inputs: 16×16 values per call (below the 4096 cap).
    assert acc.Histograms("entropy_hist/act1")[1].histogram_value.num == 16 * 16


def test_csv_logger_gets_every_scalar_and_no_error(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    mon = ActivationEntropyMonitor(every_n_steps=2, log_histograms_every_n_steps=1, log_image_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, mon, logger, max_steps=4).fit(TinyNet(), _loader())
    assert not [w for w in caught if "ActivationEntropyMonitor" in str(w.message)]  # CSV simply has no images
    logger.save()
    with open(f"{logger.log_dir}/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    steps = sorted({int(r["step"]) for r in rows if r.get("entropy/act1")})
    assert steps == [0, 2]
    assert all(math.isfinite(float(r["entropy_branch/act2"])) for r in rows if r.get("entropy_branch/act2"))


def test_callback_metrics_and_validation(tmp_path):
    mon = ActivationEntropyMonitor(every_n_steps=2, on_validation=True, log_histograms_every_n_steps=None, log_image_every_n_steps=None)
    trainer = _trainer(tmp_path, mon, MemoryLogger(), max_steps=4, val_check_interval=2, limit_val_batches=2)
    trainer.fit(TinyNet(), _loader(), _loader())
    cm = trainer.callback_metrics
    for key in ("entropy/act1", "p0/act1", "entropy_branch/act2", "val_entropy/act1", "val_p0/act2", "val_entropy_branch/act1"):
        assert key in cm and torch.isfinite(cm[key])
    assert sorted(trainer.logger.by_step("val_entropy/")) == [2, 4]


def test_all_nan_layer_warns_and_training_goes_on(tmp_path):
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=2, log_image_every_n_steps=None)
    trainer = _trainer(tmp_path, mon, logger, max_steps=4)
    with pytest.warns(UserWarning, match=r"layer 'bad'.*NaN"):
        trainer.fit(TinyNet(nan_branch=True), _loader())
    assert trainer.global_step == 4
    step0 = logger.by_step("")[0]
    assert step0["nonfinite/bad"] == 16 * 16
    assert math.isnan(step0["entropy/bad"])
    assert math.isfinite(step0["entropy/act1"])


def test_gradient_accumulation_collects_every_micro_batch(tmp_path):
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=2, log_histograms_every_n_steps=1, log_image_every_n_steps=None)
    _trainer(tmp_path, mon, logger, max_steps=4, accumulate_grad_batches=3).fit(TinyNet(), _loader())
    hists = {(t, s): kw for t, s, kw in logger.experiment.histograms}
    # Collections at steps 0 and 2, 3 micro-batches each, 16×16 inputs per act1 call.
    assert sorted(s for t, s in hists if t == "entropy_hist/act1") == [0, 2]
    assert hists[("entropy_hist/act1", 2)]["num"] == 3 * 16 * 16
    assert int(mon.last_counts[0].sum()) == 3 * 16 * 16


class _SoftmaxNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.soft = nn.Softmax(dim=-1)

    def forward(self, x):
        out = super().forward(x)
        self.soft(self.fc1(x))
        return out


def test_a_non_elementwise_module_gets_the_entropy_of_its_outputs_and_no_branch(tmp_path):
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=None, log_image_every_n_steps=None)
    model = _SoftmaxNet()
    _trainer(tmp_path, mon, logger, max_steps=1).fit(model, _loader())
    step0 = logger.by_step("")[0]
    assert "entropy_branch/soft" not in step0 and "entropy_branch/act1" in step0
    assert math.isfinite(step0["entropy/soft"]) and step0["entropy/soft"] < 0  # values in (0, 1): a narrow density


def test_plugin_truncation_warning_uses_the_estimated_bias(tmp_path):
    # act1 is ReLU of N(0, ~1) values: with [lo, hi) = [-1, 1) about 16 % of the outputs overflow.
    mon = ActivationEntropyMonitor(every_n_steps=1, estimators=["whole_line", "plugin"], lo=-1, hi=1, bins=40, log_image_every_n_steps=None)
    with pytest.warns(UserWarning, match=r"estimated truncation bias of entropy_plugin_d0.05 ≈"):
        _trainer(tmp_path, mon, MemoryLogger(), max_steps=1).fit(TinyNet(), _loader())
    quiet = ActivationEntropyMonitor(every_n_steps=1, estimators=["whole_line", "plugin"], lo=-50, hi=50, bins=1000, log_image_every_n_steps=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*truncation.*")
        _trainer(tmp_path, quiet, MemoryLogger(), max_steps=1).fit(TinyNet(), _loader())


def test_include_exclude_and_bad_arguments(tmp_path):
    mon = ActivationEntropyMonitor(include=["act*"], exclude=["act2"], log_image_every_n_steps=None, every_n_steps=1)
    logger = MemoryLogger()
    _trainer(tmp_path, mon, logger, max_steps=1).fit(TinyNet(), _loader())
    assert set(logger.by_step()[0]) == {"entropy/act1"}
    with pytest.raises(ValueError, match=r"lo=3\.0, hi=1\.0"):
        ActivationEntropyMonitor(lo=3, hi=1)
    with pytest.raises(ValueError, match=r"bins=1"):
        ActivationEntropyMonitor(bins=1)
    with pytest.raises(ValueError, match=r"every_n_steps must be an integer >= 1, got 0"):
        ActivationEntropyMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"max_samples_per_call.*-5"):
        ActivationEntropyMonitor(max_samples_per_call=-5)
    with pytest.raises(ValueError, match=r"estimators must be.*'histogram'"):
        ActivationEntropyMonitor(estimators=["histogram"])
    with pytest.raises(ValueError, match=r"\['nope\*'\] match no activation"):
        _trainer(tmp_path, ActivationEntropyMonitor(include=["nope*"])).fit(TinyNet(), _loader())


def _resume_run(tmp_path, max_epochs, ckpt=None, save=None):
    seed_everything(0)
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=32, log_histograms_every_n_steps=4, log_image_every_n_steps=4)
    trainer = _trainer(tmp_path, mon, logger, max_steps=-1, max_epochs=max_epochs)
    trainer.fit(TinyNet(), _loader(), ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    return logger, mon


def test_resume_continues_the_uninterrupted_run(tmp_path):
    # 6 batches per epoch: histogram/image due at steps 0, 4, 8 (the checkpoint after epoch 1 keeps "last was 4").
    full_log, _ = _resume_run(tmp_path, 2)
    ckpt = str(tmp_path / "epoch1.ckpt")
    _resume_run(tmp_path, 1, save=ckpt)
    resumed_log, _ = _resume_run(tmp_path, 2, ckpt=ckpt)
    full, resumed = full_log.by_step(""), resumed_log.by_step("")
    assert sorted(resumed) == list(range(6, 12))
    for step in range(6, 12):
        assert resumed[step] == full[step]
    full_hist = {(t, s): kw["bucket_counts"] for t, s, kw in full_log.experiment.histograms}
    resumed_hist = {(t, s): kw["bucket_counts"] for t, s, kw in resumed_log.experiment.histograms}
    assert set(resumed_hist) == {("entropy_hist/act1", 8), ("entropy_hist/act2", 8)}
    for key, counts in resumed_hist.items():
        assert counts == full_hist[key] and sum(counts) == 32
    assert [s for _, s, _ in resumed_log.experiment.images] == [8]


def test_mismatched_checkpoint_state_is_ignored_with_a_warning(tmp_path):
    mon = ActivationEntropyMonitor(every_n_steps=1, log_image_every_n_steps=None)
    _trainer(tmp_path, mon, max_steps=1).fit(TinyNet(), _loader())
    state = mon.state_dict()
    other = ActivationEntropyMonitor(every_n_steps=1, include=["act1"], log_image_every_n_steps=None)
    other.load_state_dict(state)
    with pytest.warns(UserWarning, match="does not match"):
        _trainer(tmp_path, other, max_steps=1).fit(TinyNet(), _loader())
