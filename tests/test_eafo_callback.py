"""EAFOCallback and its sample estimator, against the quadrature entropy (finite differences), a
second run (single process, no callback, uninterrupted) and the sign/bound facts of docs/eafo.md §2 and §4."""
import math
import os

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crrelu_lightning.callbacks.eafo import EAFOCallback
from crrelu_lightning.activations import build_activation
from crrelu_lightning.entropy import eafo as E


# ----------------------------------------------------------------------------- estimator
@pytest.mark.parametrize(
    "base,eps,mu,sigma,cr_sigma",
    [
        ("relu", -0.5, 0.0, 1.0, 1.0),
        ("relu", 0.3, 0.0, 1.6, 1.0),  # input σ ≠ 1
        ("relu", 1.2, 0.2, 1.0, 0.7),  # correction σ ≠ 1
        ("relu", -0.2, 0.0, 0.8, 1.5),
        ("gelu", 0.05, 0.0, 1.3, 1.2),
    ],
)
def test_sample_gradient_matches_quadrature_finite_differences(base, eps, mu, sigma, cr_sigma):
    gen = torch.Generator().manual_seed(1)
    x = mu + sigma * torch.randn(1_000_000, generator=gen)
    st = E.decode_sums(E.branch_sums(x, base, torch.tensor(eps), cr_sigma, E.branch_cut(base)))
    assert st["count"] == int((x > E.branch_cut(base)).sum()) and st["total"] == x.numel()
    dist, h = E.NormalInput(mu, sigma), 1e-4
    fd = (
        E.branch_record(base, dist, eps + h, cr_sigma)["delta_entropy"]
        - E.branch_record(base, dist, eps - h, cr_sigma)["delta_entropy"]
    ) / (2 * h)
    assert st["dH_deps"] == pytest.approx(fd, rel=0.02)
    ref_dh = E.branch_record(base, dist, eps, cr_sigma)["delta_entropy"]
    assert st["delta_entropy"] == pytest.approx(ref_dh, rel=0.02, abs=1e-3)
    assert st["mean"] == pytest.approx(float(x.double().mean()), abs=1e-6)
    assert st["std"] == pytest.approx(float(x.double().std()), rel=1e-5)


def test_sums_are_order_independent_and_accept_bf16():
    x = torch.randn(10_001, generator=torch.Generator().manual_seed(2))
    eps = torch.tensor(0.3)
    whole = E.branch_sums(x, "relu", eps, 1.0, 0.0)
    parts = E.branch_sums(x[:3000], "relu", eps, 1.0, 0.0) + E.branch_sums(x[3000:], "relu", eps, 1.0, 0.0)
    perm = E.branch_sums(x[torch.randperm(x.numel())], "relu", eps, 1.0, 0.0)
    assert torch.equal(whole, parts) and torch.equal(whole, perm)
    xb = x.bfloat16()
    assert torch.equal(E.branch_sums(xb, "relu", eps, 1.0, 0.0), E.branch_sums(xb.double(), "relu", eps, 1.0, 0.0))


# ----------------------------------------------------------------------------- a tiny model
class TinyCR(L.LightningModule):
    """x → CR → Linear → (CR) → Linear → squared loss. CR inputs of the first layer are the data itself."""

    def __init__(self, eps_init=0.5, learnable=False, d=8, lr=0.05, dropout=0.0, act="crrelu", out_dir=None):
        super().__init__()
        kw = {"eps_init": eps_init, "learnable": learnable} if act.startswith("cr") else {}
        self.act1 = build_activation(act, **kw)
        self.lin1 = nn.Linear(d, d)
        self.act2 = build_activation(act, **kw)
        self.drop = nn.Dropout(dropout)
        self.lin2 = nn.Linear(d, 1)
        self.lr, self.out_dir = lr, out_dir

    def training_step(self, batch, batch_idx):
        (x,) = batch
        y = self.lin2(self.drop(self.act2(self.lin1(self.act1(x)))))
        return (y - 1.0).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class EpsRecorder(L.Callback):
    def __init__(self):
        self.eps = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.eps.append(float(pl_module.act1.eps.detach()))


