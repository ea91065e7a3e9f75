"""ActivationEntropyMonitor in one process: values, logging, TensorBoard, NaN handling, resume."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from test_monitor_support import MemoryLogger, TinyNet, regression_data

from crrelu_lightning.callbacks import ActivationEntropyMonitor
from crrelu_lightning.entropy import HistogramEstimator


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


def test_logged_values_match_an_independent_histogram(tmp_path):
    # Step 0 (weights untouched yet): recompute every layer's outputs and inputs by hand.
    seed_everything(0)
    model = TinyNet(act1="relu", act2="gelu")
    reference = copy.deepcopy(model)
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=3, max_samples_per_call=None, lo=-4, hi=4, bins=80, record_inputs=True)
    _trainer(tmp_path, mon, logger, max_steps=6).fit(model, _loader())
    logged = logger.by_step("")
    assert sorted(s for s in logged if any(k.startswith("entropy/") for k in logged[s])) == [0, 3]
    x, _ = next(iter(_loader()))
    with torch.no_grad():
        pre1 = reference.fc1(x)
        out1 = reference.act1(pre1)
        pre2 = reference.fc2(out1)
        out2 = reference.act2(pre2)
    for name, tensor in (("act1", out1), ("act2", out2), ("act1.input", pre1), ("act2.input", pre2)):
        est = HistogramEstimator(-4, 4, bins=80)
        est.update(tensor)
        ref = est.compute()
        assert logged[0][f"entropy/{name}"] == pytest.approx(float(ref["entropy"]), rel=1e-6)
        assert logged[0][f"p0/{name}"] == pytest.approx(float(ref["zero_fraction"]), rel=1e-6)
        assert logged[0][f"out_of_range/{name}"] == pytest.approx(float(ref["out_of_range_fraction"]), abs=1e-9)
    assert logged[0]["p0/act1"] > 0.2  # ReLU's atom is seen
    assert logged[0]["p0/act2"] == 0.0


def test_training_is_bit_identical_with_the_monitor(tmp_path):
    # Dropout draws from the global RNG: any use of it by the monitor would change the weights.
    params = []
    for with_monitor in (False, True):
        seed_everything(0)
        model = TinyNet(dropout=0.3)
        mon = ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=8, bins=50, lo=-5, hi=5) if with_monitor else None
        _trainer(tmp_path, mon, max_steps=6).fit(model, _loader())
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_tensorboard_event_files_hold_scalar_histogram_and_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    mon = ActivationEntropyMonitor(every_n_steps=2, log_histograms_every_n_steps=2, log_image_every_n_steps=4, bins=100, lo=-5, hi=5)
    _trainer(tmp_path, mon, logger, max_steps=6).fit(TinyNet(), _loader())
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for layer in ("act1", "act2"):
        for kind in ("entropy", "p0", "out_of_range", "nonfinite"):
            assert f"{kind}/{layer}" in tags["scalars"]
        assert f"entropy_hist/{layer}" in tags["histograms"]
    assert [e.step for e in acc.Scalars("entropy/act1")] == [0, 2, 4]
    assert [e.step for e in acc.Histograms("entropy_hist/act2")] == [0, 2, 4]
    assert "entropy/distributions" in tags["images"]
    images = acc.Images("entropy/distributions")
    assert [e.step for e in images] == [0, 4] and images[0].width > 100
    # The raw histogram holds the sampled values: 2 collections × 16×16 outputs capped at 4096 per call.
    hist = acc.Histograms("entropy_hist/act1")[1].histogram_value
    assert hist.num == 16 * 16


def test_callback_metrics_and_validation(tmp_path):
    mon = ActivationEntropyMonitor(every_n_steps=2, on_validation=True, log_histograms_every_n_steps=None, log_image_every_n_steps=None)
    trainer = _trainer(tmp_path, mon, MemoryLogger(), max_steps=4, val_check_interval=2, limit_val_batches=2)
    trainer.fit(TinyNet(), _loader(), _loader())
    cm = trainer.callback_metrics
    for key in ("entropy/act1", "p0/act1", "out_of_range/act2", "val_entropy/act1", "val_p0/act2"):
        assert key in cm and torch.isfinite(cm[key])
    val_steps = sorted(trainer.logger.by_step("val_entropy/"))
    assert val_steps == [2, 4]


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
    mon = ActivationEntropyMonitor(every_n_steps=2, log_histograms_every_n_steps=1000, log_image_every_n_steps=None)
    _trainer(tmp_path, mon, MemoryLogger(), max_steps=4, accumulate_grad_batches=3).fit(TinyNet(), _loader())
    state = mon.state_dict()
    # Collections at steps 0 and 2, 3 micro-batches each, 16×16 values per act1 call; the histogram
    # logged at step 0 reset the accumulator, so it holds step 2 only.
    assert state["collections"] == 2
    assert int(state["hist_counts"][0].sum()) == 3 * 16 * 16


def test_include_exclude_and_bad_arguments(tmp_path):
    mon = ActivationEntropyMonitor(include=["act*"], exclude=["act2"], log_image_every_n_steps=None, every_n_steps=1)
    logger = MemoryLogger()
    _trainer(tmp_path, mon, logger, max_steps=1).fit(TinyNet(), _loader())
    assert set(logger.by_step()[0]) == {"entropy/act1"}
    with pytest.raises(ValueError, match=r"lo=3\.0, hi=1\.0"):
        ActivationEntropyMonitor(lo=3, hi=1)
    with pytest.raises(ValueError, match=r"bins=1"):
        ActivationEntropyMonitor(bins=1)
    with pytest.raises(ValueError, match=r"every_n_steps must be a positive integer, got 0"):
        ActivationEntropyMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"max_samples_per_call.*-5"):
        ActivationEntropyMonitor(max_samples_per_call=-5)
    with pytest.raises(ValueError, match=r"\['nope\*'\] match no activation"):
        _trainer(tmp_path, ActivationEntropyMonitor(include=["nope*"])).fit(TinyNet(), _loader())


def _resume_run(tmp_path, max_epochs, ckpt=None, save=None):
    seed_everything(0)
    logger = MemoryLogger()
    mon = ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=32, lo=-5, hi=5, bins=50,
                                   log_histograms_every_n_steps=4, log_image_every_n_steps=4)
    trainer = _trainer(tmp_path, mon, logger, max_steps=-1, max_epochs=max_epochs)
    trainer.fit(TinyNet(), _loader(), ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    return logger, mon


def test_resume_continues_the_uninterrupted_run(tmp_path):
    # 6 batches per epoch: histogram/image due at steps 0, 4, 8; the checkpoint after epoch 1 holds
    # the accumulated counts of step 5, which must reappear in the step-8 histogram after resuming.
    full_log, full_mon = _resume_run(tmp_path, 2)
    ckpt = str(tmp_path / "epoch1.ckpt")
    _resume_run(tmp_path, 1, save=ckpt)
    resumed_log, resumed_mon = _resume_run(tmp_path, 2, ckpt=ckpt)

    full, resumed = full_log.by_step(""), resumed_log.by_step("")
    assert sorted(resumed) == list(range(6, 12))
    for step in range(6, 12):
        assert resumed[step] == full[step]
    full_hist = {(t, s): kw["bucket_counts"] for t, s, kw in full_log.experiment.histograms}
    resumed_hist = {(t, s): kw["bucket_counts"] for t, s, kw in resumed_log.experiment.histograms}
    assert set(resumed_hist) == {("entropy_hist/act1", 8), ("entropy_hist/act2", 8)}
    for key, counts in resumed_hist.items():
        assert counts == full_hist[key]
        assert sum(counts) == 4 * 32  # steps 5..8, 32 samples each (act values are all in range)
    assert [s for _, s, _ in resumed_log.experiment.images] == [8]
    a, b = full_mon.state_dict(), resumed_mon.state_dict()
    assert a["collections"] == b["collections"] == 12
    assert torch.equal(a["hist_counts"], b["hist_counts"]) and torch.equal(a["image_counts"], b["image_counts"])


def test_mismatched_checkpoint_state_is_ignored_with_a_warning(tmp_path):
    mon = ActivationEntropyMonitor(every_n_steps=1, log_image_every_n_steps=None)
    _trainer(tmp_path, mon, max_steps=1).fit(TinyNet(), _loader())
    state = mon.state_dict()
    other = ActivationEntropyMonitor(every_n_steps=1, bins=100, log_image_every_n_steps=None)
    other.load_state_dict(state)
    with pytest.warns(UserWarning, match="does not match"):
        _trainer(tmp_path, other, max_steps=1).fit(TinyNet(), _loader())
