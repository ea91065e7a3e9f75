"""Export to the Hugging Face GPT-2 layout: the folder loads in transformers' GPT2LMHeadModel with equal logits
(GELU, tied and untied heads); CRReLU is recorded and loads back here exactly, and in transformers with the
registration recipe of docs/language.md. Skipped where transformers is not installed."""
import json
from dataclasses import asdict

import pytest
import torch

from crrelu_lightning.export import export_hf
from crrelu_lightning.models.gpt import GPT, GPTConfig
from crrelu_lightning.models.language import CausalLM

V = 256  # byte-level runs: the tokenizer shipped is the byte map


def save_run_checkpoint(module, path, tokenizer="byte"):
    """What Lightning writes for a fit (the parts export reads), through the module's own hook."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"tokenizer": tokenizer}}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def tiny(activation="gelu_tanh", tie=True, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, block_size=12, n_layer=2, n_head=2, n_embd=8, activation=activation,
                    tie_embeddings=tie, **kw)
    module = CausalLM(cfg, sample_tokens=0)
    with torch.no_grad():  # move off the init so a dropped or transposed tensor shows
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("tie", [True, False])
def test_gelu_export_loads_in_transformers_with_equal_logits(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    module = tiny(tie=tie).eval()
    export_hf(save_run_checkpoint(module, tmp_path / "run.ckpt"), tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.activation_function == "gelu_new" and hf.config.tie_word_embeddings == tie
    idx = torch.randint(V, (3, 12))
    with torch.no_grad():
        want = module.model(idx)
        got = hf(idx).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    again = GPT.from_pretrained(tmp_path / "hf").eval()  # and back, bit for bit
    assert asdict(again.config) == asdict(module.model.config)
    with torch.no_grad():
        torch.testing.assert_close(again(idx), want, atol=0, rtol=0)


def test_crrelu_export_records_the_activation_and_loads_back(tmp_path):
    module = tiny("crrelu", activation_kwargs={"eps_init": 0.2})
    with torch.no_grad():
        for i, b in enumerate(module.model.transformer.h):
            b.mlp.act.eps.fill_(0.05 * (i + 1))  # per-layer ε, as training leaves them
    export_hf(save_run_checkpoint(module, tmp_path / "run.ckpt"), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["activation_function"] == "crrelu"
    assert cfg["crrelu_lightning_activation"] == {"name": "crrelu", "kwargs": {"eps_init": 0.2}}
    assert cfg["crrelu_lightning_tokenizer"] == "byte"
    again = GPT.from_pretrained(tmp_path / "hf").eval()
    assert [b.mlp.act.eps.item() for b in again.transformer.h] == pytest.approx([0.05, 0.10])
    idx = torch.randint(V, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(idx), module.model.eval()(idx), atol=0, rtol=0)

    transformers = pytest.importorskip("transformers")
    # the recipe of docs/language.md: register the class under its name, then load ε beside the weights
    from safetensors.torch import load_file
    from transformers.activations import ACT2FN

    from crrelu_lightning.activations import get_activation

    ACT2FN["crrelu"] = (get_activation("crrelu"), cfg["crrelu_lightning_activation"]["kwargs"])
    try:
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
        missing, unexpected = hf.load_state_dict(load_file(str(tmp_path / "hf" / "activation.safetensors")), strict=False)
        assert not unexpected and not any(".mlp.act." in k for k in missing)
        with torch.no_grad():
            torch.testing.assert_close(hf(idx).logits, module.model(idx), atol=1e-5, rtol=1e-5)
    finally:
        del ACT2FN["crrelu"]


def test_export_refuses_what_it_cannot_do(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt: not a checkpoint of a crrelu_lightning language run"):
        export_hf(tmp_path / "other.ckpt", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="init_from=.*nope.*does not exist"):
        export_hf(tmp_path / "nope", tmp_path / "out")
