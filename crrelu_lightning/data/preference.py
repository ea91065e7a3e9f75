"""Preference pairs (prompt, chosen, rejected) for DPO, and (prompt, SFT target) for SFT.

Sources (all local; formats and folder layouts in ``preference_formats`` and docs/language.md):
``hh`` (Anthropic HH, ``<subset>/{train,test}.jsonl.gz``), ``shp`` (Stanford SHP,
``<domain>/{train,validation,test}.json``), ``trl`` (prompt/chosen/rejected records, JSONL or Parquet)
and ``sentiment`` — the human-rated snippets (``*_GroundTruth.txt``: id, mean rating, text): a snippet
rated >= +1 (chosen) paired with one rated <= -1 (rejected) under ``SENTIMENT_PROMPT``. Snippets are
split into train/validation *before* pairing, so no snippet is in both.

DPO sees one example per preference pair, SFT one per prompt (its SFT target), as the reference code.

Truncation (``truncate_pair``): when prompt + longer response exceeds ``max_length`` tokens, the
prompt is cut to ``max_prompt_length`` tokens, keeping its end (``keep_end``: HH, TRL, sentiment — the
last turn, next to the response, matters) or its start (``keep_start``: SHP — the post's opening states
the question); if that is still too long, the responses are cut on the RIGHT to fit. The response mask
always covers exactly the response tokens that remain.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from crrelu_lightning.data.preference_formats import SHP_MIN_SCORE_RATIO, PromptGroup, read_groups, split_files
from crrelu_lightning.data.records import BadRecords, MalformedRecordError
from crrelu_lightning.tokenizers import build_tokenizer

__all__ = ["MalformedRecordError", "PreferenceDataModule", "SENTIMENT_PROMPT", "pad_sequences", "truncate_pair"]

SENTIMENT_PROMPT = "Write a positive sentence from a movie review:"
Pair = Tuple[str, str, str]  # (prompt, chosen response, rejected response)


def read_rated_snippets(path: Path, on_error: str = "skip", max_bad_fraction: float = 0.1) -> List[Tuple[float, str]]:
    """``id<TAB>rating<TAB>text`` lines -> (rating, text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentiment file {str(path)!r} does not exist (run `crrelu-lightning data fetch sentiment`)")
    out, report = [], BadRecords("sentiment", on_error, max_bad_fraction)
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                if len(parts) < 3:
                    raise MalformedRecordError(f"expected 3 tab-separated fields, got {len(parts)}")
                rating = float(parts[1])
            except ValueError as e:
                report.bad(path, lineno, str(e))
                continue
            report.ok()
            out.append((rating, "\t".join(parts[2:]).strip()))
    report.finish(len(out), str(path))
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


def truncate_pair(prompt: List[int], responses: Sequence[List[int]], max_length: int, max_prompt_length: int,
                  mode: str = "keep_end"):
    """Apply the module's truncation rule (see module docstring); returns (prompt, responses)."""
    if mode not in ("keep_end", "keep_start"):
        raise ValueError(f"truncation mode must be 'keep_end' or 'keep_start', got {mode!r}")
    longest = max(len(r) for r in responses)
    if len(prompt) + longest > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:] if mode == "keep_end" else prompt[:max_prompt_length]
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


