"""Byte-level and GPT-2 BPE tokenizers against hand-made vocabularies, and against the Hugging Face
`tokenizers` library on a byte-level BPE it trains (vocab.json + merges.txt vs tokenizer.json)."""
import json

import pytest

from crrelu_lightning.tokenizers import ByteTokenizer, GPT2BPETokenizer, build_tokenizer, bytes_to_unicode, gpt2_pretokenizer

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
    assert gpt2_pretokenizer().findall("Hello world's 123 foo_bar!!  x") == \
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


def test_bpe_round_trip(tmp_path):
    write_vocab(tmp_path)
    a = GPT2BPETokenizer.from_files(tmp_path)
    for text in TEXTS:
        assert a.decode(a.encode(text)) == text


VARIED = [
    "Hello, world! It's a test: we're here, they've gone, I'm sure you'll see, he'd know.",
    "IT'S LOUD ''quoted'' don't 'tis rock'n'roll",
    "naïve café — ünïcödé 🤖 日本語のテキスト Ελληνικά русский עברית العربية हिन्दी",
    "combining: e\u0301 a\u0308 and numbers 12345 3.14 ² ½ Ⅻ ① ٣٤ 1e-9 x² H₂O Ⅻth 4½in",
    "tabs\tand  double  spaces   triple\n\n\nnewlines \r\n crlf   \u00a0nbsp\u2003em\u3000ideo  ",
    "   leading and trailing whitespace runs      ",
    "separators\x1c\x1d\x1e\x1f and x\x1cy \x1f\x1f z controls\x00\x07 _under_score__ ~!@#$%^&*()[]{}<>?/|\\",
    "code: def f(x):\n    return x**2  # square\n\tif x >= 10: print(f'{x!r}')",
]


def test_project_bpe_equals_tokenizers_library_on_a_trained_byte_level_bpe(tmp_path):
    """Train a small byte-level BPE with `tokenizers`, save both layouts, compare ids on varied text."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from crrelu_lightning.tokenizers import HFTokenizer

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = VARIED * 3 + [" ".join(TEXTS)] + ["the quick brown fox jumps over the lazy dog " * 5]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    json_dir, gpt2_dir = tmp_path / "json", tmp_path / "gpt2"
    json_dir.mkdir(), gpt2_dir.mkdir()
    tok.save(str(json_dir / "tokenizer.json"))
    tok.model.save(str(gpt2_dir))  # vocab.json + merges.txt
    ours, theirs = build_tokenizer(str(gpt2_dir)), build_tokenizer(str(json_dir))
    assert isinstance(ours, GPT2BPETokenizer) and isinstance(theirs, HFTokenizer)
    assert ours.eos_id == theirs.eos_id == tok.token_to_id("<|endoftext|>")
    long_text = "".join(VARIED) * 40  # ~20k characters, many merges and cache hits
    unseen = "Zebras quizzically vexed jumpy wizards — 未知の文字 ßẞ ǅ ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⁴²"
    for text in VARIED + TEXTS + [long_text, unseen]:
        want = tok.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == want, text[:60]
        assert theirs.encode(text) == want
        assert ours.decode(want) == text
    assert len(ours.encode(long_text)) < len(long_text.encode("utf-8")) / 2  # merges were learned and used


def test_tokenizer_json_without_the_library_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **kw: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("tokenizers") else real_import(name, *a, **kw))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ImportError, match=r"tokenizer\.json needs the Hugging Face `tokenizers` library: pip install "
                                          r"'crrelu-lightning\[hf\]'"):
        build_tokenizer(str(tmp_path))


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        GPT2BPETokenizer.from_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="vocab.json \\+ merges.txt or tokenizer.json"):
        build_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer(str(tmp_path / "missing"))
