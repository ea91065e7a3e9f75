"""DDP (2 CPU processes, gloo): validation metrics are reduced over ranks, so they equal one process's."""
import random

import pytest
import torch

from crrelu_lightning.data.text import TextDataModule
from crrelu_lightning.models.gpt import GPTConfig
from crrelu_lightning.models.language import CausalLM


def _setup(tmp_path):
    rng = random.Random(0)
    (tmp_path / "train.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(3000)))
    dm = TextDataModule(paths=str(tmp_path / "train.txt"), block_size=16, batch_size=2, max_val_blocks=8,
                        val_fraction=0.2)
    torch.manual_seed(0)
    model = CausalLM(GPTConfig(vocab_size=256, n_layer=1, n_head=2, n_embd=16, block_size=16, activation="crrelu",
                               activation_kwargs={"impl": "eager"}), sample_tokens=0)
    return model, dm


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_val_metrics_are_reduced_over_ranks(tmp_path):
    from lightning.pytorch import Trainer

    model, dm = _setup(tmp_path)
    kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    [single] = Trainer(devices=1, **kw).validate(model, dm, verbose=False)
    [ddp] = Trainer(devices=2, strategy="ddp_spawn", **kw).validate(model, dm, verbose=False)
    # 8 windows split 4 + 4 over two ranks: the token-weighted all-reduced mean equals the single-process one
    for key in ("val/loss", "val/ppl", "val/bpb"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5), key
