"""The shipped language configs run end to end through the CLI on tiny models and tiny real-format data:
Shakespeare pre-training -> checkpoint -> sentiment DPO from it; plus the entropy monitor on a GPT."""
import math
import random
from pathlib import Path

import pytest
import torch

from crrelu_lightning.cli import cli_main
from crrelu_lightning.data.text import SHAKESPEARE_VAL_PLAYS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "language"
TINY_MODEL = ["--model.gpt.n_layer", "1", "--model.gpt.n_head", "2", "--model.gpt.n_embd", "16",
              "--model.gpt.block_size", "32"]
QUICK = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_progress_bar", "false"]


def write_corpus(root: Path) -> None:
    rng = random.Random(0)
    words = "thou art the king and i am thy lord of all good night sweet prince".split()
    folder = root / "data" / "shakespeare"
    folder.mkdir(parents=True)
    for name in list(SHAKESPEARE_VAL_PLAYS) + ["lear", "othello"]:
        (folder / f"{name}_gut.txt").write_text(" ".join(rng.choice(words) for _ in range(300)))


def write_sentiment(root: Path) -> None:
    rng = random.Random(1)
    folder = root / "data" / "sentiment"
    folder.mkdir(parents=True)
    lines = [f"{i}\t{rng.choice([2.5, 1.2, -1.4, -3.0, 0.2])}\tsnippet number {i} is {'good' if i % 2 else 'bad'}"
             for i in range(60)]
    (folder / "movieReviewSnippets_GroundTruth.txt").write_text("\r\n".join(lines + ["broken line"]) + "\r\n")