def holdout(groups: List[PromptGroup], fraction: float, seed: int) -> Tuple[List[PromptGroup], List[PromptGroup]]:
    """Seeded split by whole prompts (no prompt is in both): (train, val)."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(groups) * fraction)))
    if n_val >= len(groups):
        raise ValueError(f"only {len(groups)} prompt(s): nothing left to train on after holding out {n_val}")
    return [groups[i] for i in sorted(order[n_val:])], [groups[i] for i in sorted(order[:n_val])]


def examples(groups: Sequence[PromptGroup], mode: str) -> List[Pair]:
    """DPO: one (prompt, chosen, rejected) per pair. SFT: one (prompt, target, target) per prompt."""
    if mode == "sft":
        return [(g.prompt, g.sft_target, g.sft_target) for g in groups]
    return [(g.prompt, g.responses[i], g.responses[j]) for g in groups for i, j in g.pairs]


class PreferenceDataModule(LightningDataModule):
    """Preference data for ``DPO`` (``mode="dpo"``) or prompt/SFT-target data for SFT with ``CausalLM``
    (``mode="sft"``).

    Args:
        format: ``"hh"``, ``"shp"``, ``"trl"`` or ``"sentiment"``.
        train_path: a file, a folder holding ``<train_split>`` files, or a folder of subset/domain folders
            (HH ``<subset>/train.jsonl.gz``, SHP ``<domain>/train.json``). Sentiment: a
            ``*_GroundTruth.txt`` file or the fetched folder (``movieReviewSnippets_GroundTruth.txt``).
        val_path: file or folder for validation; None -> the ``val_split`` files of a ``train_path``
            folder, or (``train_path`` a file) ``val_fraction`` of its prompts held out with ``seed``.
        subsets: HH subsets / SHP domains / TRL subfolders to read (None: all found).
        train_split / val_split: split names in folder layouts (the reference code evaluates on ``test``).
        truncation: ``keep_end`` / ``keep_start`` for prompts; None -> keep_start for SHP, else keep_end.
        max_length / max_prompt_length: token limits of the truncation rule.
        on_error: ``"skip"`` (report file:line of each malformed record and go on) or ``"raise"``.
        max_bad_fraction: with ``skip``, more malformed records than this fraction stops the run.
    """

    def __init__(
        self,
        format: Literal["hh", "shp", "trl", "sentiment"] = "hh",
        train_path: str = "data/hh",
        val_path: Optional[str] = None,
        subsets: Optional[List[str]] = None,
        train_split: str = "train",
        val_split: str = "test",
        tokenizer: str = "byte",
        mode: Literal["dpo", "sft"] = "dpo",
        max_length: int = 512,
        max_prompt_length: int = 256,
        truncation: Optional[Literal["keep_end", "keep_start"]] = None,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        max_train_pairs: Optional[int] = None,
        max_val_pairs: Optional[int] = None,
        on_error: Literal["skip", "raise"] = "skip",
        max_bad_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if format not in ("hh", "shp", "trl", "sentiment"):
            raise ValueError(f"format must be 'hh', 'shp', 'trl' or 'sentiment', got {format!r}")
        if mode not in ("dpo", "sft"):
            raise ValueError(f"mode must be 'dpo' or 'sft', got {mode!r}")
        if not 0 < max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if truncation not in (None, "keep_end", "keep_start"):
            raise ValueError(f"truncation must be None, 'keep_end' or 'keep_start', got {truncation!r}")
        self.save_hyperparameters()
        self.tokenizer = build_tokenizer(tokenizer)
        self.truncation = truncation or ("keep_start" if format == "shp" else "keep_end")
        self.train_pairs: Optional[List[Pair]] = None
        self.val_pairs: Optional[List[Pair]] = None

    def _read(self, path: str, split: str) -> List[PromptGroup]:
        hp = self.hparams
        files = split_files(hp.format, Path(path), split, hp.subsets)
        stats: Dict[str, int] = {}
        groups = read_groups(hp.format, files, hp.on_error, hp.max_bad_fraction, stats)
        shown = ", ".join(map(str, files[:3])) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
        rank_zero_info(f"{hp.format} {split}: {stats['pairs']} pairs over {len(groups)} prompts from {shown} "
                       f"({stats['malformed']} malformed skipped"
                       + (f", {stats['filtered']} below the score ratio {SHP_MIN_SCORE_RATIO:g}" if hp.format == "shp" else "") + ")")
        return groups

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_pairs is not None:
            return
        hp = self.hparams
        if hp.format == "sentiment":
            path = Path(hp.train_path)
            if path.is_dir():
                path = path / "movieReviewSnippets_GroundTruth.txt"
            snippets = read_rated_snippets(path, hp.on_error, hp.max_bad_fraction)
            train, val = sentiment_pairs(snippets, hp.seed, hp.val_fraction)
            if hp.mode == "sft":
                train, val = ([(p, c, c) for p, c, _ in xs] for xs in (train, val))
        else:
            train_groups = self._read(hp.train_path, hp.train_split)
            if hp.val_path is not None:
                val_groups = self._read(hp.val_path, hp.val_split)
            elif Path(hp.train_path).is_dir():
                val_groups = self._read(hp.train_path, hp.val_split)
            else:  # seeded split of the training file by whole prompts
                train_groups, val_groups = holdout(train_groups, hp.val_fraction, hp.seed)
            train, val = examples(train_groups, hp.mode), examples(val_groups, hp.mode)
        self.train_pairs = train[: hp.max_train_pairs] if hp.max_train_pairs else train
        self.val_pairs = val[: hp.max_val_pairs] if hp.max_val_pairs else val
        if len(self.train_pairs) < hp.batch_size:
            raise ValueError(f"{len(self.train_pairs)} training examples from {hp.train_path!r} are fewer than "
                             f"batch_size={hp.batch_size} (the last partial batch is dropped): no training batches")

    def encode_pair(self, pair: Pair) -> Dict[str, Any]:
        """Tokenise and truncate one pair; responses end with EOS when the tokenizer has one."""
        tok, hp = self.tokenizer, self.hparams
        eos = [tok.eos_id] if tok.eos_id is not None else []
        prompt = tok.encode(pair[0])
        responses = [tok.encode(pair[1]) + eos, tok.encode(pair[2]) + eos]
        prompt, (chosen, rejected) = truncate_pair(prompt, responses, hp.max_length, hp.max_prompt_length,
                                                   self.truncation)
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
