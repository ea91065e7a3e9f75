"""A GPT-2 model small enough to read in one sitting, with the MLP activation taken from the registry.

    h = x + attn(ln_1(x));  y = h + c_proj(act(c_fc(ln_2(h))));  logits = ln_f(y) @ Wᵀ

with W = wte (tied embeddings, GPT-2's default) or a separate ``lm_head`` (``tie_embeddings=False``).

``GPTConfig`` is the model's whole shape: ``GPTConfig.from_hf(folder)`` reads a Hugging Face
``config.json`` and refuses, by name, every GPT-2 option this model cannot represent
(``HF_REQUIRED``); ``GPTConfig.from_checkpoint(file)`` reads the shape a language run stored in its
checkpoint. ``GPT.from_pretrained(folder, activation=...)`` loads the weights (``model.safetensors`` or
``pytorch_model.bin``, every tensor accounted for) and can swap the activation after loading (the
paper's setting: GPT-2 with CRReLU in every MLP).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from crrelu_lightning.activations import get_activation

# HF ``activation_function`` values -> registry names.
HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}


@dataclass
class GPTConfig:
    """Shape and activation of a GPT. ``n_embd`` must be divisible by ``n_head``."""

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_tanh"
    activation_kwargs: Dict[str, Any] = field(default_factory=dict)
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.activation_kwargs = dict(self.activation_kwargs or {})
        get_activation(self.activation)  # fail early on an unknown name (the error lists the registry)

    @classmethod
    def from_hf(cls, path: Union[str, Path], dropout: float = 0.0) -> "GPTConfig":
        """The shape in a Hugging Face GPT-2 ``config.json`` (a folder or the file); see ``HF_REQUIRED``."""
        file = Path(path)
        file = file / "config.json" if file.is_dir() else file
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: expected a Hugging Face GPT-2 folder with config.json")
        hf = json.loads(file.read_text())
        problems = unsupported_hf_options(hf)
        if problems:
            raise ValueError(f"{file}: this GPT-2 cannot be represented here: " + "; ".join(problems))
        hf_act = hf.get("activation_function", "gelu_new")
        native = hf.get(CRRELU_ACTIVATION_KEY)  # written by our export for activations HF does not know
        if native is None and hf_act not in HF_ACTIVATIONS:
            raise ValueError(f"{file}: unsupported activation_function {hf_act!r}; known: {sorted(HF_ACTIVATIONS)}")
        act = native or {"name": HF_ACTIVATIONS[hf_act], "kwargs": {}}
        try:
            return cls(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                       n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True,
                       layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), activation=act["name"],
                       activation_kwargs=act.get("kwargs") or {}, tie_embeddings=hf.get("tie_word_embeddings", True))
        except KeyError as e:
            raise ValueError(f"{file}: missing GPT-2 field {e}") from e

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path]) -> "GPTConfig":
        """The shape a ``CausalLM``/``DPO`` checkpoint stores under ``checkpoint["gpt"]["config"]``."""
        return cls(**checkpoint_gpt(torch.load(path, map_location="cpu", weights_only=True, mmap=True), path)["config"])


CHECKPOINT_KEY = "gpt"  # checkpoint["gpt"] = {"config": asdict(GPTConfig), "prefix": "model." | "policy."}
CRRELU_ACTIVATION_KEY = "crrelu_lightning_activation"  # {"name", "kwargs"} in an exported config.json
ACTIVATION_FILE = "activation.safetensors"  # the activations' own parameters (ε) beside model.safetensors


def checkpoint_gpt(ckpt: Mapping[str, Any], path: Union[str, Path]) -> Dict[str, Any]:
    """``{"config", "prefix"}`` stored by a language module; a clear error for any other checkpoint."""
    entry = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(entry, dict) or "config" not in entry or "prefix" not in entry:
        raise ValueError(f"{path}: not a checkpoint of a crrelu_lightning language run (no checkpoint['{CHECKPOINT_KEY}'] "
                         "with the model's shape); give a CausalLM/DPO checkpoint or a Hugging Face GPT-2 folder")
    return entry


# GPT-2 options (config.json key -> (accepted values, why another value cannot be represented)).
HF_REQUIRED = {
    "model_type": (("gpt2",), "only the GPT-2 architecture is implemented"),
    "scale_attn_weights": ((True,), "attention scores are always scaled by 1/sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": ((False,), "attention is not additionally scaled by 1/(layer_idx+1)"),
    "add_cross_attention": ((False,), "the blocks have no cross-attention"),
    "n_inner": ((None,), "the MLP width is always 4·n_embd"),
}


def unsupported_hf_options(hf: Mapping[str, Any]) -> List[str]:
    """One message per option of a GPT-2 ``config.json`` with a value this model cannot represent."""
    out = []
    for key, (ok, why) in HF_REQUIRED.items():
        if key not in hf:
            continue
        value = hf[key]
        if key == "n_inner" and value == 4 * hf.get("n_embd", -1):
            continue
        if value not in ok or isinstance(value, bool) != isinstance(ok[0], bool):
            out.append(f"{key}={json.dumps(value)} is not supported ({why}; supported: {json.dumps(ok[0])})")
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = get_activation(cfg.activation, **cfg.activation_kwargs)()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2. ``forward(idx, targets=None)`` returns logits ``(B, T, vocab)``, or ``(logits, loss)``
    when ``targets`` is given (cross-entropy, positions with target ``-100`` ignored)."""

    def __init__(self, config: Optional[GPTConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = GPTConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a GPTConfig or keyword arguments, not both")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: std 0.02/sqrt(2·n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def set_activation(self, name: str, **kwargs: Any) -> None:
        """Replace every MLP activation by a fresh ``name`` module (weights of the linears are kept)."""
        factory = get_activation(name, **kwargs)
        device = self.transformer.wte.weight.device
        for block in self.transformer.h:
            block.mlp.act = factory().to(device)
        self.config.activation = name
        self.config.activation_kwargs = dict(kwargs)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T); ``temperature=0`` is greedy."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    # ------------------------------------------------------------------ Hugging Face GPT-2 folders
    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        activation: Optional[str] = None,
        activation_kwargs: Optional[Dict[str, Any]] = None,
        dropout: float = 0.0,
    ) -> "GPT":
        """Load GPT-2 weights from a local HF folder, then optionally swap the MLP activation.

        Conv1D weights are stored (in, out) in HF checkpoints and are transposed for ``nn.Linear``.
        Missing, mis-shaped or unexpected tensors raise a ``ValueError`` naming every offending key.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"GPT-2 folder {str(folder)!r} does not exist")
        model = cls(GPTConfig.from_hf(folder, dropout=dropout))
        model.load_hf_state_dict(_read_weights(folder), source=str(folder))
        extra = folder / ACTIVATION_FILE
        if extra.is_file():  # exported with an activation Hugging Face does not know (CR's ε per layer)
            from safetensors.torch import load_file

            missing, unexpected = model.load_state_dict(load_file(str(extra)), strict=False)
            wanted = [k for k in missing if ".mlp.act." in k]
            if unexpected or wanted:
                raise ValueError(f"{extra} does not match the activation in config.json: missing {wanted}, "
                                 f"unexpected {unexpected}")
        if activation is not None:
            model.set_activation(activation, **(activation_kwargs or {}))
        return model

    def load_hf_state_dict(self, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy HF-named tensors (with or without the ``transformer.`` prefix) into this model."""
        sd = {(k[len("transformer.") :] if k.startswith("transformer.") else k): v for k, v in sd.items()}
        head = sd.pop("lm_head.weight", None)
        if self.config.tie_embeddings and head is not None and "wte.weight" in sd and not torch.equal(head, sd["wte.weight"]):
            raise ValueError(f"{source}: lm_head.weight differs from wte.weight but the config ties them "
                             "(tie_word_embeddings is true or absent); set \"tie_word_embeddings\": false in "
                             "config.json to load the separate output head")
        if not self.config.tie_embeddings:
            if head is None:
                raise ValueError(f"{source}: tie_word_embeddings is false but the checkpoint has no lm_head.weight")
            sd["lm_head.weight"] = head
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        own = {k: v for k, v in self.state_dict().items() if not (self.config.tie_embeddings and k.startswith("lm_head."))}
        missing, bad_shape, used = [], [], set()
        for key, target in own.items():
            if ".mlp.act." in key:
                continue  # activation parameters (CR's ε, PReLU's slope) are not part of a GPT-2 checkpoint
            hf_key = key[len("transformer.") :] if key.startswith("transformer.") else key
            if hf_key not in sd:
                missing.append(hf_key)
                continue
            used.add(hf_key)
            src = sd[hf_key]
            if hf_key.endswith(conv1d):
                src = src.t()
            if tuple(src.shape) != tuple(target.shape):
                bad_shape.append(f"{hf_key}: checkpoint {tuple(sd[hf_key].shape)}, expected {tuple(target.shape)}"
                                 + (" (stored as Conv1D (in, out))" if hf_key.endswith(conv1d) else ""))
                continue
            with torch.no_grad():
                target.copy_(src.to(target.dtype))
        # the causal-mask buffers of older transformers versions hold no weights
        unexpected = [k for k in sd if k not in used and not k.endswith((".attn.bias", ".attn.masked_bias"))]
        if missing or bad_shape or unexpected:
            lines = []
            if missing:
                lines.append(f"missing tensors ({len(missing)}): " + ", ".join(missing))
            if bad_shape:
                lines.append(f"mis-shaped tensors ({len(bad_shape)}): " + "; ".join(bad_shape))
            if unexpected:
                lines.append(f"tensors this GPT-2 has no place for ({len(unexpected)}): " + ", ".join(sorted(unexpected)))
            raise ValueError(f"{source}: GPT-2 checkpoint does not match the config: " + " | ".join(lines))

    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        """This model's tensors under Hugging Face GPT-2 names and layout (Conv1D weights as (in, out));
        the inverse of ``load_hf_state_dict``. Activation parameters (ε) are returned separately by
        ``activation_state_dict``."""
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        out: Dict[str, torch.Tensor] = {}
        for key, v in self.state_dict().items():
            if ".mlp.act." in key or (key.startswith("lm_head.") and self.config.tie_embeddings):
                continue
            v = v.detach().cpu()
            out[key] = (v.t() if key.endswith(conv1d) else v).contiguous()
        return out

    def activation_state_dict(self) -> Dict[str, torch.Tensor]:
        """Parameters and buffers of the MLP activations (CR's ε, ...), under this model's names."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if ".mlp.act." in k}


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin found")
