"""Preference data in the distributed layouts: HH subsets (.jsonl.gz), SHP domain folders (.json that is
JSON Lines) with the reference's score-ratio filter and per-prompt grouping, TRL records (JSONL, Parquet,
strings, message lists); malformed records reported per file:line with a threshold. Counts are by hand."""
import gzip
import json

import pytest

from crrelu_lightning.data.preference import PreferenceDataModule, truncate_pair
from crrelu_lightning.data.preference_formats import read_groups, render_messages, split_files
from crrelu_lightning.data.records import MalformedRecordError


def write_jsonl(path, rows, gz=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz if gz is not None else path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def hh(q, good, bad, turns=""):
    p = f"{turns}\n\nHuman: {q}\n\nAssistant:"
    return {"chosen": p + " " + good, "rejected": p + " " + bad}


def shp(post, a, b, sa, sb, label, **kw):
    return {"post_id": post[:4], "domain": "askscience_train", "upvote_ratio": 0.9, "history": post,
            "c_root_id_A": "x", "c_root_id_B": "y", "created_at_utc_A": 1, "created_at_utc_B": 2,
            "score_A": sa, "score_B": sb, "human_ref_A": a, "human_ref_B": b, "labels": label,
            "seconds_difference": 1.0, "score_ratio": max(sa, sb) / max(1, min(sa, sb)), **kw}


# ---------------------------------------------------------------- HH
def write_hh(root):
    write_jsonl(root / "helpful-base" / "train.jsonl.gz", [hh("hi", "hello", "go"), hh("hi", "hey", "no"),
                                                            hh("cook?", "boil", "burn", turns="\n\nHuman: a\n\nAssistant: b")])
    write_jsonl(root / "helpful-base" / "test.jsonl.gz", [hh("t1", "y", "n")])
    write_jsonl(root / "harmless-base" / "train.jsonl.gz", [hh("hurt?", "no", "yes")])
    write_jsonl(root / "harmless-base" / "test.jsonl.gz", [hh("t2", "y", "n"), hh("t3", "y", "n")])
    (root / "README.md").write_text("not a subset")


def test_hh_subsets_gzip_grouping_and_sft_targets(tmp_path):
    write_hh(tmp_path)
    files = split_files("hh", tmp_path, "train")
    assert [f.parent.name for f in files] == ["harmless-base", "helpful-base"]  # every subset, sorted
    groups = read_groups("hh", files)
    # 4 records, 3 distinct prompts: "hi" twice -> one group with 2 pairs over 4 responses
    assert [len(g.pairs) for g in groups] == [1, 2, 1]
    hi = groups[1]
    assert hi.prompt == "\n\nHuman: hi\n\nAssistant:" and hi.responses == [" hello", " go", " hey", " no"]
    assert hi.pairs == [(0, 1), (2, 3)] and hi.sft_target == " hey"  # the last pair's chosen, as the reference
    assert groups[2].prompt.endswith("\n\nHuman: a\n\nAssistant: b\n\nHuman: cook?\n\nAssistant:")
    # chosen subsets only; the folder of one subset works too
    assert len(read_groups("hh", split_files("hh", tmp_path, "train", ["harmless-base"]))) == 1
    assert split_files("hh", tmp_path / "helpful-base", "test") == [tmp_path / "helpful-base" / "test.jsonl.gz"]
    with pytest.raises(FileNotFoundError, match=r"red-team.*available: \['harmless-base', 'helpful-base'\]"):
        split_files("hh", tmp_path, "train", ["red-team-attempts"])

    dm = PreferenceDataModule(format="hh", train_path=str(tmp_path), batch_size=1, max_length=64, max_prompt_length=32)
    dm.setup()
    assert len(dm.train_pairs) == 4 and len(dm.val_pairs) == 3  # DPO: one example per pair; val = test split
    sft = PreferenceDataModule(format="hh", train_path=str(tmp_path), batch_size=1, mode="sft", max_length=64,
                               max_prompt_length=32)
    sft.setup()
    assert len(sft.train_pairs) == 3 and (hi.prompt, " hey", " hey") in sft.train_pairs  # SFT: one per prompt


# ---------------------------------------------------------------- SHP
def write_shp(root):
    a = root / "askscience"
    write_jsonl(a / "train.json", [
        shp("Why is the sky blue?", "Rayleigh", "magic", 10, 3, 1),   # ratio 3.3: kept, A preferred
        shp("Why is the sky blue?", "dust", "ozone", 4, 3, 1),        # ratio 1.33: dropped
        shp("Why is the sky blue?", "water", "Rayleigh", 2, 10, 0),   # ratio 5: kept, B preferred
        shp("Is light a wave?", "zero-scored", "both", 0, 5, 0),      # zero vs 5: infinite ratio, kept
        shp("Is light a wave?", "x", "y", 6, 3, 1),                   # ratio exactly 2: kept
    ], gz=False)
    write_jsonl(a / "validation.json", [shp("v?", "a", "b", 9, 1, 1)], gz=False)
    write_jsonl(a / "test.json", [shp("t?", "a", "b", 9, 1, 0)], gz=False)
    e = root / "explainlikeimfive"
    write_jsonl(e / "train.json", [shp("ELI5 taxes", "money", "idk", 30, 2, 1),
                                   shp("ELI5 taxes", "money", "idk", 3, 2, 1)], gz=False)  # second dropped
    write_jsonl(e / "validation.json", [shp("v2?", "a", "b", 1, 9, 0)], gz=False)
    write_jsonl(e / "test.json", [shp("t2?", "a", "b", 1, 1, 0)], gz=False)  # ratio 1: dropped


def test_shp_domain_folders_ratio_filter_and_grouping_by_hand(tmp_path):
    write_shp(tmp_path)
    stats = {}
    groups = read_groups("shp", split_files("shp", tmp_path, "train"), stats=stats)
    assert stats == {"records": 7, "malformed": 0, "filtered": 2, "pairs": 5}  # 7 rows - 2 below ratio 2
    by_prompt = {g.prompt: g for g in groups}
    sky = by_prompt["\n\nHuman: Why is the sky blue?\n\nAssistant:"]
    assert sky.responses == [" Rayleigh", " magic", " Rayleigh", " water"] and sky.pairs == [(0, 1), (2, 3)]
    assert sky.sft_target == " Rayleigh"  # highest score (10), not the last pair's chosen
    light = by_prompt["\n\nHuman: Is light a wave?\n\nAssistant:"]
    assert [(light.responses[i], light.responses[j]) for i, j in light.pairs] == [(" both", " zero-scored"), (" x", " y")]
    assert light.sft_target == " x"  # scores: both 5, zero 0, x 6, y 3
    assert by_prompt["\n\nHuman: ELI5 taxes\n\nAssistant:"].sft_target == " money"
    one = read_groups("shp", split_files("shp", tmp_path, "train", ["explainlikeimfive"]))
    assert len(one) == 1 and len(one[0].pairs) == 1

    dm = PreferenceDataModule(format="shp", train_path=str(tmp_path), val_split="validation", batch_size=2,
                              max_length=64, max_prompt_length=16)
    dm.setup()
    assert len(dm.train_pairs) == 5 and len(dm.val_pairs) == 2 and dm.truncation == "keep_start"
    long = ("\n\nHuman: " + "Q" * 10 + "z" * 60 + "\n\nAssistant:", " " + "A" * 60, " B")
    enc = dm.encode_pair(long)
    assert bytes(enc["prompt"]).decode() == "\n\nHuman: QQQQQQQ"  # SHP keeps the start of the post
    with pytest.raises(MalformedRecordError, match=r"no valid shp pairs in .*explainlikeimfive/test\.json"):
        read_groups("shp", split_files("shp", tmp_path, "test", ["explainlikeimfive"]))


def test_truncation_keeps_end_or_start():
    prompt, resp = list(range(100, 130)), [list(range(20)), list(range(50, 55))]
    assert truncate_pair(prompt, resp, 40, 10)[0] == list(range(120, 130))
    assert truncate_pair(prompt, resp, 40, 10, "keep_start")[0] == list(range(100, 110))
    p, (a, b) = truncate_pair(prompt, resp, 16, 10, "keep_start")
    assert p == list(range(100, 110)) and a == list(range(6)) and b == resp[1]
    with pytest.raises(ValueError, match="keep_middle"):
        truncate_pair(prompt, resp, 16, 10, "keep_middle")


# ---------------------------------------------------------------- TRL
CONV = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}]}
IMPLICIT = {"chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
            "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Rome"}]}
