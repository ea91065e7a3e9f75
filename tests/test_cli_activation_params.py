"""``ActivationParameterLogger``: every activation layer's learnable parameters, per layer, through any
logger's ``log_metrics`` (CSVLogger here), at the right steps and with the values the parameters had then."""
import csv

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from crrelu_lightning.activations import CRReLU, StarReLU
from crrelu_lightning.activations.standard import PReLU
from crrelu_lightning.callbacks.activation_params import (
    ActivationParameterLogger,
    _metric_names,
    activation_parameters,
)


class ThreeActs(LightningModule):
    """A regression net with a CRReLU, a PReLU and a StarReLU, each with learnable parameters."""

    def __init__(self):
        super().__init__()
        self.fc1, self.cr = nn.Linear(3, 8), CRReLU(eps_init=0.2)
        self.fc2, self.pr = nn.Linear(8, 8), PReLU()
        self.fc3, self.star = nn.Linear(8, 8), StarReLU()
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.star(self.fc3(self.pr(self.fc2(self.cr(self.fc1(x)))))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, generator=g)
        y = x.abs().sum(-1, keepdim=True)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


class Recorder(Callback):
    """Reads the parameters directly with .item() after every optimizer step: the reference."""

    def __init__(self):
        self.values = {}

    def on_train_start(self, trainer, pl_module):
        self._record(trainer.global_step, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._record(trainer.global_step, pl_module)

    def _record(self, step, m):
        self.values[step] = {"cr.eps": m.cr.eps.item(), "pr.weight": m.pr.weight.item(),
                             "star.scale": m.star.scale.item(), "star.bias": m.star.bias.item()}


def test_logged_values_are_the_parameters_at_those_steps(tmp_path):
    model, recorder = ThreeActs(), Recorder()
    logger = CSVLogger(tmp_path, name="acts")
    trainer = Trainer(max_steps=7, logger=logger, callbacks=[recorder, ActivationParameterLogger(every_n_steps=3)],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    rows = list(csv.DictReader(open(tmp_path / "acts" / "version_0" / "metrics.csv")))
    keys = ["act_params/cr.eps", "act_params/pr.weight", "act_params/star.scale", "act_params/star.bias"]
    logged = {}
    for row in rows:
        for k in keys:
            if row.get(k):
                logged.setdefault(int(row["step"]), {})[k.split("/", 1)[1]] = float(row[k])
    assert sorted(logged) == [0, 3, 6, 7]  # start, every 3 optimizer steps, and the end
    for step, values in logged.items():
        assert values == pytest.approx(recorder.values[step], rel=1e-6, abs=1e-7)
    assert logged[7]["cr.eps"] != pytest.approx(0.2, abs=1e-6)  # it trained: not a constant being echoed
    assert logged[0]["cr.eps"] == pytest.approx(0.2)


def test_follows_log_every_n_steps_and_zero_disables(tmp_path):
    trainer = Trainer(max_steps=4, log_every_n_steps=2, logger=CSVLogger(tmp_path, name="a"),
                      callbacks=[ActivationParameterLogger()], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ThreeActs())
    rows = list(csv.DictReader(open(tmp_path / "a" / "version_0" / "metrics.csv")))
    assert sorted(int(r["step"]) for r in rows if r.get("act_params/cr.eps")) == [0, 2, 4]

    trainer = Trainer(max_steps=2, logger=CSVLogger(tmp_path, name="b"), callbacks=[ActivationParameterLogger(0)],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ThreeActs())
    path = tmp_path / "b" / "version_0" / "metrics.csv"
    assert not path.exists() or "act_params" not in path.read_text()


def test_per_channel_parameters_get_one_name_each_and_bad_arguments_fail():
    m = nn.Sequential(nn.Linear(2, 3), PReLU(num_parameters=3), nn.Linear(3, 3), PReLU(num_parameters=40))
    with pytest.warns(UserWarning, match="40 elements"):
        found = activation_parameters(m, max_elements=16)
    assert [name for name, _ in found] == ["1.weight"]
    for kw, bad in (({"every_n_steps": -1}, "every_n_steps"), ({"prefix": ""}, "prefix"),
                    ({"max_elements": 0}, "max_elements")):
        with pytest.raises(ValueError, match=bad):
            ActivationParameterLogger(**kw)
    assert _metric_names(found, "act_params") == [f"act_params/1.weight.{i}" for i in range(3)]
