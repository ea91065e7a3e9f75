"""``compile=True`` models: the network is compiled in place, metrics stay eager, and the entropy monitor and
EAFO callbacks still collect and update on the compiled network (same ε as the eager run)."""
from __future__ import annotations

import csv
import functools
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from crrelu_lightning.activations import CRActivation
from crrelu_lightning.callbacks.eafo import EAFOCallback
from crrelu_lightning.callbacks.entropy_monitor import ActivationEntropyMonitor
from crrelu_lightning.data.vision import SyntheticImageDataModule
from crrelu_lightning.models.vision import ImageClassifier

TINY = {"img_size": 16, "patch_size": 8, "in_chans": 1, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 4}


def _train(tmp_path, compile: bool):
    seed_everything(0)
    model = ImageClassifier(model_name="vit_fmnist", model_kwargs=TINY, activation="crrelu",
                            activation_kwargs={"eps_init": 0.05, "learnable": False}, compile=compile,
                            optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    data = SyntheticImageDataModule(num_train=64, num_test=16, batch_size=16, noise=0.1)
    callbacks = [
        ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=512, log_histograms_every_n_steps=None,
                                 log_image_every_n_steps=None),
        EAFOCallback(mode="step", lr=0.5, every_n_steps=1, max_samples_per_call=None),
    ]
    trainer = Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, num_sanity_val_steps=0,
                      logger=CSVLogger(tmp_path / ("c" if compile else "e")), callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)  # torchmetrics run eagerly beside the compiled net
    rows = list(csv.DictReader(open(trainer.logger.experiment.metrics_file_path)))
    eps = [m.eps.item() for m in model.modules() if isinstance(m, CRActivation)]
    return model, rows, eps


@pytest.mark.slow  # ~3 min on the loaded 2-core box, almost all of it Inductor compiling the two-layer ViT
@pytest.mark.timeout(900)
def test_callbacks_work_on_compiled_network(tmp_path):
    torch._dynamo.reset()
    compiled, rows_c, eps_c = _train(tmp_path, compile=True)
    eager, rows_e, eps_e = _train(tmp_path, compile=False)

    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod prefixes in checkpoints
    assert len(eps_c) == TINY["depth"]
    assert all(abs(e - 0.05) > 1e-4 for e in eps_c)  # EAFO moved every ε (ε is not learnable here)
    assert eps_c == pytest.approx(eps_e, abs=1e-4)  # and by the same amount as on the eager network

    entropy_keys = sorted(k for k in rows_c[0] if k.startswith("entropy/"))
    assert len(entropy_keys) == TINY["depth"]  # one per activation layer
    for key in entropy_keys:
        values_c = [float(r[key]) for r in rows_c if r.get(key)]
        values_e = [float(r[key]) for r in rows_e if r.get(key)]
        assert len(values_c) == 3 and all(math.isfinite(v) for v in values_c)  # counted on every step
        assert values_c == pytest.approx(values_e, abs=0.05)
    assert any(r.get("val/acc") for r in rows_c)


@pytest.mark.parametrize("cls_name", ["CausalLM", "DPO"])
def test_language_models_compile_keeps_parameter_names(cls_name):
    from crrelu_lightning.models import dpo, language
    from crrelu_lightning.models.gpt import GPTConfig

    cls = {"CausalLM": language.CausalLM, "DPO": dpo.DPO}[cls_name]
    kwargs = dict(gpt=GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16), activation="crrelu")
    torch.manual_seed(0)
    plain = cls(**kwargs)
    torch.manual_seed(0)
    compiled = cls(compile=True, **kwargs)
    assert list(plain.state_dict()) == list(compiled.state_dict())
    net = compiled.model if cls_name == "CausalLM" else compiled.policy
    assert net._compiled_call_impl is not None  # nn.Module.compile() took effect on the network only
    assert getattr(compiled, "_compiled_call_impl", None) is None