STANDARD = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}


def test_trl_records_strings_and_messages_in_jsonl_gz(tmp_path):
    write_jsonl(tmp_path / "train.jsonl.gz", [CONV, IMPLICIT, STANDARD, {**STANDARD, "chosen": " azure."}])
    groups = read_groups("trl", split_files("trl", tmp_path, "train"))
    conv, implicit, standard = groups
    # the documented template: "\n\n<Role>: <content>", the prompt ends with "\n\nAssistant:"
    assert conv.prompt == "\n\nSystem: Be brief.\n\nHuman: 2+2?\n\nAssistant:"
    assert conv.responses == [" 4", " 5"]
    assert conv.prompt + conv.responses[0] == render_messages(CONV["prompt"] + CONV["chosen"])
    assert implicit.prompt == "\n\nHuman: Capital of France?\n\nAssistant:" and implicit.responses == [" Paris", " Rome"]
    assert standard.prompt == "The sky is" and standard.pairs == [(0, 1), (2, 3)] and standard.sft_target == " azure."


def test_trl_parquet_or_clear_message(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()  # Hugging Face's layout: data/train-0000i-of-0000n.parquet
    for i, rows in enumerate([[CONV, IMPLICIT], [{**CONV, "rejected": [{"role": "assistant", "content": "22"}]}]]):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / f"train-0000{i}-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([STANDARD, {"prompt": "x", "chosen": None, "rejected": "y"}]),
                   tmp_path / "test.parquet")
    files = split_files("trl", tmp_path, "train")
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    groups = read_groups("trl", files)
    assert [len(g.pairs) for g in groups] == [2, 1] and groups[0].responses == [" 4", " 5", " 4", " 22"]
    with pytest.warns(UserWarning, match=r"test\.parquet:2: .*'prompt', 'chosen' and 'rejected' must be all strings"):
        read_groups("trl", [tmp_path / "test.parquet"], max_bad_fraction=0.5)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"train\.parquet needs pyarrow: pip install 'crrelu-lightning\[parquet\]'"):
        read_groups("trl", [tmp_path / "train.parquet"])


