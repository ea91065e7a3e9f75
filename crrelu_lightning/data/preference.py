"""Preference pairs (prompt, chosen, rejected) for DPO, and (prompt, response) for SFT.

Sources (all local):
* ``hh``  — JSONL with ``chosen`` / ``rejected`` transcripts (Anthropic HH). The prompt is the common
  prefix up to and including the last ``"\\n\\nAssistant:"`` of ``chosen``; the responses are the rest.
* ``shp`` — JSONL with ``history``, ``human_ref_A``, ``human_ref_B``, ``labels`` (1: A preferred).
  Prompt = ``"\\n\\nHuman: " + history + "\\n\\nAssistant:"``, responses ``" " + ref``.
* ``sentiment`` — the human-rated snippets of DATA.md (``*_GroundTruth.txt``: id, mean rating, text):
  a snippet rated >= +1 (chosen) paired with one rated <= -1 (rejected) under ``SENTIMENT_PROMPT``.
  Snippets are split into train/validation *before* pairing, so no snippet is in both.

Truncation (``truncate_pair``): when prompt + longer response exceeds ``max_length`` tokens, the
prompt is cut from the LEFT down to ``max_prompt_length`` tokens (its end, next to the response,
is what matters); if that is still too long, the responses are cut on the RIGHT to fit. The response
mask always covers exactly the response tokens that remain.
"""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from crrelu_lightning.tokenizers import build_tokenizer

SENTIMENT_PROMPT = "Write a positive sentence from a movie review:"
HH_SEARCH = "\n\nAssistant:"
Pair = Tuple[str, str, str]  # (prompt, chosen response, rejected response)


class MalformedRecordError(ValueError):
    pass


def _report(errors: List[str], on_error: str, source: str) -> None:
    if errors and on_error == "skip":
        shown = "; ".join(errors[:5]) + (f"; ... ({len(errors) - 5} more)" if len(errors) > 5 else "")
        warnings.warn(f"skipped {len(errors)} malformed record(s) in {source}: {shown}", stacklevel=3)


def _hh_pair(rec: Dict[str, Any]) -> Pair:
    chosen, rejected = rec["chosen"], rec["rejected"]
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise MalformedRecordError("'chosen' and 'rejected' must be strings")
    cut = chosen.rfind(HH_SEARCH)
    if cut < 0:
        raise MalformedRecordError(f"'chosen' has no {HH_SEARCH!r} turn")
    prompt = chosen[: cut + len(HH_SEARCH)]
    if not rejected.startswith(prompt):
        raise MalformedRecordError("'rejected' does not share the prompt of 'chosen'")
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def _shp_pair(rec: Dict[str, Any]) -> Pair:
    a, b, label = rec["human_ref_A"], rec["human_ref_B"], rec["labels"]
    if label not in (0, 1):
        raise MalformedRecordError(f"'labels' must be 0 or 1, got {label!r}")
    prompt = "\n\nHuman: " + str(rec["history"]) + HH_SEARCH
    chosen, rejected = (a, b) if label == 1 else (b, a)
    return prompt, " " + str(chosen), " " + str(rejected)


PARSERS = {"hh": _hh_pair, "shp": _shp_pair}


def read_jsonl_pairs(path: Path, fmt: str, on_error: str = "raise") -> List[Pair]:
    """Parse HH/SHP JSONL. Bad lines raise (``on_error="raise"``) or are skipped with one warning
    listing ``file:line: reason`` for each."""
    if fmt not in PARSERS:
        raise ValueError(f"format must be one of {sorted(PARSERS)}, got {fmt!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file {str(path)!r} does not exist")
    pairs, errors = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise MalformedRecordError(f"expected a JSON object, got {type(rec).__name__}")
                pairs.append(PARSERS[fmt](rec))
            except (json.JSONDecodeError, MalformedRecordError, KeyError, TypeError) as e:
                what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
                msg = f"{path}:{lineno}: {what}"
                if on_error == "raise":
                    raise MalformedRecordError(f"malformed {fmt} record at {msg}") from e
                errors.append(msg)
    _report(errors, on_error, str(path))
    if not pairs:
        raise ValueError(f"{path}: no valid {fmt} records")
    return pairs