class RecordingLogger(L.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    name, version = "rec", 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def _data(n=64, d=8, seed=0):
    return TensorDataset(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def _trainer(callbacks, **kw):
    opts = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, max_steps=8)
    opts.update(kw)
    return L.Trainer(callbacks=callbacks, **opts)


# ----------------------------------------------------------------------------- step mode dynamics
@pytest.mark.parametrize("eps0,bound_index", [(0.5, 0), (1.9, 1)])
def test_step_mode_descends_branch_entropy_and_stops_at_bound(eps0, bound_index):
    """H_B is concave in ε (max near 1.5): descent from either side runs to the nearer bound."""
    bounds = (-0.9, 2.0)
    rec, log = EpsRecorder(), RecordingLogger()
    cb = EAFOCallback(mode="step", lr=0.6, eps_bounds=bounds, max_samples_per_call=None, include=["act1"])
    model = TinyCR(eps_init=eps0, learnable=False)
    _trainer([cb, rec], max_steps=12, logger=log).fit(model, DataLoader(_data(n=2048), batch_size=2048))
    traj = [eps0] + rec.eps
    # every update reaches the logger; the sample ΔH at the collection-time ε matches the quadrature value
    rows = [m for _, m in log.rows if "eafo/eps/act1" in m]
    assert len(rows) == 12 and [m["eafo/eps/act1"] for m in rows] == pytest.approx(rec.eps, abs=1e-7)
    for e, m in zip(traj, rows):
        assert m["eafo/delta_entropy/act1"] == pytest.approx(E.branch_record("relu", E.NormalInput(), e)["delta_entropy"], abs=0.02)
    assert all(bounds[0] <= e <= bounds[1] for e in traj)
    assert traj[-1] == pytest.approx(bounds[bound_index], abs=1e-7)
    h = [E.branch_record("relu", E.NormalInput(), e)["delta_entropy"] for e in traj]
    moving = [i for i in range(1, len(traj)) if traj[i] != traj[i - 1]]
    assert len(moving) >= 2 and all(h[i] < h[i - 1] for i in moving)
    assert traj[-1] == traj[-2]  # stopped at the bound
    assert cb.updates_done == 12


def test_regularize_mode_equals_step_mode_with_sgd():
    """ε gets no task gradient (its layer feeds a zero-weight path), so SGD(lr)·λ·S/N = step mode with η = lr·λ."""
    trajs = {}
    for mode in ("step", "regularize"):
        rec = EpsRecorder()
        cb = EAFOCallback(mode=mode, lr=0.05 * 2.0, lam=2.0, max_samples_per_call=None, include=["act1"])
        model = TinyCR(eps_init=0.3, learnable=True, lr=0.05)
        with torch.no_grad():
            model.lin1.weight.zero_()
        model.lin1.weight.requires_grad_(False)  # ε's task gradient is then exactly 0
        _trainer([cb, rec], max_steps=6).fit(model, DataLoader(_data(n=512), batch_size=512))
        trajs[mode] = rec.eps
    np.testing.assert_allclose(trajs["regularize"], trajs["step"], atol=1e-6)
    assert trajs["step"][-1] < 0.3 - 0.05


def test_gradient_accumulation_equals_large_batch():
    """2 micro-batches of 64 per step give the same integer sums, hence the same ε, as one batch of 128."""
    out = []
    for bs, acc in ((64, 2), (128, 1)):
        rec = EpsRecorder()
        cb = EAFOCallback(lr=0.5, max_samples_per_call=None, include=["act1"], every_n_steps=2, warmup_steps=1)
        _trainer([cb, rec], max_steps=5, accumulate_grad_batches=acc).fit(
            TinyCR(eps_init=0.2), DataLoader(_data(n=640), batch_size=bs)
        )
        out.append((rec.eps[acc - 1 :: acc], cb.updates_done))
    assert out[0] == out[1]
    assert out[0][1] == 2  # collection steps 1 and 3 of 0..4


def test_bf16_mixed_precision_runs_and_moves_eps():
    cb = EAFOCallback(mode="regularize", lam=1.0, include=["act2"])
    model = TinyCR(eps_init=0.1, learnable=True)
    _trainer([cb], max_steps=3, precision="bf16-mixed").fit(model, DataLoader(_data(n=96), batch_size=32))
    eps = float(model.act2.eps.detach())
    assert math.isfinite(eps) and eps < 0.1


# ----------------------------------------------------------------------------- loggers and warnings
def test_scalars_reach_a_csv_logger(tmp_path):
    """Any Lightning logger: the per-update scalars go through Logger.log_metrics (here CSVLogger)."""
    import csv

    rec = EpsRecorder()
    cb = EAFOCallback(lr=0.5, max_samples_per_call=None, include=["act1"], every_n_steps=2)
    logger = L.loggers.CSVLogger(tmp_path, name="csv")
    _trainer([cb, rec], max_steps=6, logger=logger).fit(TinyCR(eps_init=0.3), DataLoader(_data(n=64), batch_size=16))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    logged = [(int(r["step"]), float(r["eafo/eps/act1"])) for r in rows if r.get("eafo/eps/act1")]
    # collections at steps 0, 2, 4 are logged after their optimizer step (global_step 1, 3, 5)
    assert [s for s, _ in logged] == [1, 3, 5]
    assert [e for _, e in logged] == pytest.approx([rec.eps[0], rec.eps[2], rec.eps[4]], abs=1e-7)
    assert all(r.get("eafo/dH_deps/act1") for r in rows if r.get("eafo/eps/act1"))


@pytest.mark.parametrize("mode", ["step", "regularize"])
def test_normal_run_emits_no_eafo_warning(mode):
    """Learnable ε, subsampling, σ tracking, several updates: zero warnings from the callback."""
    import warnings

    cb = EAFOCallback(mode=mode, lr=0.1, lam=0.1, max_samples_per_call=50, track_sigma=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer([cb], max_steps=6).fit(TinyCR(eps_init=0.1, learnable=True), DataLoader(_data(n=96), batch_size=16))
    ours = [w for w in caught if "eafo" in w.filename.replace("\\", "/").split("/")[-1]
            or "EAFO" in str(w.message) or "requires_grad" in str(w.message)]
    assert cb.updates_done == 6
    assert ours == [], [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]


# ----------------------------------------------------------------------------- updates off: bit-identical
def test_updates_off_is_bit_identical_to_no_callback():
    """Shuffled data (global RNG), dropout (global RNG) and subsampling (callback's own generator)."""
    params = []
    for cbs in ([], [EAFOCallback(updates=False, max_samples_per_call=16, track_sigma=True)]):
        L.seed_everything(123, verbose=False)
        model = TinyCR(eps_init=0.01, learnable=True, dropout=0.3)
        loader = DataLoader(_data(n=256), batch_size=32, shuffle=True)
        trainer = _trainer(cbs, max_steps=12)
        trainer.fit(model, loader)
        params.append([p.detach().clone() for p in model.parameters()])
        if cbs:
            assert any(k.startswith("eafo/dH_deps/") for k in cbs[0].last_metrics)
            assert cbs[0].updates_done == 0 and model.act1.sigma == 1.0  # σ tracked but not applied
    assert all(torch.equal(a, b) for a, b in zip(*params))


# ----------------------------------------------------------------------------- resume
def test_resume_restores_state_and_eps(tmp_path):
    def make_cb():
        return EAFOCallback(mode="regularize", lam=0.5, max_samples_per_call=40, track_sigma=True, seed=7)

    def fit(max_epochs, ckpt=None, save=False):
        L.seed_everything(0, verbose=False)
        cb = make_cb()
        cbs = [cb]
        if save:
            cbs.append(L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1,
                                                   filename="{epoch}"))
        model = TinyCR(eps_init=0.2, learnable=True)
        _trainer(cbs, max_steps=-1, max_epochs=max_epochs, enable_checkpointing=save).fit(
            model, DataLoader(_data(n=96), batch_size=32), ckpt_path=ckpt
        )
        return model, cb

    full_model, full_cb = fit(2, save=True)
    ckpt = tmp_path / "epoch=0.ckpt"
    state = torch.load(ckpt, weights_only=True)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("EAFOCallback"))
    assert saved["updates_done"] == 3 and set(saved["running_sigma"]) == {"act1", "act2"}
    resumed_model, resumed_cb = fit(2, ckpt=str(ckpt))
    assert resumed_cb.updates_done == full_cb.updates_done == 6
    assert resumed_cb.running_sigma == full_cb.running_sigma
    snapped = 2.0 ** (round(16 * math.log2(full_cb.running_sigma["act2"])) / 16)  # σ grid of the compiled kernels
    assert resumed_model.act2.sigma == full_model.act2.sigma == snapped != 1.0
    for a, b in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        eps = _run_eafo_steps(rank, world)
        torch.save(eps, os.path.join(out_dir, f"eps_{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _run_eafo_steps(rank, world, steps=4, batch=48):
    """Plain-torch driver of the callback's hooks (no Lightning spawn: seconds, not tens of seconds)."""
    from types import SimpleNamespace

    data = _data(n=steps * batch * 2, seed=3).tensors[0]
    model = TinyCR(eps_init=0.4)
    cb = EAFOCallback(lr=0.7, max_samples_per_call=None, include=["act1", "act2"])
    def reduce(t, reduce_op="mean"):  # what Lightning's DDPStrategy.reduce does for reduce_op="sum"
        assert reduce_op == "sum"
        if world > 1:
            torch.distributed.all_reduce(t)
        return t

    strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce)
    trainer = SimpleNamespace(strategy=strategy, global_rank=rank,
                              global_step=0, is_global_zero=rank == 0, loggers=[])
    cb.setup(trainer, model, "fit")
    traj = []
    for step in range(steps):
        rows = data[step * 2 * batch : (step + 1) * 2 * batch]
        shard = rows if world == 1 else rows[rank::world]  # ranks see different halves
        cb.on_train_batch_start(trainer, model, None, step)
        with torch.no_grad():
            model.act1(shard)
            model.act2(2.0 * shard + 0.3)
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, model, None, None, step)
        # ε is float32, which would hide last-bit differences of the reduced statistic: record both
        g = [cb.last_metrics[f"eafo/dH_deps/{n}"] for n in ("act1", "act2")]
        traj.append(torch.tensor([float(model.act1.eps), float(model.act2.eps), *g], dtype=torch.float64))
    cb.teardown(trainer, model, "fit")
    return torch.stack(traj)


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"eps_{r}.pt") for r in (0, 1))
    single = _run_eafo_steps(0, 1)
    assert torch.equal(r0, r1) and torch.equal(r0, single)
    assert not torch.equal(single[0], single[-1])  # ε really moved


