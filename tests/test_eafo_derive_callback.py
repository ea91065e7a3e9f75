"""EAFODeriveCallback: tables re-derived from measured inputs, DDP-identical, exact resume."""
import os
import socket
from types import SimpleNamespace

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crrelu_lightning.activations import build_activation
from crrelu_lightning.callbacks.eafo_derive import EAFODeriveCallback
from crrelu_lightning.entropy.derive import derive_correction
from crrelu_lightning.entropy.eafo import HistogramInput


class TinyEAFO(L.LightningModule):
    """x → Linear → eafo_gelu → Linear → eafo_silu → Linear → squared loss."""

    def __init__(self, lr=0.05):
        super().__init__()
        self.lin0 = nn.Linear(6, 8)
        self.act1 = build_activation("eafo_gelu", impl="eager", grid_size=128)
        self.lin1 = nn.Linear(8, 8)
        self.act2 = build_activation("eafo_silu", impl="eager", grid_size=128)
        self.lin2 = nn.Linear(8, 1)
        self.lr = lr

    def forward(self, x):
        return self.lin2(self.act2(self.lin1(self.act1(self.lin0(x)))))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self(x) - x[:, :1]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class InputRecorder(L.Callback):
    """The test's own record of act1's inputs on every step (independent of the callback's taps)."""

    def __init__(self):
        self.inputs = {}

    def setup(self, trainer, pl_module, stage):
        pl_module.act1.register_forward_hook(self._hook)
        self._trainer = trainer

    def _hook(self, module, args, out):
        self.inputs.setdefault(self._trainer.global_step, []).append(args[0].detach().reshape(-1).double().clone())


def _data(n=256, seed=0):
    return TensorDataset(torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)))


def _trainer(callbacks, **kw):
    opts = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, max_steps=12)
    opts.update(kw)
    return L.Trainer(callbacks=callbacks, **opts)


