"""Tokenizers: byte-level (no files) and GPT-2 byte-pair encoding read from local files.

* ``ByteTokenizer``: token = UTF-8 byte (vocab 256), so bits per byte = loss / ln 2.
* ``GPT2BPETokenizer``: GPT-2's byte-level BPE. Bytes are mapped to printable unicode characters
  (``bytes_to_unicode``), text is pre-split with GPT-2's regex, and each piece is merged greedily by
  merge rank (lowest rank first) until no ranked pair remains.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union


class ByteTokenizer:
    """UTF-8 bytes as tokens. ``decode`` replaces invalid byte sequences rather than failing."""

    vocab_size = 256
    eos_id: Optional[int] = None
    name = "byte"

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


# GPT-2's pre-tokenisation regex, with \p{L}/\p{N} written for the stdlib ``re`` module:
# [^\W\d_] = letters, \d = digits, (?:[^\s\w]|_) = everything else but whitespace.
_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


class GPT2BPETokenizer:
    """GPT-2 BPE from ``vocab.json`` + ``merges.txt`` or a ``tokenizer.json`` in ``path`` (a folder or file)."""

    name = "gpt2"

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
        if path.is_file() and path.suffix == ".json" and path.name != "vocab.json":
            return cls._from_tokenizer_json(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            encoder = json.loads(vocab.read_text(encoding="utf-8"))
            lines = merges.read_text(encoding="utf-8").splitlines()
            pairs = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
            for n, pair in enumerate(pairs):
                if len(pair) != 2:
                    raise ValueError(f"{merges}: merge {n} is not a pair: {' '.join(pair)!r}")
            return cls(encoder, pairs)
        if (path / "tokenizer.json").is_file():
            return cls._from_tokenizer_json(path / "tokenizer.json")
        raise FileNotFoundError(f"{path}: expected vocab.json + merges.txt or tokenizer.json")

    @classmethod
    def _from_tokenizer_json(cls, file: Path) -> "GPT2BPETokenizer":
        data = json.loads(file.read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"{file}: model.type is {model.get('type')!r}, only BPE is supported")
        merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        encoder = dict(model["vocab"])
        for tok in data.get("added_tokens", []):
            encoder.setdefault(tok["content"], tok["id"])
        return cls(encoder, merges)

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
        for piece in _PRETOKENIZE.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for tok in self._bpe(mapped):
                if tok not in self.encoder:
                    raise KeyError(f"BPE produced {tok!r}, which is not in the vocabulary (inconsistent vocab/merges)")
                ids.append(self.encoder[tok])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


def build_tokenizer(spec: Optional[str] = "byte"):
    """``"byte"`` (or None) -> ByteTokenizer; anything else is a path to GPT-2 BPE files."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    return GPT2BPETokenizer.from_files(spec)