# ----------------------------------------------------------------------------- bad input
def test_bounds_outside_monotone_interval_warn():
    cb = EAFOCallback(eps_bounds=(-1.5, 2.0))
    with pytest.warns(UserWarning, match="theory no longer applies"):
        _trainer([cb], max_steps=1).fit(TinyCR(), DataLoader(_data(n=8), batch_size=8))


def test_no_cr_layer_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no CR layer.*act1: GELU"):
        _trainer([EAFOCallback()], max_steps=1).fit(TinyCR(act="gelu"), DataLoader(_data(n=8), batch_size=8))


def test_regularize_needs_learnable_eps():
    with pytest.raises(ValueError, match="learnable"):
        _trainer([EAFOCallback(mode="regularize")], max_steps=1).fit(
            TinyCR(learnable=False), DataLoader(_data(n=8), batch_size=8)
        )


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"mode": "adam"}, "mode must be one of"),
        ({"eps_bounds": (0.5, -0.5)}, "lo < hi"),
        ({"lr": -1.0}, "lr must be finite"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"max_samples_per_call": 0}, "max_samples_per_call"),
    ],
)
def test_constructor_validates(kw, msg):
    with pytest.raises(ValueError, match=msg):
        EAFOCallback(**kw)


class _DumpEps(L.Callback):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        eps = torch.stack([pl_module.act1.eps.detach(), pl_module.act2.eps.detach()])
        torch.save(eps, os.path.join(self.out_dir, f"lightning_eps_{trainer.global_rank}_{trainer.world_size}.pt"))