@pytest.mark.timeout(240)
def test_shakespeare_then_sentiment_dpo_via_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative data/checkpoint paths resolve here
    write_corpus(tmp_path)
    cli_main(["fit", "--config", str(CONFIGS / "shakespeare_char.yaml"), *TINY_MODEL, *QUICK,
              "--model.activation", "crrelu", "--model.sample_tokens", "20", "--model.warmup_steps", "2",
              "--data.block_size", "32", "--data.batch_size", "4", "--data.max_val_blocks", "4"])
    lm_ckpt = tmp_path / "lightning_logs" / "shakespeare_char" / "version_0" / "checkpoints" / "last.ckpt"
    assert lm_ckpt.is_file() and list(lm_ckpt.parent.glob("best-*.ckpt"))
    lm = torch.load(lm_ckpt, map_location="cpu", weights_only=True)
    assert lm["gpt"]["config"]["activation"] == "crrelu"  # stored as a name, with the whole shape
    assert lm["gpt"]["config"]["n_embd"] == 16 and lm["gpt"]["prefix"] == "model."

    # TensorBoard got the metrics and a text sample
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [event_dir] = {p.parent for p in (tmp_path / "lightning_logs" / "shakespeare_char").rglob("events.out.tfevents.*")}
    ea = EventAccumulator(str(event_dir))
    ea.Reload()
    assert {"val/loss", "val/ppl", "val/bpb", "train/loss"} <= set(ea.Tags()["scalars"])
    assert any(t.startswith("samples") for t in ea.Tags()["tensors"])
    loss, bpb, ppl = (ea.Scalars(k)[-1].value for k in ("val/loss", "val/bpb", "val/ppl"))
    assert bpb == pytest.approx(loss / math.log(2), rel=1e-5) and ppl == pytest.approx(math.exp(loss), rel=1e-5)

    write_sentiment(tmp_path)
    with pytest.warns(UserWarning, match="movieReviewSnippets_GroundTruth.txt:61"):
        cli_main(["fit", "--config", str(CONFIGS / "sentiment_dpo.yaml"), *QUICK, "--data.max_length", "32",
                  "--data.max_prompt_length", "8", "--data.batch_size", "2", "--model.lr", "1e-3",
                  "--model.warmup_steps", "1"])
    dpo_ckpt = tmp_path / "lightning_logs" / "sentiment_dpo" / "version_0" / "checkpoints" / "last.ckpt"
    sd = torch.load(dpo_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert set(sd) == {"policy." + k[len("model."):] for k in lm["state_dict"]}  # weights stored once

    from crrelu_lightning.models.dpo import DPO

    dpo = DPO.load_from_checkpoint(dpo_ckpt, weights_only=True)
    for k, v in dpo.reference.state_dict().items():  # reference rebuilt from init_from's weights
        torch.testing.assert_close(v, lm["state_dict"]["model." + k])
    moved = [k for k, v in dpo.policy.state_dict().items() if not torch.equal(v, lm["state_dict"]["model." + k])]
    assert moved  # the policy was trained

    # the data must fit the model's positions
    with pytest.raises(ValueError, match="max_length=128 exceeds the model's block_size=32"):
        cli_main(["fit", "--config", str(CONFIGS / "sentiment_dpo.yaml"), *QUICK])


def test_entropy_monitor_and_eafo_run_on_gpt_lm_and_dpo(tmp_path):
    from lightning.pytorch import Trainer

    from crrelu_lightning.callbacks import ActivationEntropyMonitor, EAFOCallback
    from crrelu_lightning.data.preference import PreferenceDataModule
    from crrelu_lightning.data.text import TextDataModule
    from crrelu_lightning.models.dpo import DPO
    from crrelu_lightning.models.gpt import GPTConfig
    from crrelu_lightning.models.language import CausalLM

    write_corpus(tmp_path)
    dm = TextDataModule(paths=str(tmp_path / "data" / "shakespeare"), val_files="shakespeare", block_size=16,
                        batch_size=4, train_samples_per_epoch=16, max_val_blocks=4)
    # ε is not learnable here, so only the EAFO callback can move it
    frozen_eps = {"learnable": False}
    model = CausalLM(GPTConfig(vocab_size=256, n_layer=2, n_head=2, n_embd=16, block_size=16), activation="crrelu",
                     sample_tokens=0, warmup_steps=1, activation_kwargs=frozen_eps)

    def fit(model, dm):
        monitor = ActivationEntropyMonitor(every_n_steps=1, log_histograms_every_n_steps=None,
                                           log_image_every_n_steps=None)
        eafo = EAFOCallback(mode="step", lr=0.05, every_n_steps=1)
        trainer = Trainer(accelerator="cpu", max_steps=3, callbacks=[monitor, eafo], logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                          limit_val_batches=1)
        trainer.fit(model, dm)
        keys = [k for k in trainer.callback_metrics if k.startswith("entropy/")]
        assert all(math.isfinite(float(trainer.callback_metrics[k])) for k in keys)
        return keys

    assert len(fit(model, dm)) == 2  # one per block
    assert all(b.mlp.act.eps.item() != pytest.approx(0.01) for b in model.model.transformer.h)  # EAFO moved ε
    write_sentiment(tmp_path)
    pm = PreferenceDataModule(format="sentiment", train_path=str(tmp_path / "data" / "sentiment"), max_length=16,
                              max_prompt_length=8, batch_size=2, on_error="skip")
    dpo = DPO(gpt=GPTConfig(vocab_size=256, n_layer=2, n_head=2, n_embd=16, block_size=16), activation="crrelu",
              lr=1e-3, warmup_steps=1, activation_kwargs=frozen_eps)
    assert len(fit(dpo, pm)) == 2  # the policy's two layers only: the frozen reference is not monitored
    assert all(b.mlp.act.eps.item() != pytest.approx(0.01) for b in dpo.policy.transformer.h)
    assert all(b.mlp.act.eps.item() == pytest.approx(0.01) for b in dpo.reference.transformer.h)


@pytest.mark.parametrize("config", ["shakespeare_char.yaml", "sentiment_dpo.yaml"])
def test_optimizer_and_scheduler_from_the_command_line_on_lm_and_dpo(tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path)
    write_sentiment(tmp_path)
    extra = [] if config.startswith("shakespeare") else ["--model.init_from", "null", "--model.gpt.vocab_size", "300"]
    cli = cli_main(["--config", str(CONFIGS / config), *TINY_MODEL, *QUICK, *extra,
                    "--optimizer", "SGD", "--optimizer.lr", "0.05", "--optimizer.weight_decay", "0.01",
                    "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2"], run=False)
    model = cli.model
    model.trainer = cli.trainer
    out = model.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.05
    assert type(sched) is torch.optim.lr_scheduler.StepLR and sched.step_size == 2
    net = model.model if hasattr(model, "model") else model.policy
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        assert decay[id(p)] == (0.01 if p.ndim >= 2 else 0.0), name  # --optimizer's decay, matrices only
    assert model.hparams.optimizer["class_path"] == "torch.optim.SGD"  # re-creatable from config and checkpoint


def test_recipe_optimizer_names_still_work_and_typos_fail():
    from crrelu_lightning.models.dpo import DPO
    from crrelu_lightning.models.gpt import GPTConfig
    from crrelu_lightning.models.language import CausalLM

    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64)
    lm = CausalLM(gpt=gpt, optimizer="rmsprop", lr=1e-3, max_steps=10)
    assert lm.hparams.optimizer == "rmsprop"
    opt = lm.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.RMSprop and opt.defaults["lr"] == 1e-3
    with pytest.raises(ValueError, match="optimizer must be one of"):
        CausalLM(gpt=gpt, optimizer="adamx")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        DPO(gpt=gpt, optimizer="sgdd")
