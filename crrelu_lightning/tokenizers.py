"""Tokenizers: byte-level (no files), GPT-2 byte-pair encoding read from local files, and any
Hugging Face ``tokenizer.json`` through the optional ``tokenizers`` library.

* ``ByteTokenizer``: token = UTF-8 byte (vocab 256), so bits per byte = loss / ln 2.
* ``GPT2BPETokenizer``: GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt``. Bytes are mapped to
  printable unicode characters (``bytes_to_unicode``), text is pre-split with GPT-2's regex, and each
  piece is merged greedily by merge rank (lowest rank first) until no ranked pair remains.
* ``HFTokenizer``: a folder (or file) with ``tokenizer.json``, encoded by ``tokenizers.Tokenizer``
  (``pip install 'crrelu-lightning[hf]'``); EOS from ``tokenizer_config.json`` or a usual name.

``build_tokenizer(spec)`` picks one: ``"byte"``; a folder with vocab.json + merges.txt (no extra needed);
a folder with only ``tokenizer.json``, or the file itself.
"""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union


class ByteTokenizer:
    """UTF-8 bytes as tokens. ``decode`` replaces invalid byte sequences rather than failing."""

    vocab_size = 256
    eos_id: Optional[int] = None
    name = "byte"
    files: List[Path] = []  # nothing to export: the byte map needs no files

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable bytes map to themselves;
    the other 68 go to code points 256, 257, ... in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _ranges(chars: Sequence[str]) -> str:
    """A regex character-class body for a sorted list of characters, as escaped ``a-b`` runs."""
    out, i = [], 0
    while i < len(chars):
        j = i
        while j + 1 < len(chars) and ord(chars[j + 1]) == ord(chars[j]) + 1:
            j += 1
        out.append(re.escape(chars[i]) + ("-" + re.escape(chars[j]) if j > i else ""))
        i = j + 1
    return "".join(out)


@lru_cache(maxsize=1)
def gpt2_pretokenizer() -> "re.Pattern[str]":
    """GPT-2's pre-tokenisation regex ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
    for the stdlib ``re``, exact in Unicode: ``\\p{N}`` is ``\\d`` plus the Nl/No characters (², ½, Ⅻ),
    which ``re`` counts as word characters, and ``\\s`` is Unicode White_Space, which unlike ``re``'s
    excludes the separators U+001C..U+001F."""
    nums = _ranges([c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c) in ("Nl", "No")])
    sep = "\\x1c-\\x1f"
    letter = rf"[^\W\d_{nums}]"
    number = rf"[\d{nums}]"
    space, nonspace = rf"[^\S{sep}]", rf"[\S{sep}]"
    other = rf"(?:[^\s\w]|[_{sep}])"
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?{other}+|{space}+(?!{nonspace})|{space}+")


class GPT2BPETokenizer:
    """GPT-2 BPE from ``vocab.json`` + ``merges.txt`` in the folder ``path``."""

    name = "gpt2"
    files: List[Path] = []  # set by from_files: what an export copies

    def __init__(self, encoder: Dict[str, int], merges: Sequence[Tuple[str, str]]) -> None:
        self.encoder = dict(encoder)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {tuple(pair): i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.vocab_size = max(self.encoder.values()) + 1
        self.eos_id = self.encoder.get("<|endoftext|>")
        self._cache: Dict[str, List[str]] = {}

    @classmethod
    def from_files(cls, path: Union[str, Path]) -> "GPT2BPETokenizer":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise FileNotFoundError(f"{path}: expected GPT-2 BPE files vocab.json + merges.txt")
        encoder = json.loads(vocab.read_text(encoding="utf-8"))
        lines = merges.read_text(encoding="utf-8").splitlines()
        pairs = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        for n, pair in enumerate(pairs):
            if len(pair) != 2:
                raise ValueError(f"{merges}: merge {n} is not a pair: {' '.join(pair)!r}")
        tok = cls(encoder, pairs)
        tok.files = [vocab, merges] + [path / f for f in AUX_FILES if (path / f).is_file()]
        return tok

    def _bpe(self, piece: str) -> List[str]:
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece)
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(word, word[1:]))]
            best_rank, _ = min(ranked)
            if best_rank == float("inf"):
                break
            pair = next(p for p in zip(word, word[1:]) if self.ranks.get(p) == best_rank)
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> List[int]:
        ids: List[int] = []
        for piece in gpt2_pretokenizer().findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for tok in self._bpe(mapped):
                if tok not in self.encoder:
                    raise KeyError(f"BPE produced {tok!r}, which is not in the vocabulary (inconsistent vocab/merges)")
                ids.append(self.encoder[tok])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>")
AUX_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` encoded by the ``tokenizers`` library (no special tokens added)."""

    name = "hf"

    def __init__(self, path: Union[str, Path]) -> None:
        path = Path(path)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(f"{file} needs the Hugging Face `tokenizers` library: pip install "
                              "'crrelu-lightning[hf]' (or pip install tokenizers), or give a folder with "
                              "GPT-2's vocab.json + merges.txt") from e
        self.tok = Tokenizer.from_file(str(file))
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._eos_id(file.parent)
        self.files = [file] + [file.parent / f for f in AUX_FILES if (file.parent / f).is_file()]

    def _eos_id(self, folder: Path) -> Optional[int]:
        cfg = folder / "tokenizer_config.json"
        names = list(EOS_NAMES)
        if cfg.is_file():
            eos = json.loads(cfg.read_text(encoding="utf-8")).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str):
                names.insert(0, eos)
        for n in names:
            i = self.tok.token_to_id(n)
            if i is not None:
                return i
        return None

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def build_tokenizer(spec: Optional[str] = "byte"):
    """``"byte"`` (or None) -> ByteTokenizer; a folder with vocab.json + merges.txt -> GPT2BPETokenizer;
    a ``tokenizer.json`` (or a folder with only that) -> HFTokenizer."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist (give 'byte', a GPT-2 folder "
                                "with vocab.json + merges.txt, or a folder/file with tokenizer.json)")
    if path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return GPT2BPETokenizer.from_files(path)
    if (path.is_file() and path.suffix == ".json") or (path / "tokenizer.json").is_file():
        return HFTokenizer(path)
    raise FileNotFoundError(f"{path}: expected vocab.json + merges.txt or tokenizer.json")
