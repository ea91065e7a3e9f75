"""ImageClassifier: activation replacement in every MLP block, name checks, optimizer, steps, checkpoints."""
import functools

import pytest
import torch
from torch import nn

from crrelu_lightning.activations import CRActivation, CRReLU, activation_class
from crrelu_lightning.models.optim import WarmupCosineLR
from crrelu_lightning.models.vision import ImageClassifier, mlp_blocks

TINY_VIT = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=3, num_heads=2, num_classes=4)


def _count(model: nn.Module, cls) -> int:
    return sum(1 for m in model.modules() if type(m) is cls)


@pytest.mark.parametrize("activation", ["crrelu", "gelu", "star_relu", "prelu"])
def test_vit_every_mlp_gets_the_activation(activation):
    m = ImageClassifier("vit_fmnist", dict(TINY_VIT), activation=activation)
    cls = activation_class(activation)
    assert m.num_mlp_activations == 3
    assert _count(m.model, cls) == 3  # depth blocks -> depth activations, nothing else of that class
    for blk in m.model.blocks:
        assert type(blk.mlp.act) is cls


def test_tnt_inner_and_outer_mlps_replaced():
    # timm's TNT takes no act_layer and hard-codes GELU: both the inner and outer MLP of each block must switch.
    m = ImageClassifier("tnt_s_patch4_32", dict(depth=2, embed_dim=48, inner_dim=8, num_heads_outer=2, num_heads_inner=2))
    assert m.num_mlp_activations == 4
    assert _count(m.model, CRReLU) == 4 and _count(m.model, nn.GELU) == 0
    for blk in m.model.blocks:
        assert isinstance(blk.mlp_in.act, CRReLU) and isinstance(blk.mlp.act, CRReLU)
    # each block owns its ε (not one shared module)
    eps_ids = {id(b.act.eps) for b in mlp_blocks(m.model)}
    assert len(eps_ids) == 4


@pytest.mark.parametrize("name,size,chans", [
    ("vit_tiny_patch4_32", 32, 3), ("deit_tiny_patch4_32", 32, 3), ("vit_fmnist", 28, 1),
])
def test_presets_shapes_and_depth(name, size, chans):
    m = ImageClassifier(name, {"num_classes": 7, "depth": 2})  # depth override keeps the test fast
    assert m.num_mlp_activations == 2
    assert m(torch.randn(2, chans, size, size)).shape == (2, 7)


def test_paper_dimensions():
    vit = ImageClassifier("vit_tiny_patch4_32").model
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (192, 12, 3)
    assert vit.blocks[0].mlp.fc1.out_features == 4 * 192 and vit.patch_embed.patch_size == (4, 4)
    tnt = ImageClassifier("tnt_s_patch4_32").model
    assert (tnt.embed_dim, len(tnt.blocks)) == (384, 12)
    assert tnt.blocks[0].attn_in.num_heads == 4 and tnt.blocks[0].attn_out.num_heads == 6
    assert tnt.pixel_embed.in_dim == 24 and tnt.pixel_embed.new_patch_size == [4, 4]


def test_unknown_model_lists_close_matches_and_how_to_list():
    with pytest.raises(ValueError) as err:
        ImageClassifier("vit_tiny_patch4_23")
    msg = str(err.value)
    assert "'vit_tiny_patch4_23'" in msg and "vit_tiny_patch4_32" in msg and "timm.list_models" in msg


def test_unknown_activation_lists_registered_names():
    with pytest.raises(KeyError) as err:
        ImageClassifier("vit_fmnist", dict(TINY_VIT), activation="crreluu")
    assert "crreluu" in str(err.value) and "crrelu" in str(err.value) and "gelu" in str(err.value)


@pytest.mark.parametrize("kw,bad", [
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"mixup_alpha": -1.0}, "mixup_alpha"),
    ({"num_classes": 3, "class_names": ["a", "b"]}, "class_names"),
    # the datamodule's num_classes (linked by the CLI) against a stale model_kwargs entry: fail now, not in the loss
    ({"num_classes": 6}, "contradicts"),
])
def test_bad_hyperparameters_name_the_value(kw, bad):
    with pytest.raises(ValueError, match=bad):
        ImageClassifier("vit_fmnist", dict(TINY_VIT), **kw)


def test_shape_arguments_reach_the_timm_model():
    kw = {k: v for k, v in TINY_VIT.items() if k not in ("num_classes", "img_size", "in_chans")}
    m = ImageClassifier("vit_fmnist", kw, num_classes=3, img_size=8, in_chans=2, drop_path_rate=0.2,
                        class_names=["a", "b", "c"])
    assert m(torch.randn(2, 2, 8, 8)).shape == (2, 3)
    assert m.model.patch_embed.img_size == (8, 8) and m.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert m.hparams.class_names == ["a", "b", "c"]


