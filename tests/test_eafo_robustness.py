"""Dynamic EAFO under bad numbers: non-finite inputs, non-monotone ε, NaN gradients, huge sums.

References are computed here in float64 numpy / Python integers, never by the estimator itself."""
import math
import warnings

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from crrelu_lightning.callbacks.eafo import EAFOCallback
from crrelu_lightning.entropy import eafo as E
from crrelu_lightning.entropy.branch_estimator import COLUMNS, NONFINITE, BranchSumEstimator, branch_sums

from test_eafo_callback import RecordingLogger, TinyCR, _trainer


def _kd(x, s=1.0):
    return (1 - x * x / s**2) * np.exp(-x * x / (2 * s**2))


def _reference(x, eps, b0=0.0, sigma=1.0):
    """Float64 numpy reference for ReLU: S/N, D/N, N over finite x > b0; mean/std/M over finite x."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    xb = x[x > b0]
    fp = 1 + eps * _kd(xb, sigma)
    return {"dH_deps": np.mean(_kd(xb, sigma) / fp), "delta_entropy": np.mean(np.log(fp)), "count": xb.size,
            "mean": x.mean(), "std": x.std(), "total": x.size}


# ----------------------------------------------------------------------------- the estimator
def test_fixed_point_sums_match_a_float64_reference():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.7 + 0.2
    for eps in (-0.6, 0.01, 1.3):
        got = E.decode_sums(branch_sums(x, "relu", torch.tensor(eps, dtype=torch.float64), 1.0, 0.0))
        ref = _reference(x.numpy(), eps)
        for key in ("dH_deps", "delta_entropy", "mean", "std"):
            assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
        assert got["count"] == ref["count"] and got["total"] == ref["total"] and got["nonfinite"] == 0


def test_nonfinite_inputs_are_left_out_of_every_sum():
    clean = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    dirty = clean.clone()
    dirty[[3, 70, 900, 4000]] = torch.tensor([math.nan, math.inf, -math.inf, math.nan])
    kept = torch.cat([clean[:3], clean[4:70], clean[71:900], clean[901:4000], clean[4001:]])
    eps = torch.tensor(0.4)
    with_bad = branch_sums(dirty, "relu", eps, 1.0, 0.0)
    without = branch_sums(kept, "relu", eps, 1.0, 0.0)
    assert torch.equal(with_bad[:NONFINITE], without[:NONFINITE])  # S, D, Σx, Σx², N, M: only finite inputs
    assert int(with_bad[NONFINITE]) == 4 and int(without[NONFINITE]) == 0
    got, ref = E.decode_sums(with_bad), _reference(dirty.numpy(), 0.4)
    assert got["dH_deps"] == pytest.approx(ref["dH_deps"], rel=1e-6) and got["total"] == 4996
    # all inputs non-finite: nothing is estimated, nothing is NaN in the state
    allbad = branch_sums(torch.full((10,), math.nan), "relu", eps, 1.0, 0.0)
    assert int(allbad[NONFINITE]) == 10 and int(allbad[:NONFINITE].abs().sum()) == 0
    assert math.isnan(E.decode_sums(allbad)["dH_deps"])


def test_moment_sums_do_not_overflow_at_1e10_samples_and_abs_x_1e4():
    """1e10 samples with |x| up to 1e4: N·E[x²] ≈ 3.3e17, far past the 8.8e12 where a single int64 column
    with 2^20 resolution wraps. The state of 10^10 samples is 10^4 times the state of these 10^6
    (integer sums are linear), so decoding it must give this batch's moments again."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(1_000_000, generator=gen, dtype=torch.float64) * 2 - 1) * 1e4
    x[:4] = torch.tensor([1e4, -1e4, 9999.5, -9999.5])
    one = branch_sums(x, "relu", torch.tensor(-0.3, dtype=torch.float64), 1.0, 0.0)
    huge = one * 10_000  # int64 arithmetic: exactly the sums of 1e10 such samples
    ref_x2 = float((x * x).sum()) * 1e4
    assert ref_x2 > 2.0**63 / 2.0**20  # the old representation would have wrapped here
    got, ref = E.decode_sums(huge), _reference(x.numpy(), -0.3)
    assert got["total"] == 10**10 and got["count"] == ref["count"] * 10_000
    assert got["mean"] == pytest.approx(ref["mean"], rel=1e-9, abs=1e-9)
    assert got["std"] == pytest.approx(ref["std"], rel=1e-12)
    assert got["dH_deps"] == pytest.approx(ref["dH_deps"], rel=1e-12)
    assert got["delta_entropy"] == pytest.approx(ref["delta_entropy"], rel=1e-12)
    # the per-column headroom: 2^42 samples of the largest per-sample limb still fit in int64
    assert int(huge[:NONFINITE].abs().max()) < 2**63 // 400


