"""init_from: checkpoint file, run folder (its checkpoints/last.ckpt), logger folder (newest version with one);
the shape always comes from checkpoint["gpt"], and unusable sources fail naming the path."""
import pytest
import torch

from crrelu_lightning.models.gpt import GPTConfig
from crrelu_lightning.models.language import CausalLM, build_gpt, resolve_init_from


def save(module, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def tiny(n_embd=8, activation="relu"):
    return CausalLM(GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=n_embd, activation=activation),
                    sample_tokens=0)


def test_run_and_logger_folders_resolve_to_last_ckpt(tmp_path):
    logs = tmp_path / "lightning_logs" / "shakespeare_char"
    v0 = save(tiny(8), logs / "version_0" / "checkpoints" / "last.ckpt")
    v1 = save(tiny(12), logs / "version_1" / "checkpoints" / "last.ckpt")
    (logs / "version_2" / "checkpoints").mkdir(parents=True)  # a run that failed before saving
    (logs / "version_10").mkdir()
    assert resolve_init_from(logs) == v1  # newest version that has a last.ckpt (10 > 2 > 1 numerically)
    assert resolve_init_from(logs / "version_0") == v0
    assert resolve_init_from(v0) == v0
    flat = save(tiny(8), tmp_path / "flat" / "last.ckpt")
    assert resolve_init_from(flat.parent) == flat
    # the shape is the stored one, whatever the caller's defaults
    assert build_gpt(None, str(logs)).config.n_embd == 12
    with pytest.raises(FileNotFoundError, match=r"version_2.*without config\.json, checkpoints/last\.ckpt"):
        resolve_init_from(logs / "version_2")
    with pytest.raises(FileNotFoundError, match=r"init_from='.*missing' does not exist"):
        resolve_init_from(tmp_path / "missing")


def test_shape_is_read_never_guessed(tmp_path):
    src = save(tiny(8, "gelu"), tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="not both"):
        build_gpt(GPTConfig(n_embd=8, n_head=2), str(src))
    swapped = build_gpt(None, str(src), activation="crrelu")
    assert swapped.config.activation == "crrelu" and swapped.config.n_embd == 8
    assert GPTConfig.from_checkpoint(src).activation == "gelu"  # stored as the source trained it
    ckpt = torch.load(src, weights_only=True)
    del ckpt["gpt"]  # an old or foreign checkpoint: refused, not guessed from its key names
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"old\.ckpt: not a checkpoint of a crrelu_lightning language run"):
        build_gpt(None, str(tmp_path / "old.ckpt"))
    # activation_kwargs alone rebuild the same activation with those arguments
    fresh = build_gpt(GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8, activation="crrelu"),
                      None, activation_kwargs={"eps_init": 0.3})
    assert fresh.transformer.h[0].mlp.act.eps.item() == pytest.approx(0.3)
