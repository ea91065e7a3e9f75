"""The shared collection plumbing (crrelu_lightning.callbacks._collection), against a brute-force
schedule, a real Lightning fit with gradient accumulation, and Lightning's own loggers."""
import warnings

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crrelu_lightning.callbacks._collection import (
    CollectionSchedule,
    RateLimitedWarnings,
    SampleGenerators,
    log_metrics,
    mix_seed,
    reduce_sum,
    writers_supporting,
)


@pytest.mark.parametrize("every,warmup,accumulate", [(1, 0, 1), (3, 2, 1), (2, 1, 3), (4, 0, 2)])
def test_schedule_matches_brute_force(every, warmup, accumulate):
    sched = CollectionSchedule(every, warmup)
    collected, done_steps, stepped_flags, micro = [], [], [], []
    global_step = 0
    for batch in range(24 * accumulate):
        on = sched.batch_start(global_step)
        if on:
            collected.append(global_step)
            micro.append(sched.micro_batch)
        if (batch + 1) % accumulate == 0:
            global_step += 1  # the optimizer step of this micro-batch
        stepped, done = sched.batch_end(global_step)
        stepped_flags.append(stepped)
        if done is not None:
            done_steps.append(done)
    expected = [s for s in range(24) if s >= warmup and (s - warmup) % every == 0]
    assert done_steps == expected
    assert collected == [s for s in expected for _ in range(accumulate)]  # every micro-batch of the step
    assert micro == list(range(accumulate)) * len(expected)
    assert stepped_flags == [(b + 1) % accumulate == 0 for b in range(24 * accumulate)]


@pytest.mark.parametrize("kw", [{"every_n_steps": 0}, {"warmup_steps": -1}, {"every_n_steps": 1.5},
                                {"every_n_steps": True}, {"every_n_steps": "2"}])
def test_schedule_validates(kw):
    with pytest.raises(ValueError, match="must be an integer"):
        CollectionSchedule(**kw)


class _Probe(L.Callback):
    """Uses the schedule exactly as the callbacks do, inside a real fit with gradient accumulation."""

    def __init__(self, every, warmup):
        self.schedule = CollectionSchedule(every, warmup)
        self.sampler = SampleGenerators(seed=3)
        self.on, self.done, self.seeds = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.schedule.batch_start(trainer.global_step):
            self.on.append((trainer.global_step, self.schedule.micro_batch))
            self.seeds.append(self.sampler.reseed(trainer.global_rank, trainer.global_step, self.schedule.micro_batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stepped, done = self.schedule.batch_end(trainer.global_step)
        if done is not None:
            assert stepped
            total = reduce_sum(trainer, torch.tensor([1], dtype=torch.int64))
            self.done.append((done, int(total)))
            log_metrics(trainer, {"probe/step": torch.tensor(float(done)), "probe/one": 1}, step=done)


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(callbacks, logger, **kw):
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=callbacks, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **kw)
    data = TensorDataset(torch.randn(60, 2, generator=torch.Generator().manual_seed(0)))
    trainer.fit(_Tiny(), DataLoader(data, batch_size=2))
    return trainer


def test_schedule_in_a_real_fit_with_accumulation_and_csv_logger(tmp_path):
    probe = _Probe(every=3, warmup=1)
    logger = L.loggers.CSVLogger(tmp_path, name="probe")
    _fit([probe], logger, max_steps=9, accumulate_grad_batches=2, log_every_n_steps=1)
    assert probe.done == [(1, 1), (4, 1), (7, 1)]
    assert probe.on == [(s, m) for s in (1, 4, 7) for m in (0, 1)]
    assert len(set(probe.seeds)) == len(probe.seeds)  # a fresh stream per (step, micro-batch)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "probe" / "version_0" / "metrics.csv")))
    logged = [(int(r["step"]), float(r["probe/step"])) for r in rows if r.get("probe/step")]
    assert logged == [(1, 1.0), (4, 4.0), (7, 7.0)]
    assert writers_supporting(L.Trainer(logger=logger, accelerator="cpu"), "add_histogram_raw") == []


def test_writers_supporting_finds_tensorboard_only(tmp_path):
    pytest.importorskip("tensorboard")
    tb = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    csv = L.loggers.CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(logger=[csv, tb], accelerator="cpu")
    found = writers_supporting(trainer, "add_histogram_raw", "add_image")
    assert found == [tb.experiment]


def test_sample_generators_are_functions_of_their_seed_parts():
    a, b = SampleGenerators(seed=5), SampleGenerators(seed=5)
    a.reseed(0, 10, 0)
    first = torch.randint(1000, (8,), generator=a.get("cpu"))
    torch.randint(1000, (8,), generator=a.get("cpu"))  # advance a
    a.reseed(0, 10, 0)
    b.reseed(0, 10, 0)  # b's generator is created after reseed: same stream
    again = torch.randint(1000, (8,), generator=a.get("cpu"))
    assert torch.equal(first, again) and torch.equal(first, torch.randint(1000, (8,), generator=b.get("cpu")))
    assert a.get("cpu") is a.get(torch.device("cpu"))
    seeds = {mix_seed(5, r, s, m) for r in range(4) for s in range(50) for m in range(3)}
    assert len(seeds) == 600 and all(0 <= v < 2**63 for v in seeds)
    assert mix_seed(5, 0, 1) != mix_seed(5, 1, 0)


def test_rate_limited_warnings_warn_once_per_layer_and_count():
    w = RateLimitedWarnings("Owner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            w.warn("nonfinite", "act1", "bad numbers")
        w.warn("nonfinite", "act2", "bad numbers")
        w.warn("other", "act1", "something else")
    assert [str(c.message).split(" (")[0] for c in caught] == ["Owner: bad numbers", "Owner: bad numbers",
                                                               "Owner: something else"]
    assert w.count("nonfinite", "act1") == 5 and w.count("nonfinite", "act2") == 1 and w.count("x", "y") == 0
    with pytest.warns(UserWarning, match=r"'nonfinite' happened 5 times for layer 'act1'") as summary:
        w.summary()
    assert len(summary) == 1  # counts of 1 need no summary