def test_nonmonotone_eps_is_counted_not_summed():
    x = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    eps = -1.5  # outside (−1, 2.2408): f' = 1 + ε k' ≤ 0 near 0⁺
    st = E.decode_sums(branch_sums(x, "relu", torch.tensor(eps), 1.0, 0.0))
    xn = x.numpy()
    bad = (xn > 0) & (1 + eps * _kd(xn) <= 0)
    good = (xn > 0) & ~bad
    assert st["nonmonotone"] == int(bad.sum()) > 0 and st["count"] == int(good.sum())
    assert st["dH_deps"] == pytest.approx(np.mean(_kd(xn[good]) / (1 + eps * _kd(xn[good]))), rel=1e-10)
    nan_eps = E.decode_sums(branch_sums(x, "relu", torch.tensor(math.nan), 1.0, 0.0))
    assert nan_eps["count"] == 0 and nan_eps["nonmonotone"] == int((xn > 0).sum())


def test_estimator_class_rows_merge_reset_and_compute():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(3000, generator=gen), 2 * torch.randn(2000, generator=gen) - 0.5
    est = BranchSumEstimator(["relu", "gelu"])
    est.update(a[:1000], torch.tensor(0.2), index=0)
    est.update(a[1000:], torch.tensor(0.2), index=0)
    est.update(b, 0.1, sigma=1.5, index=1)
    assert est.state_tensor().shape == (2, COLUMNS) and est.state_tensor().dtype == torch.int64
    out = est.compute()
    assert out["dH_deps"].shape == (2,)
    assert float(out["dH_deps"][0]) == pytest.approx(_reference(a.numpy(), 0.2)["dH_deps"], rel=1e-6)
    b0 = E.branch_cut("gelu")
    bb = b.double().numpy()
    bb = bb[bb > b0]
    g = E.base_slope("gelu", bb)
    ref_g = np.mean(_kd(bb, 1.5) / (g + 0.1 * _kd(bb, 1.5)))
    assert float(out["dH_deps"][1]) == pytest.approx(ref_g, rel=1e-6)
    other = BranchSumEstimator(["relu", "gelu"])
    other.load_state_tensor(est.state_tensor().clone())
    est.merge(other)
    assert torch.equal(est.state_tensor(), 2 * other.state_tensor())
    est.reset()
    assert int(est.state_tensor().abs().sum()) == 0 and math.isnan(float(est.compute()["dH_deps"][0]))
    single = BranchSumEstimator("relu")
    single.update(a, 0.2, max_samples=100, generator=torch.Generator().manual_seed(0))
    assert single.compute()["total"].shape == () and int(single.compute()["total"]) == 100
    with pytest.raises(ValueError, match="cannot merge"):
        est.merge(BranchSumEstimator(["relu", "relu"]))
    with pytest.raises(IndexError):
        single.update(a, 0.2, index=1)
    with pytest.raises(ValueError, match="unknown CR base"):
        BranchSumEstimator("tanh")