class _ShardedTinyCR(TinyCR):
    """Rank r reads rows r, r+W, ... in order (no shuffling), so W ranks together see one big batch."""

    def train_dataloader(self):
        from torch.utils.data.distributed import DistributedSampler

        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(_data(n=96, seed=5), num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(_data(n=96, seed=5), batch_size=32 // world, sampler=sampler)


def _lightning_eafo_fit(out_dir, devices):
    cbs = [
        EAFOCallback(mode="step", lr=0.5, max_samples_per_call=None, include=["act1"]),  # frozen ε: EAFO only
        EAFOCallback(mode="regularize", lam=0.5, max_samples_per_call=None, include=["act2"]),
        _DumpEps(out_dir),
    ]
    model = _ShardedTinyCR(eps_init=0.4, learnable=False)
    model.act2.eps.requires_grad_(True)
    strategy = "ddp_spawn" if devices > 1 else "auto"
    _trainer(cbs, max_steps=3, devices=devices, strategy=strategy, use_distributed_sampler=False).fit(model)


def test_lightning_ddp_spawn_matches_single_process(tmp_path):
    """Real Lightning DDP (gloo, 2 CPU processes, DistributedSampler gives each rank different rows)."""
    _lightning_eafo_fit(str(tmp_path), devices=2)
    _lightning_eafo_fit(str(tmp_path), devices=1)  # sees both ranks' rows in each step
    r0, r1, single = (torch.load(tmp_path / f"lightning_eps_{r}_{w}.pt") for r, w in ((0, 2), (1, 2), (0, 1)))
    assert torch.equal(r0, r1)  # both layers, including the optimizer-moved regularize-mode ε
    assert r0[0] == single[0] and r0[0] != 0.4  # step-mode ε: exactly the single-process value


def test_initial_eps_outside_bounds_is_clipped_with_warning():
    cb = EAFOCallback(eps_bounds=(-0.5, 0.5), every_n_steps=100, warmup_steps=100)  # no EAFO update in 1 step
    model = TinyCR(eps_init=1.5)
    with pytest.warns(UserWarning, match="outside eps_bounds"):
        _trainer([cb], max_steps=1).fit(model, DataLoader(_data(n=8), batch_size=8))
    assert float(model.act1.eps) == 0.5 and float(model.act2.eps) == 0.5


def test_track_sigma_follows_input_std():
    data = TensorDataset(3.0 * _data(n=512).tensors[0])
    cb = EAFOCallback(track_sigma=True, sigma_momentum=0.0, max_samples_per_call=None, lr=0.0)
    model = TinyCR(eps_init=0.1)
    _trainer([cb], max_steps=2).fit(model, DataLoader(data, batch_size=256))
    last = data.tensors[0][256:].double()  # momentum 0: σ is the std of the last collected batch
    assert cb.running_sigma["act1"] == pytest.approx(float(last.std(unbiased=False)), rel=1e-6)
    assert model.act1.sigma == 2.0 ** (round(16 * math.log2(cb.running_sigma["act1"])) / 16)
    assert abs(model.act1.sigma - 3.0) < 0.3
