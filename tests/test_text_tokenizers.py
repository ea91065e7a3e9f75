"""Byte-level and GPT-2 BPE tokenizers against hand-made vocabularies."""
import json

import pytest

from crrelu_lightning.tokenizers import ByteTokenizer, GPT2BPETokenizer, _PRETOKENIZE, build_tokenizer, bytes_to_unicode

TEXTS = ["hello hello world", "Hello, world's 123 foo_bar!!\n\n  x", "naïve café — ünïcödé 🤖", ""]
MERGES = [("l", "l"), ("h", "e"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("Ġ", "h"), ("Ġh", "ello"),
          ("e", "l"), ("el", "lo")]


def write_vocab(tmp_path, merges=MERGES):
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    tokens = alphabet + ["".join(m) for m in merges] + ["<|endoftext|>"]
    encoder = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (tmp_path / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                         encoding="utf-8")
    return encoder


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert build_tokenizer("byte").vocab_size == 256


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(not c.isspace() for c in table.values())


def test_pretokenizer_follows_gpt2_split():
    assert _PRETOKENIZE.findall("Hello world's 123 foo_bar!!  x") == \
        ["Hello", " world", "'s", " 123", " foo", "_", "bar", "!!", " ", " x"]


def test_bpe_applies_merges_by_rank(tmp_path):
    enc = write_vocab(tmp_path)
    tok = GPT2BPETokenizer.from_files(tmp_path)
    # "hello": l l (rank 0) -> h e (1) -> he ll (2) -> hell o (3)
    assert tok.encode("hello") == [enc["hello"]]
    # " hello": h e (rank 1) fires before Ġ h (rank 5) can, leaving Ġ + hello (no ranked pair joins them)
    assert tok.encode(" hello") == [enc["Ġ"], enc["hello"]]
    assert tok.encode(" world") == [enc["Ġw"]] + [enc[c] for c in "orld"]
    # every occurrence of the best pair merges left to right: "lll" -> ll, l
    assert tok.encode("lll") == [enc["ll"], enc["l"]]
    assert tok.eos_id == enc["<|endoftext|>"]


def test_bpe_round_trip_and_tokenizer_json_agree(tmp_path):
    enc = write_vocab(tmp_path)
    a = GPT2BPETokenizer.from_files(tmp_path)
    tj = {"model": {"type": "BPE", "vocab": enc, "merges": [" ".join(m) for m in MERGES]},
          "added_tokens": [{"id": enc["<|endoftext|>"], "content": "<|endoftext|>"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    b = GPT2BPETokenizer.from_files(tmp_path / "tokenizer.json")
    for text in TEXTS:
        ids = a.encode(text)
        assert a.decode(ids) == text
        assert b.encode(text) == ids


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        GPT2BPETokenizer.from_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer(str(tmp_path / "missing"))