# ----------------------------------------------------------------------------- the callback
def _fit_on(data, cb, **kw):
    rec_log = RecordingLogger()
    model = kw.pop("model", None) or TinyCR(eps_init=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer([cb], logger=rec_log, **kw).fit(model, DataLoader(TensorDataset(data), batch_size=data.shape[0]))
    eafo_warnings = [str(w.message) for w in caught if str(w.message).startswith("EAFOCallback")]
    rows = [m for _, m in rec_log.rows if any(k.startswith("eafo/") for k in m)]
    return model, rows, eafo_warnings


def test_callback_ignores_nonfinite_inputs_warns_once_and_logs_the_count():
    data = torch.randn(256, 8, generator=torch.Generator().manual_seed(4))
    data[0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    cb = EAFOCallback(lr=0.5, max_samples_per_call=None, include=["act1"])
    model, rows, warned = _fit_on(data, cb, max_steps=1)
    ref = _reference(data.numpy().ravel(), float(torch.tensor(0.3)))  # ε is a float32 parameter
    assert float(model.act1.eps.detach()) == pytest.approx(0.3 - 0.5 * ref["dH_deps"], abs=1e-6)
    assert rows[0]["eafo/nonfinite/act1"] == 3 and rows[0]["eafo/skipped/act1"] == 0
    assert rows[0]["eafo/dH_deps/act1"] == pytest.approx(ref["dH_deps"], rel=1e-9)
    assert len(warned) == 1 and "3 non-finite inputs" in warned[0]


def test_collection_with_undefined_statistics_moves_no_eps():
    data = torch.full((64, 8), math.nan)
    cb = EAFOCallback(lr=0.5, max_samples_per_call=None, include=["act1"])
    model, rows, warned = _fit_on(data, cb, max_steps=4)
    assert float(model.act1.eps.detach()) == pytest.approx(0.3)
    assert [r["eafo/skipped/act1"] for r in rows] == [1, 2, 3, 4]
    assert all("eafo/dH_deps/act1" not in r for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert len([w for w in warned if "not finite" in w]) == 1  # once per layer per run
    assert len([w for w in warned if "512 non-finite inputs" in w]) == 1
    assert any("'undefined statistics' happened 4 times for layer 'act1'" in w for w in warned)


def test_eps_outside_the_monotone_interval_moves_no_eps():
    data = torch.randn(512, 8, generator=torch.Generator().manual_seed(5))
    cb = EAFOCallback(lr=0.5, eps_bounds=(-1.6, 2.0), max_samples_per_call=None, include=["act1"])
    model, rows, warned = _fit_on(data, cb, max_steps=2, model=TinyCR(eps_init=-1.5))
    assert float(model.act1.eps.detach()) == -1.5
    assert rows[-1]["eafo/skipped/act1"] == 2
    assert any("theory no longer applies" in w for w in warned) and any("f_eps' <= 0" in w for w in warned)


class _NaNGradient(L.Callback):
    """Poisons ε's gradient before the optimizer step of one step, as a diverging task loss would."""

    def __init__(self, at_step):
        self.at_step, self.before = at_step, None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.at_step:
            self.before = float(pl_module.act2.eps.detach())
            pl_module.act2.eps.grad = torch.full_like(pl_module.act2.eps, math.nan)


def test_eps_never_nan_in_memory_or_checkpoint(tmp_path):
    poison = _NaNGradient(at_step=2)
    cb = EAFOCallback(mode="regularize", lam=0.5, max_samples_per_call=None, include=["act2"])
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    log = RecordingLogger()
    model = TinyCR(eps_init=0.3, learnable=True)
    data = TensorDataset(torch.randn(64, 8, generator=torch.Generator().manual_seed(6)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer([cb, poison, ckpt], max_steps=4, logger=log, enable_checkpointing=True).fit(
            model, DataLoader(data, batch_size=16))
    eps_logged = [m["eafo/eps/act2"] for _, m in log.rows if "eafo/eps/act2" in m]
    assert len(eps_logged) == 4 and all(math.isfinite(e) for e in eps_logged)
    assert eps_logged[2] == pytest.approx(poison.before, abs=0)  # the poisoned step left ε where it was
    assert [m["eafo/eps_repaired/act2"] for _, m in log.rows if "eafo/eps/act2" in m] == [0, 0, 1, 1]
    assert math.isfinite(float(model.act2.eps.detach()))
    for path in sorted(tmp_path.glob("*.ckpt")):
        eps = torch.load(path, weights_only=True)["state_dict"]["act2.eps"]
        assert torch.isfinite(eps).all(), path.name
    assert sum("non-finite (NaN/Inf gradient?)" in str(w.message) for w in caught) == 1
    # a checkpoint written between a NaN step and the repair gets the last finite ε too
    state = {"state_dict": {"act2.eps": torch.tensor(math.nan)}}
    cb._good_eps[0].fill_(0.25)
    cb.on_save_checkpoint(None, model, state)
    assert float(state["state_dict"]["act2.eps"]) == 0.25


def test_non_finite_eps_at_fit_start_is_a_clear_error():
    model = TinyCR(eps_init=0.3)
    with torch.no_grad():
        model.act1.eps.fill_(math.nan)
    with pytest.raises(ValueError, match=r"ε of layers \['act1'\] is not finite"):
        _trainer([EAFOCallback()], max_steps=1).fit(model, DataLoader(TensorDataset(torch.randn(8, 8)), batch_size=8))