def test_table_is_rederived_from_the_measured_histogram():
    L.seed_everything(0, verbose=False)
    model = TinyEAFO()
    static = model.act1.table.clone()
    cb = EAFODeriveCallback(every_n_steps=4, collect_every_n_steps=2, bins=64, max_samples_per_call=None,
                            min_samples=100)
    rec = InputRecorder()
    _trainer([cb, rec], max_steps=9).fit(model, DataLoader(_data(), batch_size=32))
    assert cb.derivations == 2  # after steps 4 and 8 (steps 0: calibration; 2, 4 | 6, 8: histograms)
    assert not torch.equal(model.act1.table, static)
    # Rebuild the second window (steps 6, 8) here, on the range set from the first window's moments.
    first = torch.cat(rec.inputs[2] + rec.inputs[4])
    mean, std = first.mean().item(), first.std(unbiased=False).item()
    lo, hi = mean - 6 * std, mean + 6 * std
    assert cb.ranges[0] is not None
    x = torch.cat(rec.inputs[6] + rec.inputs[8]).numpy()
    counts, edges = np.histogram(x, bins=64, range=(lo, hi))
    d = derive_correction("gelu", HistogramInput.from_arrays(counts, edges), grid_size=128)
    xt, h, dh = d.table(normalized=True)
    np.testing.assert_allclose(model.act1.grid.numpy(), [xt[0], xt[-1]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.act1.table[0].numpy(), h, rtol=1e-4, atol=1e-6)
    lo_e, hi_e = model.act1.eps_interval.tolist()
    assert lo_e < float(model.act1.eps.detach()) < hi_e  # ε kept inside the new monotone interval


def test_eps_step_descends_the_branch_entropy():
    L.seed_everything(0, verbose=False)
    model = TinyEAFO(lr=0.0)  # only the callback moves ε
    with torch.no_grad():
        model.act1.eps.fill_(0.1)
        model.act2.eps.fill_(0.1)
    cb = EAFODeriveCallback(every_n_steps=2, collect_every_n_steps=1, bins=64, max_samples_per_call=None,
                            min_samples=100, eps_lr=0.2)
    _trainer([cb], max_steps=7).fit(model, DataLoader(_data(), batch_size=32))
    assert cb.derivations == 3
    assert cb.last_metrics["eafo_derive/dH_deps/act1"] < 0
    assert float(model.act1.eps.detach()) > 0.1 and float(model.act2.eps.detach()) > 0.1  # dH/dε < 0: descent raises ε


def _fit_for_resume(tmp_path, max_epochs, ckpt=None, save=False):
    L.seed_everything(0, verbose=False)
    cb = EAFODeriveCallback(every_n_steps=3, collect_every_n_steps=1, bins=32, max_samples_per_call=50,
                            min_samples=20, eps_lr=0.05, seed=3)
    cbs = [cb]
    if save:
        cbs.append(L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}"))
    model = TinyEAFO()
    _trainer(cbs, max_steps=-1, max_epochs=max_epochs, enable_checkpointing=save).fit(
        model, DataLoader(_data(n=160), batch_size=32), ckpt_path=ckpt
    )
    return model, cb


def test_resume_is_exact(tmp_path):
    full_model, full_cb = _fit_for_resume(tmp_path, 2, save=True)  # 5 steps per epoch: epoch 0 ends mid-window
    ckpt = tmp_path / "epoch=0.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert "act1.table" in state["state_dict"] and "act1.eps" in state["state_dict"]
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("EAFODeriveCallback"))
    assert saved["derivations"] == 1 and any(any(r) for r in saved["totals"])  # a window in progress
    resumed_model, resumed_cb = _fit_for_resume(tmp_path, 2, ckpt=str(ckpt))
    assert resumed_cb.derivations == full_cb.derivations == 3
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------- DDP: identical tables
def _drive(rank, world, steps=6, batch=64, shards=None):
    """Plain-torch driver of the callback's hooks; rank r sees rows r, r + W, ... of each batch.

    ``shards`` (single process only): forward the batch as that many interleaved shards, as the ranks do, so
    every activation is computed bit for bit as on its rank (a Linear's last bits depend on the batch size).
    """
    torch.manual_seed(0)
    model = TinyEAFO()
    cb = EAFODeriveCallback(every_n_steps=2, collect_every_n_steps=1, bins=48, max_samples_per_call=None,
                            min_samples=10)

    def reduce(t, reduce_op="mean"):
        assert reduce_op == "sum"
        if world > 1:
            torch.distributed.all_reduce(t)
        return t

    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce),
                              global_rank=rank, global_step=0, is_global_zero=rank == 0, loggers=[])
    cb.setup(trainer, model, "fit")
    data = torch.randn(steps * batch, 6, generator=torch.Generator().manual_seed(4))
    for step in range(steps):
        rows = data[step * batch:(step + 1) * batch]
        cb.on_train_batch_start(trainer, model, None, step)
        with torch.no_grad():
            if shards is None:
                model(rows[rank::world] * (1.0 + 0.1 * step))
            else:
                for r in range(shards):
                    model(rows[r::shards] * (1.0 + 0.1 * step))
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, model, None, None, step)
    cb.teardown(trainer, model, "fit")
    return {k: v.clone() for k, v in model.state_dict().items() if "act" in k}, cb.derivations


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_drive(rank, world), os.path.join(out_dir, f"state_{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_get_identical_tables(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    (s0, n0), (s1, n1) = (torch.load(tmp_path / f"state_{r}.pt") for r in (0, 1))
    single, n = _drive(0, 1, shards=2)
    assert n0 == n1 == n == 3  # after steps 1, 3 and 5 (step 0 calibrates the ranges)
    static = TinyEAFO().act1.table
    assert not torch.equal(s0["act1.table"], static)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k  # bit-identical on both ranks
        # the two shards together are the single process's data: the same integer counts, the same table
        assert torch.equal(s0[k], single[k]), k


def test_no_eafo_layer_and_bad_arguments():
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.act = build_activation("gelu")

    with pytest.raises(ValueError, match="no EAFOActivation"):
        EAFODeriveCallback().setup(SimpleNamespace(strategy=None), Plain(), "fit")
    with pytest.raises(ValueError, match="multiple of collect_every_n_steps"):
        EAFODeriveCallback(every_n_steps=5, collect_every_n_steps=2)
    with pytest.raises(ValueError, match="eps_margin"):
        EAFODeriveCallback(eps_margin=1.5)
