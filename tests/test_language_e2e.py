"""End to end through the CLI, on CPU, tiny: a GPT-2 in the Hugging Face layout written here -> SFT on preference
data in its distributed layout (HH subsets .jsonl.gz, SHP domain folders, TRL Parquet or JSONL) -> DPO initialised
from the SFT *run folder* with the activation swapped to CRReLU -> reward accuracy and margins in TensorBoard ->
``crrelu-lightning export`` -> the exported folder reproduces the DPO policy's logits."""
import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crrelu_lightning.cli import cli_main, main
from crrelu_lightning.models.gpt import GPT
from crrelu_lightning.models.language import load_gpt_checkpoint
from crrelu_lightning.tokenizers import build_tokenizer, bytes_to_unicode

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "language"
L, H, C, P = 2, 2, 16, 96  # layers, heads, width, positions
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("A", "s"), ("As", "s")]


def write_gpt2_folder(folder: Path, seed: int = 0) -> int:
    """config.json + model.safetensors (HF names, Conv1D (in, out)) + vocab.json/merges.txt; returns vocab size."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tokens = [bytes_to_unicode()[b] for b in range(256)] + ["".join(m) for m in MERGES] + ["<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    V = len(tokens)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": P, "n_ctx": P,
        "n_embd": C, "n_layer": L, "n_head": H, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "scale_attn_weights": True, "tie_word_embeddings": True}))
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"wte.weight": r(V, C), "wpe.weight": r(P, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(L):
        for name, shape in [("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                            ("attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.bias", (3 * C,)),
                            ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                            ("mlp.c_fc.weight", (C, 4 * C)), ("mlp.c_fc.bias", (4 * C,)),
                            ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))]:
            sd[f"h.{i}.{name}"] = r(*shape) + (1 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") else 0)
    save_file(sd, str(folder / "model.safetensors"))
    return V


WORDS = "the cat sat on a mat and the dog ran in the sun as we ate".split()


def sentence(rng, n=5):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def write_hh(root: Path, rng):
    for subset in ("helpful-base", "harmless-base"):
        for split, n in (("train", 12), ("test", 6)):
            rows = []
            for _ in range(n):
                p = f"\n\nHuman: {sentence(rng)}?\n\nAssistant:"
                rows.append({"chosen": p + " " + sentence(rng, 4), "rejected": p + " " + sentence(rng, 6)})
            write_jsonl(root / "data" / "hh" / subset / f"{split}.jsonl.gz", rows)


def write_shp(root: Path, rng):
    for domain in ("askscience", "explainlikeimfive"):
        for split, n in (("train", 14), ("validation", 4), ("test", 8)):
            rows = []
            for i in range(n):
                hist = f"{domain} {sentence(rng)}" if i % 2 else f"{domain} question {i // 4}"  # repeated posts too
                sa, sb = rng.choice([(10, 2), (3, 2), (1, 9), (8, 4)])
                rows.append({"post_id": f"{domain}{i}", "domain": f"{domain}_{split}", "history": hist,
                             "human_ref_A": sentence(rng, 4), "human_ref_B": sentence(rng, 3), "labels": int(sa > sb),
                             "score_A": sa, "score_B": sb, "upvote_ratio": 0.9, "seconds_difference": 10.0})
            write_jsonl(root / "data" / "shp" / domain / f"{split}.json", rows)  # JSON Lines despite the name


def write_trl(root: Path, rng) -> str:
    def row(i):
        if i % 2:  # conversational, explicit prompt
            return {"prompt": [{"role": "user", "content": sentence(rng)}],
                    "chosen": [{"role": "assistant", "content": sentence(rng, 4)}],
                    "rejected": [{"role": "assistant", "content": sentence(rng, 6)}]}
        return {"prompt": sentence(rng) + ":", "chosen": " " + sentence(rng, 4), "rejected": " " + sentence(rng, 6)}

    folder = root / "data" / "trl"
    folder.mkdir(parents=True)
    splits = {"train": [row(i) for i in range(24)], "test": [row(i) for i in range(8)]}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        for split, rows in splits.items():
            write_jsonl(folder / f"{split}.jsonl", rows)
        return "jsonl"
    for split, rows in splits.items():  # mixed string / message rows do not share one Arrow schema
        for kind in (0, 1):
            part = [r for r in rows if isinstance(r["prompt"], list) == bool(kind)]
            pq.write_table(pa.Table.from_pylist(part), folder / f"{split}-0000{kind}-of-00002.parquet")
    return "parquet"


QUICK = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "3",
         "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2", "--trainer.accumulate_grad_batches", "1",
         "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
         "--trainer.max_epochs", "5",
         "--data.batch_size", "4", "--data.max_length", "64", "--data.max_prompt_length", "32", "--data.num_workers", "0",
         "--model.warmup_steps", "1", "--model.lr", "3e-3", "--model.optimizer", "adamw"]


def scalars(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return {k: [e.value for e in ea.Scalars(k)] for k in ea.Tags()["scalars"]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["hh", "shp", "trl"])
def test_sft_then_dpo_from_run_folder_then_export(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)  # the configs' relative models/, data/ and lightning_logs/ resolve here
    rng = random.Random(fmt)
    V = write_gpt2_folder(tmp_path / "models" / "gpt2")
    extra = []
    if fmt == "hh":
        write_hh(tmp_path, rng)
        sft_cfg, dpo_cfg, sft_name = "gpt2_sft_hh.yaml", "gpt2_dpo_hh.yaml", "gpt2_sft_hh"
    elif fmt == "shp":
        write_shp(tmp_path, rng)
        sft_cfg, dpo_cfg, sft_name = "gpt2_sft_shp.yaml", "gpt2_dpo_shp.yaml", "gpt2_sft_shp"
    else:
        layout = write_trl(tmp_path, rng)
        sft_cfg, dpo_cfg, sft_name = "gpt2_sft_hh.yaml", "gpt2_dpo_hh.yaml", "gpt2_sft_hh"
        extra = ["--data.format", "trl", "--data.train_path", "data/trl"]
        assert layout in ("parquet", "jsonl")

    # SFT keeps GPT-2's GELU; the model's shape comes from models/gpt2/config.json
    cli_main(["fit", "--config", str(CONFIGS / sft_cfg), *QUICK, *extra, "--model.activation", "gelu_tanh",
              "--model.sample_tokens", "4"])
    sft_run = tmp_path / "lightning_logs" / sft_name / "version_0"
    sft_ckpt = torch.load(sft_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert sft_ckpt["gpt"]["config"]["n_embd"] == C and sft_ckpt["gpt"]["config"]["vocab_size"] == V
    assert sft_ckpt["gpt"]["config"]["activation"] == "gelu_tanh"

    # DPO from the SFT run folder (the config's default init_from), CRReLU swapped in
    cli_main(["fit", "--config", str(CONFIGS / dpo_cfg), *QUICK, *extra, "--model.activation", "crrelu",
              "--model.beta", "0.5"])
    dpo_name = dpo_cfg[:-len(".yaml")]
    dpo_run = tmp_path / "lightning_logs" / dpo_name / "version_0"
    dpo_ckpt_path = dpo_run / "checkpoints" / "last.ckpt"
    dpo_ckpt = torch.load(dpo_ckpt_path, map_location="cpu", weights_only=True)
    assert dpo_ckpt["hyper_parameters"]["init_from"] == str(sft_run / "checkpoints" / "last.ckpt")
    assert dpo_ckpt["gpt"]["config"]["activation"] == "crrelu" and dpo_ckpt["gpt"]["prefix"] == "policy."
    logged = scalars(dpo_run)
    for key in ("train/reward_accuracy", "train/reward_margin", "val/reward_accuracy", "val/reward_margin",
                "val/rewards_chosen", "val/rewards_rejected"):
        assert key in logged and all(v == v for v in logged[key]), key
    acc, margin = logged["val/reward_accuracy"][-1], logged["val/reward_margin"][-1]
    assert 0.0 <= acc <= 1.0 and margin == pytest.approx(logged["val/rewards_chosen"][-1]
                                                         - logged["val/rewards_rejected"][-1], abs=1e-5)
    policy = load_gpt_checkpoint(dpo_ckpt_path).eval()
    sft_w = sft_ckpt["state_dict"]["model.transformer.h.0.mlp.c_fc.weight"]
    assert not torch.equal(policy.transformer.h[0].mlp.c_fc.weight, sft_w)  # DPO trained the policy
    assert all(b.mlp.act.eps.item() != pytest.approx(0.01, abs=1e-9) for b in policy.transformer.h)  # ε learned

    # export the DPO run folder; the folder reproduces the policy exactly, ε included
    if fmt == "hh":  # once through the console entry point, as a user runs it
        subprocess.run([sys.executable, "-m", "crrelu_lightning", "export", "--ckpt_path", str(dpo_run.parent),
                        "--out", "export"], check=True, capture_output=True, timeout=120)
    else:
        assert main(["export", "--ckpt_path", str(dpo_run), "--out", "export"]) == 0
    out = tmp_path / "export"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["activation_function"] == "crrelu" and cfg["crrelu_lightning_activation"]["name"] == "crrelu"
    assert {"model.safetensors", "activation.safetensors", "vocab.json", "merges.txt"} <= {f.name for f in out.iterdir()}
    assert cfg["eos_token_id"] == build_tokenizer(str(out)).eos_id == V - 1
    again = GPT.from_pretrained(out).eval()
    idx = torch.randint(V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(again(idx), policy(idx), rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["export", "--ckpt_path", str(dpo_ckpt_path), "--out", "export"])

    # an SFT checkpoint is self-contained: it reloads with its stored shape after the GPT-2 folder is gone
    (tmp_path / "models" / "gpt2").rename(tmp_path / "models" / "moved")
    from crrelu_lightning.models.language import CausalLM

    sft = CausalLM.load_from_checkpoint(sft_run / "checkpoints" / "last.ckpt", weights_only=True)
    for k, v in sft.state_dict().items():
        assert torch.equal(v, sft_ckpt["state_dict"][k]), k