# ---------------------------------------------------------------- malformed records
def test_malformed_records_reported_per_line_with_threshold(tmp_path):
    good = hh("q", "a", "b")
    rows = [good, "{not json", {"chosen": "x"}, good, [1, 2], {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "other"}]
    rows += [hh(f"q{i}", "a", "b") for i in range(14)]  # 20 records, 4 bad
    f = tmp_path / "h" / "train.jsonl.gz"
    write_jsonl(f, rows)
    with pytest.warns(UserWarning) as w:
        groups = read_groups("hh", [f], max_bad_fraction=0.25)
    msg = str(w[0].message)
    assert "4 of 20 hh records (20.0 %) are malformed" in msg and f"{f}: 4" in msg
    for line, why in [(2, "not JSON"), (3, "missing field(s) ['rejected']"), (5, "expected a JSON object"),
                      (6, "'rejected' does not share the prompt")]:
        assert f"train.jsonl.gz:{line}: {why}" in msg
    assert sum(len(g.pairs) for g in groups) == 16
    with pytest.raises(MalformedRecordError, match=r"4 of 20 .* more than max_bad_fraction=0.1"):
        read_groups("hh", [f])  # the default threshold stops a 20 % malformed dataset
    with pytest.raises(MalformedRecordError, match=r"train\.jsonl\.gz:2: not JSON"):
        read_groups("hh", [f], on_error="raise")


def test_no_valid_pairs_is_an_error_whatever_on_error_says(tmp_path):
    f = tmp_path / "train.jsonl"
    write_jsonl(f, [{"chosen": 1, "rejected": 2}, "oops"])
    for on_error in ("skip", "raise"):
        with pytest.raises(MalformedRecordError, match=r"train\.jsonl"):
            read_groups("hh", [f], on_error=on_error, max_bad_fraction=1.0)
    with pytest.raises(MalformedRecordError, match=r"no valid hh pairs in .*train\.jsonl: 2 of 2"):
        PreferenceDataModule(format="hh", train_path=str(f), max_bad_fraction=1.0, max_length=64,
                             max_prompt_length=32).setup()
    trunc = tmp_path / "cut.jsonl.gz"
    trunc.write_bytes(gzip.compress(b'{"chosen": "x"}\n' * 200)[:40])
    with pytest.raises(MalformedRecordError, match=r"cut\.jsonl\.gz: cannot be read as gzip"):
        read_groups("hh", [trunc])


def test_too_few_examples_for_one_batch_is_an_error(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [hh("a", "b", "c"), hh("d", "e", "f")])
    with pytest.raises(ValueError, match=r"fewer than batch_size=8 .*no training batches"):
        PreferenceDataModule(format="hh", train_path=str(tmp_path / "train.jsonl"), max_length=64,
                             max_prompt_length=32).setup()