def test_activation_kwargs_reach_every_block():
    m = ImageClassifier("vit_fmnist", dict(TINY_VIT), activation="crrelu", activation_kwargs={"eps_init": 0.25})
    eps = [b.act.eps.item() for b in mlp_blocks(m.model)]
    assert eps == [0.25] * 3


def test_hparams_are_plain_and_checkpoint_loads_weights_only(tmp_path):
    from lightning.pytorch import Trainer

    from crrelu_lightning.data.vision import SyntheticImageDataModule

    m = ImageClassifier("vit_fmnist", dict(TINY_VIT), activation="crrelu", activation_kwargs={"eps_init": 0.05})
    assert m.hparams.activation == "crrelu" and isinstance(m.hparams.model_kwargs, dict)
    dm = SyntheticImageDataModule(batch_size=32)
    trainer = Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # no pickled callables anywhere
    assert ckpt["hyper_parameters"]["activation"] == "crrelu"
    loaded = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    x = torch.randn(3, 1, 16, 16)
    m.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), m(x))
    assert isinstance(loaded.model.blocks[0].mlp.act, CRActivation)


def _quiet_trainer(**kw):
    from lightning.pytorch import Trainer

    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, **kw)


def test_training_learns_and_follows_schedule():
    from crrelu_lightning.data.vision import SyntheticImageDataModule

    m = ImageClassifier("vit_fmnist", dict(TINY_VIT), label_smoothing=0.1,
                        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
                        lr_scheduler=functools.partial(WarmupCosineLR, warmup_steps=2, min_lr=2e-5))
    dm = SyntheticImageDataModule(batch_size=32, num_train=256, noise=0.1)
    trainer = _quiet_trainer(max_epochs=3)
    trainer.fit(m, dm)
    res = trainer.validate(m, dm, verbose=False)[0]
    assert res["val/acc"] > 0.9  # 4 well-separated classes; chance is 0.25
    # LR followed the per-step schedule down to min_lr at the last of the 3 x 8 steps
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-5, rel=1e-6)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    # Python callables are not pickled into the checkpoint's hparams
    assert "optimizer" not in m.hparams and "lr_scheduler" not in m.hparams


def test_default_optimizer_is_the_recipe_adamw_with_no_decay_group():
    from lightning.pytorch import Trainer

    from crrelu_lightning.data.vision import SyntheticImageDataModule

    m = ImageClassifier("vit_fmnist", dict(TINY_VIT))
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    trainer.fit(m, SyntheticImageDataModule(batch_size=32))
    opt = trainer.optimizers[0]
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.999)
    eps_ids = {id(b.act.eps) for b in mlp_blocks(m.model)}
    decays = {g["weight_decay"] for g in opt.param_groups for p in g["params"] if id(p) in eps_ids}
    assert decays == {0.0} and {g["weight_decay"] for g in opt.param_groups} == {0.05, 0.0}


def test_mixup_cutmix_step_runs_on_odd_batches():
    from crrelu_lightning.data.vision import SyntheticImageDataModule

    m = ImageClassifier("vit_fmnist", dict(TINY_VIT), mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    trainer = _quiet_trainer(fast_dev_run=2)
    trainer.fit(m, SyntheticImageDataModule(batch_size=31))  # odd batch: Mixup needs an even one, we trim
    loss = trainer.callback_metrics["train/loss"]
    # soft-target CE of a near-uniform initial model is about log(4) = 1.386
    assert torch.isfinite(loss) and 1.0 < loss.item() < 2.0


def test_predict_step_returns_probabilities():
    m = ImageClassifier("vit_fmnist", dict(TINY_VIT))
    p = m.predict_step((torch.randn(5, 1, 16, 16), torch.zeros(5, dtype=torch.long)), 0)
    assert p.shape == (5, 4) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(5))


def test_epsilon_excluded_from_weight_decay_in_configured_optimizer():
    from crrelu_lightning.models.optim import param_groups

    m = ImageClassifier("vit_fmnist", dict(TINY_VIT))
    groups = param_groups(m, 0.1)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for blk in mlp_blocks(m.model):
        assert id(blk.act.eps) in no_decay and id(blk.fc1.bias) in no_decay
    assert id(m.model.blocks[0].norm1.weight) in no_decay
    assert id(m.model.blocks[0].mlp.fc1.weight) not in no_decay
