"""A researcher's own activations, by name, by import path and by entry point, through every entry point of the
project: ``crrelu-lightning fit`` (subprocess), ``validate`` from the saved config.yaml, ``load_from_checkpoint``,
``compare``; and the one-line error for an unknown name."""
from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from crrelu_lightning.activations import UnknownActivationError, activation_class, available_activations
from crrelu_lightning.activations import registry as registry_mod

USER_MODULE = '''
import torch
from torch import nn
from crrelu_lightning.activations import register_activation


@register_activation("user_softsign")
class UserSoftsign(nn.Module):
    """x / (1 + |x|), registered by name when this module is imported."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x):
        return x / (1.0 + x.abs())


class PathAct(nn.Module):
    """Not registered anywhere: used by import path. A learnable slope, to see it trained and checkpointed."""

    def __init__(self, inplace: bool = False, slope: float = 0.5) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.tensor(float(slope)))

    def forward(self, x):
        return torch.where(x > 0, x, self.slope * x)
'''


def _tiny_config(tmp_path: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
            "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": "run", "logger": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": "ckpt", "filename": "last"}}],
        },
        "model": {
            "class_path": "crrelu_lightning.models.vision.ImageClassifier",
            "init_args": {
                "model_name": "vit_fmnist",
                "model_kwargs": {"img_size": 16, "patch_size": 8, "in_chans": 1, "embed_dim": 16, "depth": 1,
                                 "num_heads": 2, "num_classes": 4},
                "activation": "crrelu",
            },
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2, "weight_decay": 0.0}},
        "data": {
            "class_path": "crrelu_lightning.data.vision.SyntheticImageDataModule",
            "init_args": {"num_train": 64, "num_test": 16, "batch_size": 16, "noise": 0.1},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("crrelu-lightning")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "crrelu_lightning"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*cmd, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_acts.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = dict(registry_mod._REGISTRY)
    yield tmp_path
    sys.modules.pop("user_acts", None)
    registry_mod._REGISTRY.clear()
    registry_mod._REGISTRY.update(saved)


@pytest.mark.timeout(600)
def test_user_activation_fit_validate_checkpoint_compare(user_module):
    tmp_path = user_module
    cfg = _tiny_config(tmp_path)

    # fit with a name the user's module registers (module-qualified, so the CLI imports it)
    fit = _cli(tmp_path, "fit", "--config", cfg.name, "--model.activation", "user_acts.user_softsign")
    assert fit.returncode == 0, fit.stderr[-3000:]
    saved_cfg = tmp_path / "run" / "config.yaml"
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert yaml.safe_load(saved_cfg.read_text())["model"]["init_args"]["activation"] == "user_acts.user_softsign"

    # the checkpoint stores the string, never a callable: it loads with weights_only=True
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["activation"] == "user_acts.user_softsign"

    # validate by re-running the saved config.yaml
    val = _cli(tmp_path, "validate", "--config", str(saved_cfg.relative_to(tmp_path)), "--ckpt_path", "ckpt/last.ckpt")
    assert val.returncode == 0, val.stderr[-3000:]
    assert "val/acc" in val.stdout + val.stderr

    # load_from_checkpoint in this process: the activation is the user's class and computes x / (1 + |x|)
    from crrelu_lightning.models.vision import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    acts = [blk.act for blk in model.model.modules() if hasattr(blk, "fc1") and hasattr(blk, "act")]
    assert acts and all(type(a).__name__ == "UserSoftsign" for a in acts)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(acts[0](x), x / (1 + x.abs()))

    # compare with a class given by import path (never registered)
    out = tmp_path / "cmp"
    cmp = _cli(tmp_path, "compare", "--config", cfg.name, "--activations", "user_acts.PathAct", "--seeds", "0",
               "--out", str(out))
    assert cmp.returncode == 0, (cmp.stdout + cmp.stderr)[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["activation"], r["status"]) for r in rows] == [("user_acts.PathAct", "ok")]


def test_unknown_activation_is_one_short_error(tmp_path):
    cfg = _tiny_config(tmp_path)
    res = _cli(tmp_path, "fit", "--config", cfg.name, "--model.activation", "no_such_act")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip() and "Seed set" not in line]
    assert len(lines) == 1, res.stderr
    assert "Unknown activation 'no_such_act'" in lines[0]
    assert "crrelu" in lines[0] and "gelu" in lines[0] and "mypkg.acts.MyAct" in lines[0]  # names + path form
    assert "Traceback" not in res.stderr and "Union" not in res.stderr


def test_import_path_forms_and_their_errors(user_module):
    user_acts = importlib.import_module("user_acts")
    assert activation_class("user_acts.PathAct") is user_acts.PathAct
    assert activation_class("user_acts:PathAct") is user_acts.PathAct
    assert activation_class("user_acts.user_softsign") is user_acts.UserSoftsign
    assert activation_class("USER_SOFTSIGN") is user_acts.UserSoftsign  # registered now: plain name works
    with pytest.raises(UnknownActivationError, match="cannot import 'no_pkg_here'.*PYTHONPATH"):
        activation_class("no_pkg_here.Act")
    with pytest.raises(UnknownActivationError, match="has no attribute 'Missing'"):
        activation_class("user_acts.Missing")
    with pytest.raises(UnknownActivationError, match="not an nn.Module class"):
        activation_class("user_acts.torch")
    with pytest.raises(KeyError):  # still a KeyError for callers that catch that
        activation_class("nope")


def test_entry_point_registers_without_import(tmp_path, monkeypatch):
    """A tiny installed distribution (dist-info on sys.path) whose entry point names a class."""
    pkg = tmp_path / "ep_acts_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from torch import nn

        class Cube(nn.Module):
            def __init__(self, inplace=False):
                super().__init__()

            def forward(self, x):
                return x ** 3
    '''))
    dist = tmp_path / "ep_acts_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-acts-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[crrelu_lightning.activations]\nep_cube = ep_acts_pkg:Cube\nep_broken = ep_acts_pkg:DoesNotExist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    saved = dict(registry_mod._REGISTRY)
    try:
        assert "ep_acts_pkg" not in sys.modules
        with pytest.warns(UserWarning, match="ep_broken.*failed to load"):
            registry_mod.reload_entry_points()
        cls = activation_class("ep_cube")
        assert cls.__module__ == "ep_acts_pkg" and "ep_cube" in available_activations()
        from crrelu_lightning.models.vision import ImageClassifier

        model = ImageClassifier(model_name="vit_fmnist", activation="ep_cube",
                                model_kwargs={"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1,
                                              "num_heads": 2, "num_classes": 3})
        assert model.hparams.activation == "ep_cube"
        x = torch.linspace(-2, 2, 5)
        act = model.model.blocks[0].mlp.act
        torch.testing.assert_close(act(x), x ** 3)
    finally:
        registry_mod._REGISTRY.clear()
        registry_mod._REGISTRY.update(saved)
        sys.modules.pop("ep_acts_pkg", None)
        registry_mod._entry_points_loaded = False
