"""ActivationEntropyMonitor under DDP: 2 CPU processes (gloo) reproduce the single-process counts exactly.

The single process sees batches of 16; each DDP rank sees 8 (DistributedSampler, no shuffle), and
the two ranks' batches of step k together are the single process's batch k. The learning rate is 0:
with training, DDP's gradient all-reduce rounds differently from the single process's batch mean,
and a weight differing in its last bit can move an activation across a bin edge; the property under
test is the data split and the count reduction, which must then be exact.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler
from test_monitor_support import MemoryLogger, TinyNet, regression_data

from crrelu_lightning.callbacks import ActivationEntropyMonitor

pytestmark = [pytest.mark.ddp, pytest.mark.timeout(240)]
N = 64  # 4 steps per epoch in both set-ups


class SplitNet(TinyNet):
    """TinyNet with its own loader: an explicit DistributedSampler without shuffling (rank r gets
    items r, r+2, …), built in the worker process where the rank is known. Lightning's automatic
    sampler is switched off so the split is exactly this one."""

    def train_dataloader(self):
        ds = regression_data(N)
        world = self.trainer.world_size
        sampler = DistributedSampler(ds, num_replicas=world, rank=self.global_rank, shuffle=False)
        return torch.utils.data.DataLoader(ds, batch_size=16 // world, sampler=sampler)


class DumpState(Callback):
    """Writes every rank's monitor state (and rank 0's logged metrics) to ``out_dir/rank{r}.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        mon = next(c for c in trainer.callbacks if isinstance(c, ActivationEntropyMonitor))
        torch.save(
            {"state": mon.state_dict(), "counts": mon.last_counts.cpu(), "labels": list(mon._names),
             "metrics": trainer.logger.metrics, "world": trainer.world_size},
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


def _monitor():
    # Default estimators (input cells, whole line and branch) plus the fixed-width plug-in.
    return ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=None, estimators=["whole_line", "branch", "plugin"],
                                    lo=-4, hi=4, bins=64, log_histograms_every_n_steps=10**6, log_image_every_n_steps=None)


def _run(out_dir, devices, max_epochs, ckpt=None):
    os.makedirs(out_dir, exist_ok=True)
    seed_everything(0)
    model = SplitNet(lr=0.0, rank0_only_layer=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=max_epochs,
        callbacks=[_monitor(), DumpState(out_dir), ModelCheckpoint(dirpath=out_dir, save_last=True, save_top_k=0)],
        logger=MemoryLogger(),
        default_root_dir=out_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, ckpt_path=ckpt)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(devices)]


def _entropy_metrics(dump):
    out = {}
    for step, m in dump["metrics"]:
        out.setdefault(step, {}).update(m)
    return out


def test_ddp_matches_single_process_and_resumes_once(tmp_path):
    single1 = _run(str(tmp_path / "single1"), 1, 1)[0]
    ddp1 = _run(str(tmp_path / "ddp1"), 2, 1)
    assert [d["world"] for d in ddp1] == [2, 2]

    # Same counts and the same logged numbers (whole line, branch, input, plug-in) as the single
    # process; both ranks hold the global sums.
    for rank_dump in ddp1:
        assert torch.equal(rank_dump["counts"], single1["counts"])
    metrics = _entropy_metrics(single1)
    assert _entropy_metrics(ddp1[0]) == metrics
    assert sorted(metrics) == [0, 1, 2, 3]
    for prefix in ("entropy/", "entropy_branch/", "entropy_input/", "entropy_plugin_d0.125/", "p0/"):
        assert any(k.startswith(prefix) for k in metrics[3]), prefix
    assert all(math.isfinite(v) for k, v in metrics[3].items() if k.startswith(("entropy/", "entropy_branch/")))
    # "side" ran on rank 0 only (rank 1 collected nothing for it, and nobody hung): 7 values at step 3.
    labels = ddp1[0]["labels"]
    assert int(ddp1[1]["counts"][labels.index("side")].sum()) == 7

    # Resume both set-ups for a second epoch from their own checkpoints: DDP still equals the single
    # process and the uninterrupted 2-epoch run.
    single2 = _run(str(tmp_path / "single2"), 1, 2)[0]
    resumed = _run(str(tmp_path / "ddp2"), 2, 2, ckpt=str(tmp_path / "ddp1" / "last.ckpt"))
    for rank_dump in resumed:
        assert torch.equal(rank_dump["counts"], single2["counts"])
    uninterrupted = _entropy_metrics(single2)
    after = _entropy_metrics(resumed[0])
    assert sorted(after) == [4, 5, 6, 7]
    assert all(after[s] == uninterrupted[s] for s in after)
