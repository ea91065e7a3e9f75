"""Text and preference datamodules: hold-out rules, windows, malformed records, truncation alignment."""
import json

import pytest
import torch

from crrelu_lightning.data.preference import SENTIMENT_PROMPT, PreferenceDataModule, sentiment_pairs, truncate_pair
from crrelu_lightning.data.preference_formats import read_groups
from crrelu_lightning.data.text import SHAKESPEARE_VAL_PLAYS, RandomStartSampler, TextDataModule


def write_plays(folder, names, n=400):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / f"{name}_gut.txt").write_text(f"{name.upper()}\n" + "".join(chr(97 + (i + j) % 26) for j in range(n)))


def test_whole_plays_are_held_out(tmp_path):
    names = list(SHAKESPEARE_VAL_PLAYS) + ["lear", "othello", "sonnets"]
    write_plays(tmp_path / "sh", names)
    dm = TextDataModule(paths=str(tmp_path / "sh"), val_files="shakespeare", block_size=16, batch_size=4,
                        train_samples_per_epoch=40, max_val_blocks=5)
    dm.setup("fit")
    train = bytes(dm.train_tokens.tolist()).decode()
    val = bytes(dm.val_tokens.tolist()).decode()
    for name in SHAKESPEARE_VAL_PLAYS:
        assert name.upper() in val and name.upper() not in train
    for name in ("lear", "othello", "sonnets"):
        assert name.upper() in train and name.upper() not in val
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    assert len(dm.train_dataloader()) == 10
    vx, vy = next(iter(dm.val_dataloader()))
    # validation windows are fixed and evenly spaced
    vx2, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(vx, vx2) and dm.bytes_per_token == 1.0


def test_tail_holdout_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 90 + "y" * 10)
    dm = TextDataModule(paths=str(tmp_path / "a.txt"), block_size=4, val_fraction=0.1)
    dm.setup()
    assert bytes(dm.val_tokens.tolist()) == b"y" * 10 and b"y" not in bytes(dm.train_tokens.tolist())
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        TextDataModule(paths=str(tmp_path / "missing_dir")).setup()
    with pytest.raises(FileNotFoundError, match="hamlet"):
        TextDataModule(paths=str(tmp_path), val_files=["hamlet"]).setup()
    with pytest.raises(ValueError, match="val_fraction"):
        TextDataModule(paths=str(tmp_path), val_fraction=1.5)


def test_random_sampler_is_reproducible_and_changes_per_epoch():
    a, b = RandomStartSampler(1000, 50, seed=3), RandomStartSampler(1000, 50, seed=3)
    e0, e1 = list(a), list(a)
    assert e0 == list(b) and e0 != e1 and len(e0) == 50 and max(e0 + e1) < 1000


# ---------------------------------------------------------------- preference pairs
HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you",
      "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: go away"}
SHP = {"history": "Why?", "human_ref_A": "because", "human_ref_B": "no idea", "labels": 0, "score_A": 2, "score_B": 9}


def test_hh_and_shp_parsing(tmp_path):
    (tmp_path / "hh.jsonl").write_text(json.dumps(HH) + "\n")
    (tmp_path / "shp.jsonl").write_text(json.dumps(SHP) + "\n" + json.dumps({**SHP, "labels": 1, "history": "How?"}) + "\n")
    [g] = read_groups("hh", [tmp_path / "hh.jsonl"])
    assert g.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:"
    assert g.responses == [" see you", " go away"]
    s0, s1 = read_groups("shp", [tmp_path / "shp.jsonl"])
    assert (s0.prompt, s0.responses) == ("\n\nHuman: Why?\n\nAssistant:", [" no idea", " because"])
    assert s1.responses == [" because", " no idea"]


def test_sentiment_pairs_split_snippets_before_pairing():
    snippets = [(2.0, f"good {i}") for i in range(30)] + [(-2.0, f"bad {i}") for i in range(20)] + [(0.1, "meh")]
    train, val = sentiment_pairs(snippets, seed=0, val_fraction=0.2)
    assert len(train) + len(val) == 20 and len(val) == 4
    assert all(p == SENTIMENT_PROMPT and c.startswith(" good") and r.startswith(" bad") for p, c, r in train + val)
    texts = lambda ps: {t for _, c, r in ps for t in (c, r)}  # noqa: E731
    assert not texts(train) & texts(val)
    assert sentiment_pairs(snippets, seed=0, val_fraction=0.2) == (train, val)


def test_truncation_rule_prompt_left_then_response_right():
    prompt, resp = list(range(100, 130)), [list(range(20)), list(range(50, 55))]
    p, (a, b) = truncate_pair(prompt, resp, max_length=40, max_prompt_length=10)
    assert p == list(range(120, 130))  # prompt cut from the left to 10 tokens
    assert a == list(range(20)) and b == resp[1]  # now fits: responses untouched
    p, (a, b) = truncate_pair(prompt, resp, max_length=16, max_prompt_length=10)
    assert p == list(range(120, 130)) and a == list(range(6)) and b == list(range(50, 55))
    p, (a, b) = truncate_pair(prompt[:5], resp, max_length=40, max_prompt_length=10)
    assert p == prompt[:5] and a == resp[0]  # short enough: nothing cut


@pytest.mark.parametrize("mode", ["dpo", "sft"])
def test_collated_masks_cover_exactly_the_response(tmp_path, mode):
    long_hh = {"chosen": "\n\nHuman: " + "q" * 80 + "\n\nAssistant: " + "A" * 60,
               "rejected": "\n\nHuman: " + "q" * 80 + "\n\nAssistant: " + "B" * 7}
    (tmp_path / "hh.jsonl").write_text(json.dumps(long_hh) + "\n" + json.dumps(HH) + "\n")
    dm = PreferenceDataModule(format="hh", train_path=str(tmp_path / "hh.jsonl"), val_path=str(tmp_path / "hh.jsonl"),
                              mode=mode, max_length=64, max_prompt_length=32, batch_size=2)
    dm.setup()
    batch = dm.collate(dm.val_pairs)
    keys = [("chosen_input_ids", "chosen_loss_mask"), ("rejected_input_ids", "rejected_loss_mask")] \
        if mode == "dpo" else [("input_ids", "loss_mask")]
    for ids_key, mask_key in keys:
        ids, mask = batch[ids_key], batch[mask_key]
        assert ids.shape[1] <= 64
        for i, (prompt, chosen, rejected) in enumerate(dm.val_pairs):
            resp = chosen if ids_key.startswith(("chosen", "input")) else rejected
            got = bytes(ids[i][mask[i]].tolist()).decode()
            assert resp.startswith(got) and len(got) > 0  # the masked tokens are a prefix of the response
            first = int(mask[i].nonzero()[0])
            # everything before the mask is the (left-truncated) prompt, ending with "Assistant:"
            assert bytes(ids[i][:first].tolist()).decode() == prompt[-first:]
        row = 0  # the long pair: prompt cut to 32, chosen response cut to fill 64
        assert int(mask[row].nonzero()[0]) == 32 and int(mask[row].sum()) == (32 if ids_key[0] in "ci" else 8)
