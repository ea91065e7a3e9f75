"""``crrelu-lightning export``: a language checkpoint -> a Hugging Face GPT-2 folder.

    crrelu-lightning export --ckpt_path RUN_OR_CKPT --out DIR [--tokenizer PATH] [--overwrite]

writes ``DIR/config.json`` (GPT-2 fields, ``GPT2LMHeadModel``), ``DIR/model.safetensors`` (Hugging Face
names, Conv1D weights as (in, out), no ``lm_head.weight`` when tied) and the tokenizer's files
(vocab.json + merges.txt or tokenizer.json, with tokenizer_config.json etc. when present; the tokenizer
is the one the run's datamodule used unless ``--tokenizer`` names another; a byte-level run has none).

An activation Hugging Face knows (GELU, tanh-GELU, ReLU, SiLU, tanh) is written as its
``activation_function`` and the folder loads in ``transformers.GPT2LMHeadModel``. Any other one
(CRReLU, ...) is recorded by name, with its arguments, under ``crrelu_lightning_activation`` and its
parameters (ε per layer) go to ``activation.safetensors``; ``GPT.from_pretrained(DIR)`` restores it
exactly, and docs/language.md shows how to load it in transformers.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from crrelu_lightning.models.gpt import ACTIVATION_FILE, CRRELU_ACTIVATION_KEY, GPT, checkpoint_gpt

# registry name -> Hugging Face ``activation_function`` with the same function
TO_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "tanh": "tanh"}


def hf_config(model: GPT, eos_id: Optional[int]) -> Dict[str, Any]:
    """GPT-2 ``config.json`` fields for ``model`` (``GPTConfig.from_hf`` reads them back)."""
    c = model.config
    native = c.activation in TO_HF_ACTIVATION and not c.activation_kwargs
    cfg: Dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
        "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
        "activation_function": TO_HF_ACTIVATION[c.activation] if native else c.activation,
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_epsilon, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "tie_word_embeddings": c.tie_embeddings, "use_cache": True,
    }
    if eos_id is not None:
        cfg["bos_token_id"] = cfg["eos_token_id"] = eos_id
    if not native:
        cfg[CRRELU_ACTIVATION_KEY] = {"name": c.activation, "kwargs": dict(c.activation_kwargs)}
    return cfg


def _load(ckpt_path: Union[str, Path]):
    from crrelu_lightning.models.language import load_gpt_checkpoint, resolve_init_from

    path = resolve_init_from(ckpt_path)
    if path.is_dir():
        raise ValueError(f"{ckpt_path} is already a Hugging Face folder (config.json); export takes a run's checkpoint")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    checkpoint_gpt(ckpt, path)  # a clear error for a checkpoint that is not a language run's
    tokenizer = (ckpt.get("datamodule_hyper_parameters") or {}).get("tokenizer")
    return path, load_gpt_checkpoint(path), tokenizer


def export_hf(ckpt_path: Union[str, Path], out: Union[str, Path], tokenizer: Optional[str] = None,
              overwrite: bool = False) -> List[Path]:
    """Write the Hugging Face folder (see module docstring); returns the files written."""
    from safetensors.torch import save_file

    from crrelu_lightning.tokenizers import build_tokenizer

    path, model, run_tokenizer = _load(ckpt_path)
    tok = build_tokenizer(tokenizer or run_tokenizer or "byte")
    out = Path(out)
    names = ["config.json", "model.safetensors", ACTIVATION_FILE] + [f.name for f in tok.files]
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{out} already holds {clash}; choose another --out or pass --overwrite")
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer or run_tokenizer!r} has {tok.vocab_size} tokens, more than the "
                         f"model's vocab_size={model.config.vocab_size}: not the tokenizer this model was trained with")
    out.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(model, tok.eos_id)
    cfg["crrelu_lightning_source"] = str(path)
    written = [out / "config.json", out / "model.safetensors"]
    save_file(model.hf_state_dict(), str(written[1]), metadata={"format": "pt"})
    acts = model.activation_state_dict()
    if acts:
        save_file(acts, str(out / ACTIVATION_FILE), metadata={"format": "pt"})
        written.append(out / ACTIVATION_FILE)
    elif (out / ACTIVATION_FILE).exists():  # an older export's ε must not be picked up with these weights
        (out / ACTIVATION_FILE).unlink()
    if not tok.files:
        cfg["crrelu_lightning_tokenizer"] = "byte"  # UTF-8 bytes are the token ids; nothing to copy
    for f in tok.files:
        if f.resolve() != (out / f.name).resolve():
            shutil.copyfile(f, out / f.name)
        written.append(out / f.name)
    written[0].write_text(json.dumps(cfg, indent=2) + "\n")
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="crrelu-lightning export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--ckpt_path", required=True, help="a CausalLM/DPO .ckpt, or a run folder (its checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="folder to write the Hugging Face GPT-2 files into")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/file to ship (default: the run's datamodule's)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    args = p.parse_args(argv)
    for f in export_hf(args.ckpt_path, args.out, args.tokenizer, args.overwrite):
        print(f)
    return 0
