"""GPT model: HF GPT-2 folder loading (vs an independent forward pass), key errors, generation."""
import json
import math

import pytest
import torch
from torch.nn import functional as F

from crrelu_lightning.activations import CRReLU
from crrelu_lightning.models.gpt import GPT, GPTConfig

V, P, L, H, C = 37, 16, 2, 2, 8  # vocab, positions, layers, heads, width


def hf_tensors(seed=0, prefix="transformer."):
    """Random GPT-2 weights with HF names and Conv1D (in, out) orientation."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    sd = {f"{prefix}wte.weight": r(V, C), f"{prefix}wpe.weight": r(P, C),
          f"{prefix}ln_f.weight": 1 + r(C), f"{prefix}ln_f.bias": r(C)}
    for i in range(L):
        h = f"{prefix}h.{i}."
        sd.update({
            h + "ln_1.weight": 1 + r(C), h + "ln_1.bias": r(C), h + "ln_2.weight": 1 + r(C), h + "ln_2.bias": r(C),
            h + "attn.c_attn.weight": r(C, 3 * C), h + "attn.c_attn.bias": r(3 * C),
            h + "attn.c_proj.weight": r(C, C), h + "attn.c_proj.bias": r(C),
            h + "mlp.c_fc.weight": r(C, 4 * C), h + "mlp.c_fc.bias": r(4 * C),
            h + "mlp.c_proj.weight": r(4 * C, C), h + "mlp.c_proj.bias": r(C),
            # buffers present in real GPT-2 checkpoints; the loader must ignore them
            h + "attn.bias": torch.tril(torch.ones(1, 1, P, P)), h + "attn.masked_bias": torch.tensor(-1e4),
        })
    return sd


def write_folder(tmp_path, sd, fmt="safetensors", act="gelu_new"):
    cfg = {"vocab_size": V, "n_positions": P, "n_layer": L, "n_head": H, "n_embd": C,
           "layer_norm_epsilon": 1e-5, "activation_function": act, "model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    else:
        torch.save(sd, tmp_path / "pytorch_model.bin")
    return tmp_path


def reference_forward(sd, idx, prefix="transformer.", act=None, head=None):
    """GPT-2 written out from the raw HF tensors: Conv1D is x @ W + b, attention by explicit softmax."""
    act = act or (lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))))
    w = lambda k: sd[prefix + k]  # noqa: E731
    B, T = idx.shape
    x = w("wte.weight")[idx] + w("wpe.weight")[:T]

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * w(name + ".weight") + w(name + ".bias")

    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(L):
        h = f"h.{i}."
        qkv = ln(x, h + "ln_1") @ w(h + "attn.c_attn.weight") + w(h + "attn.c_attn.bias")
        q, k, v = qkv.split(C, -1)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ w(h + "attn.c_proj.weight") + w(h + "attn.c_proj.bias")
        m = act(ln(x, h + "ln_2") @ w(h + "mlp.c_fc.weight") + w(h + "mlp.c_fc.bias"))
        x = x + m @ w(h + "mlp.c_proj.weight") + w(h + "mlp.c_proj.bias")
    return ln(x, "ln_f") @ (w("wte.weight") if head is None else head).T


@pytest.mark.parametrize("fmt,prefix", [("safetensors", "transformer."), ("bin", ""), ("safetensors", "")])
def test_from_pretrained_matches_independent_forward(tmp_path, fmt, prefix):
    sd = hf_tensors(prefix=prefix)
    model = GPT.from_pretrained(write_folder(tmp_path, sd, fmt)).eval()
    assert model.config.activation == "gelu_tanh"
    idx = torch.randint(V, (3, P))
    with torch.no_grad():
        got = model(idx)
    want = reference_forward(sd, idx, prefix=prefix)
    assert got.shape == (3, P, V)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_activation_swap_after_loading(tmp_path):
    sd = hf_tensors()
    model = GPT.from_pretrained(write_folder(tmp_path, sd), activation="crrelu",
                                activation_kwargs={"eps_init": 0.3, "impl": "reference"}).eval()
    acts = [b.mlp.act for b in model.transformer.h]
    assert all(isinstance(a, CRReLU) and abs(a.eps.item() - 0.3) < 1e-7 for a in acts)
    cr = lambda x: F.relu(x) + 0.3 * x * torch.exp(-x * x / 2)  # noqa: E731
    idx = torch.randint(V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_forward(sd, idx, act=cr), atol=1e-5, rtol=1e-5)


def test_missing_and_misshaped_keys_are_all_named(tmp_path):
    sd = hf_tensors()
    del sd["transformer.h.1.mlp.c_fc.bias"]
    del sd["transformer.ln_f.weight"]
    sd["transformer.h.0.attn.c_proj.weight"] = torch.zeros(C, C + 1)
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(write_folder(tmp_path, sd))
    msg = str(e.value)
    for key in ("h.1.mlp.c_fc.bias", "ln_f.weight", "h.0.attn.c_proj.weight"):
        assert key in msg


def test_missing_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GPT.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": V, "n_positions": P, "n_layer": L,
                                                       "n_head": H, "n_embd": C}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)


def test_forward_loss_is_cross_entropy_and_embeddings_are_tied():
    model = GPT(GPTConfig(vocab_size=V, block_size=P, n_layer=1, n_head=2, n_embd=8, activation="relu"))
    assert model.lm_head.weight is model.transformer.wte.weight
    idx, tgt = torch.randint(V, (2, 5)), torch.randint(V, (2, 5))
    tgt[0, :2] = -100
    logits, loss = model(idx, tgt)
    keep = tgt != -100
    manual = -(logits.log_softmax(-1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]).mean()
    torch.testing.assert_close(loss, manual)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, P + 1, dtype=torch.long))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(KeyError, match="not_an_activation"):
        GPTConfig(activation="not_an_activation")


def test_generate_greedy_and_top_k():
    model = GPT(GPTConfig(vocab_size=V, block_size=6, n_layer=1, n_head=2, n_embd=8)).eval()
    idx = torch.randint(V, (2, 3))
    out = model.generate(idx, 8, temperature=0.0)  # longer than block_size: context is cropped
    assert out.shape == (2, 11) and torch.equal(out[:, :3], idx)
    # each greedy token is the argmax given the (cropped) prefix
    for t in range(3, 11):
        with torch.no_grad():
            want = model(out[:, max(0, t - 6):t])[:, -1].argmax(-1)
        assert torch.equal(out[:, t], want)
    # top_k=1 sampling is greedy at any temperature
    assert torch.equal(model.generate(idx, 8, temperature=1.5, top_k=1), out)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(idx, 1, temperature=-1.0)


# ---------------------------------------------------------------- strict loading (nothing silently ignored)
@pytest.mark.parametrize("key,value", [("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False),
                                       ("add_cross_attention", True), ("n_inner", 3 * C), ("model_type", "gpt_neo")])
def test_unrepresentable_gpt2_options_are_refused_by_name(tmp_path, key, value):
    write_folder(tmp_path, hf_tensors())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=rf"config\.json: .*{key}={json.dumps(value)} is not supported"):
        GPT.from_pretrained(tmp_path)
    # the representable values of the same options load
    ok = {"scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True, "add_cross_attention": False,
          "n_inner": 4 * C, "model_type": "gpt2"}[key]
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: ok}))
    GPT.from_pretrained(tmp_path)


def test_untied_output_head_is_loaded_and_used(tmp_path):
    sd = hf_tensors()
    head = torch.randn(V, C, generator=torch.Generator().manual_seed(5))
    write_folder(tmp_path, {**sd, "lm_head.weight": head})
    cfg = json.loads((tmp_path / "config.json").read_text())
    # tied in config.json, but a different head in the file: refused (neither choice would be silent)
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight .*tie_word_embeddings"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    model = GPT.from_pretrained(tmp_path).eval()
    assert model.lm_head.weight is not model.transformer.wte.weight
    idx = torch.randint(V, (2, P))
    with torch.no_grad():
        got = model(idx)
    torch.testing.assert_close(got, reference_forward(sd, idx, head=head), atol=1e-5, rtol=1e-5)
    write_folder(tmp_path, sd)  # untied config without the head tensor
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match="tie_word_embeddings is false but .* no lm_head.weight"):
        GPT.from_pretrained(tmp_path)


def test_tensors_without_a_place_are_refused(tmp_path):
    sd = hf_tensors()
    sd["multiple_choice_head.summary.weight"] = torch.zeros(1, C)
    with pytest.raises(ValueError, match="no place for .*multiple_choice_head.summary.weight"):
        GPT.from_pretrained(write_folder(tmp_path, sd))
