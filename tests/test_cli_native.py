"""LightningCLI-native behaviour of ``crrelu-lightning``: the demo from a folder holding a user's callbacks.py,
``--optimizer`` / ``--lr_scheduler`` into the model's parameter groups, Literal choices failing at parse time,
short class names, ``--help`` listing the project's classes, data->model links and model_kwargs merging."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crrelu_lightning.cli import cli_main, main
from crrelu_lightning.models.vision import ImageClassifier, mlp_blocks
from test_vision_data import write_fashion_mnist

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
VISION = REPO / "configs" / "vision"
# A callbacks.py that must never be imported: before the package-dir mapping, `callbacks` was a top-level
# import name and this file shadowed it (`module 'callbacks' has no attribute 'entropy_monitor'`).
USER_CALLBACKS = "raise ImportError('the user\\'s own callbacks.py was imported by crrelu-lightning')\n"
TINY = ["--model.model_kwargs", "{embed_dim: 16, depth: 1, num_heads: 2}"]


def _demo_data(root: Path) -> list:
    write_fashion_mnist(root, n_train=40, n_test=16)  # the official IDX layout, tiny
    return [f"--data.root={root}", "--data.use_system_package=false", "--data.val_split=8", "--data.batch_size=8",
            "--data.eval_batch_size=8"]


def _run(cwd: Path, *args: str, console_script: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("crrelu-lightning")
    cmd = [str(exe)] if console_script and exe.exists() else [sys.executable, "-m", "crrelu_lightning"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.timeout(600)
def test_demo_fast_dev_run_from_a_folder_with_callbacks_py(tmp_path):
    (tmp_path / "callbacks.py").write_text(USER_CALLBACKS)
    data = _demo_data(tmp_path / "data")
    proc = _run(tmp_path, "fit", "--config", DEMO, "--trainer.fast_dev_run", "1", *data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_steps=1" in proc.stderr + proc.stdout  # one real training step ran

    # the documented optimizer override, through the console script
    proc = _run(tmp_path, "fit", "--config", DEMO, "--optimizer", "SGD", "--optimizer.lr", "0.1",
                "--trainer.fast_dev_run", "1", *data, console_script=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_optimizer_from_the_command_line_keeps_the_no_decay_group(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _demo_data(tmp_path / "data")
    cli = cli_main(["--config", DEMO, "--optimizer", "SGD", "--optimizer.lr", "0.1", "--optimizer.momentum", "0.9",
                    "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "3", *TINY, *data,
                    "--trainer.accelerator=cpu"], run=False)
    model = cli.model
    model.trainer = cli.trainer
    out = model.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.1 and opt.defaults["momentum"] == 0.9
    assert type(sched["scheduler"]) is torch.optim.lr_scheduler.StepLR and sched["interval"] == "epoch"
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for blk in mlp_blocks(model.model):
        assert decay[id(blk.act.eps)] == 0.0 and decay[id(blk.fc1.bias)] == 0.0
        assert decay[id(blk.fc1.weight)] == 0.05  # the config's weight decay, matrices only
    assert len(decay) == sum(1 for p in model.parameters() if p.requires_grad)
    # stored as plain class_path/init_args, so the run's config.yaml and the checkpoint re-create it
    assert model.hparams.optimizer["class_path"] == "torch.optim.SGD"
    assert model.hparams.optimizer["init_args"]["lr"] == 0.1


def test_literal_typo_fails_at_parse_time_listing_the_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data anywhere: the error must come from the parser, before any file is read
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", "--config", DEMO, "--data.augment", "basik"])
    assert done.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "basik" in err and all(choice in err for choice in ("'none'", "'basic'", "'paper'"))
    with pytest.raises(SystemExit) as done:  # a callback's choice, given by short name on the command line
        cli_main(["fit", "--config", DEMO, "--trainer.callbacks+=EAFOCallback", "--trainer.callbacks.mode=stepp"])
    assert done.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "stepp" in err and "'step'" in err and "'regularize'" in err


def test_short_class_names_resolve_and_data_links_into_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--model", "ImageClassifier", "--model.model_kwargs", "{patch_size: 4, embed_dim: 16, depth: 1, "
                    "num_heads: 2}", "--data", "SyntheticImageDataModule", "--data.num_classes", "3",
                    "--data.img_size", "12", "--data.in_chans", "2", "--trainer.accelerator=cpu",
                    "--trainer.logger=false"], run=False)
    assert isinstance(cli.model, ImageClassifier)
    assert type(cli.datamodule).__name__ == "SyntheticImageDataModule"
    m = cli.model
    assert m.num_classes == 3 and m.model.patch_embed.img_size == (12, 12) and m.model.patch_embed.proj.in_channels == 2
    assert m.hparams.class_names == ["class0", "class1", "class2"]
    assert m(torch.randn(2, 2, 12, 12)).shape == (2, 3)


def test_help_lists_the_projects_models_datamodules_and_callbacks(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for name in ("ImageClassifier", "CausalLM", "DPO", "VisionDataModule", "TextDataModule", "EAFOCallback",
                 "ActivationEntropyMonitor", "PredictionWriter", "--activation_params.every_n_steps",
                 "--optimizer", "--lr_scheduler"):
        assert name in out, name


def test_model_kwargs_replacement_keeps_the_recipe_and_key_form_merges(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = [a for f in ("base.yaml", "data/cifar10.yaml", "model/vit_tiny.yaml") for a in ("--config", str(VISION / f))]
    quick = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false"]
    # replacing the dict no longer drops the recipe's drop_path_rate (a typed argument now) nor the data's shape
    cli = cli_main(recipe + quick + ["--model.model_kwargs", "{depth: 2}"], run=False)
    vit = cli.model.model
    assert len(vit.blocks) == 2 and vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert cli.model.num_classes == 10
    # --model.model_kwargs.KEY changes one key and keeps the others
    cli = cli_main(recipe + quick + ["--model.model_kwargs", "{depth: 2, embed_dim: 48, num_heads: 2}",
                                     "--model.model_kwargs.depth", "1"], run=False)
    assert cli.model.hparams.model_kwargs == {"depth": 1, "embed_dim": 48, "num_heads": 2}
    assert len(cli.model.model.blocks) == 1 and cli.model.model.embed_dim == 48


def test_compare_composes_an_eafo_overlay_into_every_run(tmp_path, monkeypatch, capsys):
    from crrelu_lightning.compare import commands
    from crrelu_lightning.compare.cli import prepare

    monkeypatch.chdir(tmp_path)
    plan = prepare(["--config", DEMO, "--config", str(REPO / "configs" / "demo_eafo.yaml"), "--activations",
                    "crrelu", "--seeds", "0", "--out", str(tmp_path / "cmp")])
    argv = commands.cli_args(plan.settings, plan.specs[0], "fit")
    with pytest.raises(SystemExit):
        cli_main(argv + ["--print_config"])
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    names = [c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"]["callbacks"]]
    assert "EAFOCallback" in names and "ActivationEntropyMonitor" in names  # overlay appended, base kept
    dirs = {c["init_args"]["dirpath"] for c in cfg["trainer"]["callbacks"] if "Checkpoint" in c["class_path"]}
    assert dirs and all(d.startswith(str(plan.specs[0].run_dir)) for d in dirs)  # the runner's own folders
    assert plan.settings.out == tmp_path / "cmp"


def test_compare_run_activation_wins_over_an_overlay_that_names_one(tmp_path, monkeypatch, capsys):
    # demo_eafo_derive.yaml sets model.init_args.activation: eafo_gelu; each compare row must keep its own.
    from crrelu_lightning.compare import commands
    from crrelu_lightning.compare.cli import prepare
    import yaml

    monkeypatch.chdir(tmp_path)
    overlay = REPO / "configs" / "demo_eafo_derive.yaml"
    assert yaml.safe_load(overlay.read_text())["model"]["init_args"]["activation"] == "eafo_gelu"
    plan = prepare(["--config", DEMO, "--config", str(overlay), "--activations", "gelu_dyn=eafo_gelu,silu_dyn=eafo_silu",
                    "--seeds", "0", "--out", str(tmp_path / "cmp")])
    seen = {}
    for spec in plan.specs:
        with pytest.raises(SystemExit):
            cli_main(commands.cli_args(plan.settings, spec, "fit") + ["--print_config"])
        cfg = yaml.safe_load(capsys.readouterr().out)
        seen[spec.label] = cfg["model"]["init_args"]["activation"]
        names = [c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"]["callbacks"]]
        assert "EAFODeriveCallback" in names and "ActivationEntropyMonitor" in names
    assert seen == {"gelu_dyn": "eafo_gelu", "silu_dyn": "eafo_silu"}


def test_a_linked_model_value_is_refused_not_silently_replaced(tmp_path, monkeypatch, capsys):
    from crrelu_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["fit", "--config", DEMO, "--model.num_classes", "5", "--trainer.max_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.num_classes=5" in err and "data.num_classes" in err
    assert not (tmp_path / "lightning_logs").exists()  # refused before anything was built or written


def test_test_from_a_checkpoint_is_not_refused_by_its_own_linked_values(tmp_path, monkeypatch):
    # The checkpoint's hyperparameters hold num_classes, img_size … (linked at fit); they are not user input.
    monkeypatch.chdir(tmp_path)
    data = _demo_data(tmp_path / "data")
    cli_main(["fit", "--config", DEMO, *TINY, *data, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
              "--trainer.enable_progress_bar", "false"])
    [ckpt] = (tmp_path / "lightning_logs").rglob("last.ckpt")
    assert main(["test", "--config", DEMO, *TINY, *data, f"--ckpt_path={ckpt}", "--trainer.limit_test_batches", "1",
                 "--trainer.enable_progress_bar", "false"]) == 0