def read_rated_snippets(path: Path, on_error: str = "raise") -> List[Tuple[float, str]]:
    """``id<TAB>rating<TAB>text`` lines -> (rating, text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentiment file {str(path)!r} does not exist (run `crrelu-lightning data fetch sentiment`)")
    out, errors = [], []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                if len(parts) < 3:
                    raise MalformedRecordError(f"expected 3 tab-separated fields, got {len(parts)}")
                out.append((float(parts[1]), "\t".join(parts[2:]).strip()))
            except (ValueError, MalformedRecordError) as e:
                if on_error == "raise":
                    raise MalformedRecordError(f"malformed rated snippet at {path}:{lineno}: {e}") from e
                errors.append(f"{path}:{lineno}: {e}")
    _report(errors, on_error, str(path))
    return out


def sentiment_pairs(snippets: Sequence[Tuple[float, str]], seed: int, val_fraction: float) -> Tuple[List[Pair], List[Pair]]:
    """Positive (>= +1) vs negative (<= -1) snippets, each pool split train/val first, then paired
    in a seeded random order (min(#pos, #neg) pairs in all)."""
    rng = random.Random(seed)
    pos = [t for r, t in snippets if r >= 1.0]
    neg = [t for r, t in snippets if r <= -1.0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    n = min(len(pos), len(neg))
    n_val = max(1, int(round(n * val_fraction)))
    prompt = SENTIMENT_PROMPT
    val = [(prompt, " " + c, " " + r) for c, r in zip(pos[:n_val], neg[:n_val])]
    train = [(prompt, " " + c, " " + r) for c, r in zip(pos[n_val:n], neg[n_val:n])]
    return train, val


def truncate_pair(prompt: List[int], responses: Sequence[List[int]], max_length: int, max_prompt_length: int):
    """Apply the module's truncation rule (see module docstring); returns (prompt, responses)."""
    longest = max(len(r) for r in responses)
    if len(prompt) + longest > max_length:
        prompt = prompt[-max_prompt_length:] if len(prompt) > max_prompt_length else prompt
    if len(prompt) + longest > max_length:
        keep = max_length - len(prompt)
        responses = [r[:keep] for r in responses]
    return prompt, list(responses)


def pad_sequences(seqs: Sequence[Tuple[List[int], int]], pad_id: int = 0) -> Dict[str, torch.Tensor]:
    """[(tokens, prompt_len)] -> right-padded ``input_ids`` and ``loss_mask`` (True on response tokens)."""
    T = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (s, p) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, p : len(s)] = True
    return {"input_ids": ids, "loss_mask": mask}


class PreferenceDataModule(LightningDataModule):
    """Preference data for ``DPO`` (``mode="dpo"``) or prompt/chosen-response data for SFT with
    ``CausalLM`` (``mode="sft"``).

    Args:
        format: ``"hh"``, ``"shp"`` or ``"sentiment"``.
        train_path / val_path: JSONL files (hh/shp). For sentiment: a ``*_GroundTruth.txt`` file or the
            fetched folder (uses ``movieReviewSnippets_GroundTruth.txt``); ``val_path`` is unused and
            ``val_fraction`` of the pairs is held out with ``seed``.
        max_length / max_prompt_length: token limits of the truncation rule.
        on_error: ``"raise"`` or ``"skip"`` malformed records (reported with file and line).
    """

    def __init__(
        self,
        format: str = "hh",
        train_path: str = "data/hh/train.jsonl",
        val_path: Optional[str] = None,
        tokenizer: str = "byte",
        mode: str = "dpo",
        max_length: int = 512,
        max_prompt_length: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        max_train_pairs: Optional[int] = None,
        max_val_pairs: Optional[int] = None,
        on_error: str = "raise",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if format not in ("hh", "shp", "sentiment"):
            raise ValueError(f"format must be 'hh', 'shp' or 'sentiment', got {format!r}")
        if mode not in ("dpo", "sft"):
            raise ValueError(f"mode must be 'dpo' or 'sft', got {mode!r}")
        if not 0 < max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.save_hyperparameters()
        self.tokenizer = build_tokenizer(tokenizer)
        self.train_pairs: Optional[List[Pair]] = None
        self.val_pairs: Optional[List[Pair]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_pairs is not None:
            return
        hp = self.hparams
        if hp.format == "sentiment":
            path = Path(hp.train_path)
            if path.is_dir():
                path = path / "movieReviewSnippets_GroundTruth.txt"
            train, val = sentiment_pairs(read_rated_snippets(path, hp.on_error), hp.seed, hp.val_fraction)
        else:
            train = read_jsonl_pairs(Path(hp.train_path), hp.format, hp.on_error)
            if hp.val_path is not None:
                val = read_jsonl_pairs(Path(hp.val_path), hp.format, hp.on_error)
            else:  # seeded split of the training file
                order = list(range(len(train)))
                random.Random(hp.seed).shuffle(order)
                n_val = max(1, int(round(len(train) * hp.val_fraction)))
                val = [train[i] for i in order[:n_val]]
                train = [train[i] for i in order[n_val:]]
        self.train_pairs = train[: hp.max_train_pairs] if hp.max_train_pairs else train
        self.val_pairs = val[: hp.max_val_pairs] if hp.max_val_pairs else val

    def encode_pair(self, pair: Pair) -> Dict[str, Any]:
        """Tokenise and truncate one pair; responses end with EOS when the tokenizer has one."""
        tok, hp = self.tokenizer, self.hparams
        eos = [tok.eos_id] if tok.eos_id is not None else []
        prompt = tok.encode(pair[0])
        responses = [tok.encode(pair[1]) + eos, tok.encode(pair[2]) + eos]
        prompt, (chosen, rejected) = truncate_pair(prompt, responses, hp.max_length, hp.max_prompt_length)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def collate(self, pairs: List[Pair]) -> Dict[str, torch.Tensor]:
        enc = [self.encode_pair(p) for p in pairs]
        pad = self.tokenizer.eos_id or 0
        if self.hparams.mode == "sft":
            return pad_sequences([(e["prompt"] + e["chosen"], len(e["prompt"])) for e in enc], pad)
        # chosen and rejected padded to one length so the policy runs them in a single forward pass
        both = pad_sequences([(e["prompt"] + e[k], len(e["prompt"])) for k in ("chosen", "rejected") for e in enc], pad)
        n = len(enc)
        return {
            "chosen_input_ids": both["input_ids"][:n],
            "chosen_loss_mask": both["loss_mask"][:n],
            "rejected_input_ids": both["input_ids"][n:],
            "rejected_loss_mask": both["loss_mask"][n:],
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_pairs, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          collate_fn=self.collate, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_pairs, batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=self.collate, num_workers=self.hparams.num_workers)
